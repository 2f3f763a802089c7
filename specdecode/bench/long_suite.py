"""A long-document suite in Spec-Bench's question format, built from texts every Linux machine with
Python has and nobody here wrote: the license texts of /usr/share/common-licenses (Debian, Ubuntu)
and the Python standard library (module sources, and their pydoc text).

One category per length bucket (`long_summarization_2k`, `_4k`, ...), so `bench --categories` picks
buckets and the report has a table per bucket. Every question is one turn, "Summarize the following
document ..." followed by an excerpt of a document cut on a paragraph boundary (a line boundary where
a paragraph would land too short), sized so that the whole prompt, chat template included, is at most
the bucket's tokens and within `tolerance` of them in the tokenizer given. The same documents serve
every bucket they are long enough for (the first `per_bucket` in DOCUMENTS' order), so the buckets
differ in length, not in content. Each record carries its source, the document's and the excerpt's
sha256, and its prompt tokens; stdlib texts change between Python versions, which the hashes show.

    python -m specdecode.bench.long_suite --out long_summarization.jsonl
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import inspect
import io
import os
import platform
import re
import subprocess
import sys
import warnings
from collections.abc import Callable, Sequence
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

from ..errors import SpecDecodeError
from ..prompts import encode_prompt
from ..runtime.machine import specdecode_home
from .questions import write_questions

INSTRUCTION = ("Summarize the following document in a few paragraphs: what it is, its main parts, and what a "
               "reader must know. It may be an excerpt; summarize what is there.\n\n")
LICENSES = Path("/usr/share/common-licenses")
CHARS_PER_TOKEN = 4  # the `chars` counter: a rough English figure, for machines without the tokenizer
DEFAULT_TOKENIZER = "qwen2.5-coder-1.5b-instruct"
RENDER = ("import contextlib, importlib, io, pydoc, sys\n"
          "with contextlib.redirect_stdout(io.StringIO()):\n"
          "    module = importlib.import_module(sys.argv[1])\n"
          "text = pydoc.render_doc(module, 'Python library documentation: %s', renderer=pydoc.plaintext)\n"
          "sys.stdout.buffer.write(text.encode('utf-8'))\n")


@dataclass(frozen=True)
class DocumentSpec:
    """Where a document comes from: `kind` "licenses" (files of LICENSES, one after the other),
    "python-source" (inspect.getsource of a module) or "pydoc" (its pydoc plain text)."""

    name: str
    kind: str
    parts: tuple[str, ...]  # license file names, or the one module


# In order of use. The license texts are read as one collection: no single one reaches 8k tokens.
DOCUMENTS = (
    DocumentSpec("license texts", "licenses",
                 ("GPL-3", "LGPL-3", "GFDL-1.3", "Apache-2.0", "MPL-2.0", "GPL-2", "LGPL-2.1", "Artistic")),
    DocumentSpec("argparse.py", "python-source", ("argparse",)),
    DocumentSpec("typing (pydoc)", "pydoc", ("typing",)),
    DocumentSpec("subprocess.py", "python-source", ("subprocess",)),
    # used where one of the above is missing or too short, or with --per-bucket above 4
    DocumentSpec("difflib.py", "python-source", ("difflib",)),
    DocumentSpec("enum (pydoc)", "pydoc", ("enum",)),
    DocumentSpec("tarfile.py", "python-source", ("tarfile",)),
    DocumentSpec("configparser (pydoc)", "pydoc", ("configparser",)),
    DocumentSpec("inspect.py", "python-source", ("inspect",)),
    DocumentSpec("logging (pydoc)", "pydoc", ("logging",)),
)


@dataclass(frozen=True)
class LongSuiteConfig:
    out: Path
    tokenizer: str = DEFAULT_TOKENIZER  # a zoo name, a tokenizer folder or hub id, or "chars"
    buckets: tuple[int, ...] = (2048, 4096, 8192, 16384)  # prompt tokens per bucket
    per_bucket: int = 4
    tolerance: float = 0.05  # an excerpt's prompt has between (1 - tolerance) x and 1 x its bucket's tokens
    category: str = "long_summarization"


@dataclass(frozen=True)
class Document:
    spec: DocumentSpec
    source: str  # where its text was read: paths, or the module and the Python version
    text: str


@dataclass(frozen=True)
class Excerpt:
    text: str  # the document's first lines, trailing whitespace removed
    prompt_tokens: int
    lines: int
    cut: str  # "paragraph" | "line" | "end" (the whole document)


def bucket_name(tokens: int) -> str:
    """2048 -> "2k", 512 -> "0.5k": the suffix of a bucket's category (bench/lengths.py reads it back)."""
    return f"{tokens / 1024:g}k"


def default_out() -> Path:
    return specdecode_home() / "bench" / "long_summarization.jsonl"


# ----------------------------------------------------------------------------- documents
def load_document(spec: DocumentSpec, licenses: Path = LICENSES) -> Document | None:
    """The document's text, or None where this machine lacks it (no license files, no such module)."""
    if spec.kind == "licenses":
        paths = [licenses / name for name in spec.parts if (licenses / name).is_file()]
        if not paths:
            return None
        text = "\n\n".join(p.read_text(encoding="utf-8", errors="replace").strip() for p in paths)
        return Document(spec, f"{licenses}: {', '.join(p.name for p in paths)}", text)
    (module_name,) = spec.parts
    if spec.kind == "pydoc":
        text = pydoc_text(module_name)
    else:
        try:
            with warnings.catch_warnings(), redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
                warnings.simplefilter("ignore")
                text = inspect.getsource(importlib.import_module(module_name))
        except (ImportError, OSError, TypeError):
            text = None
    if text is None:
        return None
    how = "inspect.getsource" if spec.kind == "python-source" else "pydoc plain text"
    return Document(spec, f"Python {platform.python_version()} standard library: {module_name} ({how})", text)


def pydoc_text(module_name: str) -> str | None:
    """pydoc's plain text of a module (None: not importable here), rendered by a fresh interpreter (a
    render reads state an earlier one leaves behind, e.g. classes' `__annotations__`), without what
    differs between processes or machines: object addresses and the FILE section (the module's path)."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDOCS"}  # the docs URL pydoc prints
    done = subprocess.run([sys.executable, "-I", "-W", "ignore", "-c", RENDER, module_name], capture_output=True,
                          env=env, timeout=120)
    if done.returncode != 0:
        return None
    text = re.sub(r" at 0x[0-9a-fA-F]+", " at 0x...", done.stdout.decode("utf-8"))
    return re.sub(r"\nFILE\n(?:    .*\n)+", "\n", text)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ----------------------------------------------------------------------------- token counts
def prompt_token_counter(tokenizer) -> Callable[[str], int]:
    """Tokens of a one-turn prompt as the bench feeds it: the chat template around the turn, where the
    tokenizer has one, else the text alone."""
    if getattr(tokenizer, "chat_template", None):
        return lambda text: len(encode_prompt(tokenizer, [{"role": "user", "content": text}]))
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def token_counter(spec: str) -> Callable[[str], int]:
    """`chars`: one token per CHARS_PER_TOKEN characters; else the tokenizer of a zoo model (only its
    tokenizer is loaded), of a model folder, or of a hub id."""
    if spec == "chars":
        return lambda text: -(-len(text) // CHARS_PER_TOKEN)
    from transformers import AutoTokenizer

    from ..models import zoo

    source = str(zoo.prepare(spec)) if spec in zoo.ZOO else str(Path(spec).expanduser())
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise SpecDecodeError(f"could not load a tokenizer from {spec!r} ({str(e).splitlines()[0]}); pass a zoo "
                              "name, a folder holding tokenizer.json, or --tokenizer chars.") from None
    return prompt_token_counter(tokenizer)


# ----------------------------------------------------------------------------- trimming
def trim(text: str, target: int, count: Callable[[str], int], tolerance: float) -> Excerpt | None:
    """The longest prefix of whole lines whose prompt (INSTRUCTION + it) has at most `target` tokens,
    shortened to the last paragraph end when that still has (1 - tolerance) x target; None when the whole
    document is shorter than that."""
    floor = target * (1 - tolerance)
    lines = text.splitlines(keepends=True)

    def excerpt(k: int) -> str:
        return "".join(lines[:k]).rstrip()

    counts: dict[int, int] = {}

    def tokens(k: int) -> int:
        if k not in counts:
            counts[k] = count(INSTRUCTION + excerpt(k))
        return counts[k]

    if tokens(len(lines)) <= target:
        return Excerpt(excerpt(len(lines)), tokens(len(lines)), len(lines), "end") \
            if tokens(len(lines)) >= floor else None
    lo, hi = 0, len(lines)  # tokens(lo) <= target < tokens(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if tokens(mid) <= target else (lo, mid)
    paragraph = next((k for k in range(lo, 0, -1) if not lines[k].strip()), 0)  # lines[k] blank: a paragraph ends
    if paragraph and tokens(paragraph) >= floor:
        return Excerpt(excerpt(paragraph), tokens(paragraph), paragraph, "paragraph")
    return Excerpt(excerpt(lo), tokens(lo), lo, "line") if lo and tokens(lo) >= floor else None


# ----------------------------------------------------------------------------- the suite
def build_long_suite(config: LongSuiteConfig, count: Callable[[str], int] | None = None,
                     documents: Sequence[DocumentSpec] = DOCUMENTS, licenses: Path = LICENSES) -> list[dict]:
    """The suite's records, bucket by bucket (`count`: prompt tokens of a text; default: config.tokenizer's)."""
    if config.per_bucket < 1 or not config.buckets or not 0 < config.tolerance < 1:
        raise SpecDecodeError("the suite needs --per-bucket >= 1, at least one bucket and 0 < tolerance < 1.")
    count = count or token_counter(config.tokenizer)
    if min(config.buckets) * (1 - config.tolerance) <= count(INSTRUCTION):
        raise SpecDecodeError(f"bucket {min(config.buckets)} is too small: the instruction alone has "
                              f"{count(INSTRUCTION)} tokens.")
    loaded: dict[DocumentSpec, Document | None] = {}
    records = []
    for target in sorted(set(config.buckets)):
        category = f"{config.category}_{bucket_name(target)}"
        chosen = 0
        for spec in documents:
            if chosen == config.per_bucket:
                break
            if spec not in loaded:
                loaded[spec] = load_document(spec, licenses)
            document = loaded[spec]
            piece = trim(document.text, target, count, config.tolerance) if document else None
            if piece is None:
                continue
            chosen += 1
            records.append({
                "question_id": f"{category}_{chosen}", "category": category, "turns": [INSTRUCTION + piece.text],
                "target_tokens": target, "prompt_tokens": piece.prompt_tokens, "tokenizer": config.tokenizer,
                "document": spec.name, "kind": spec.kind, "source": document.source,
                "document_sha256": sha256(document.text), "excerpt_sha256": sha256(piece.text),
                "excerpt_lines": piece.lines, "cut": piece.cut, "python": platform.python_version(),
            })
        if not chosen:
            raise SpecDecodeError(f"no document is long enough for the {target}-token bucket; use smaller --buckets.")
    return records


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m specdecode.bench.long_suite", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", "-o", type=Path, default=None, help=f"the question file (default {default_out()})")
    parser.add_argument("--tokenizer", default=DEFAULT_TOKENIZER,
                        help="whose tokens size the buckets: a zoo name, a tokenizer folder, or chars (4 per token)")
    parser.add_argument("--buckets", default="2048,4096,8192,16384", help="prompt tokens per bucket, comma-separated")
    parser.add_argument("--per-bucket", type=int, default=4, help="questions (documents) per bucket")
    parser.add_argument("--tolerance", type=float, default=0.05, help="how far below its bucket a prompt may land")
    args = parser.parse_args(argv)
    try:
        buckets = tuple(int(b) for b in args.buckets.split(",") if b.strip())
        config = LongSuiteConfig(args.out or default_out(), args.tokenizer, buckets, args.per_bucket, args.tolerance)
        records = build_long_suite(config)
    except (SpecDecodeError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    path = write_questions(records, config.out)
    for category in dict.fromkeys(r["category"] for r in records):
        rows = [r for r in records if r["category"] == category]
        print(f"{category}: {len(rows)} questions, prompt tokens {', '.join(str(r['prompt_tokens']) for r in rows)} "
              f"({', '.join(r['document'] for r in rows)})")
    print(f"wrote {len(records)} questions to {path} (sha256 {hashlib.sha256(path.read_bytes()).hexdigest()[:16]})")


if __name__ == "__main__":
    main()
