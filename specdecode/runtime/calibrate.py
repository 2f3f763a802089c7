"""Calibration: every probe and micro-benchmark that tunes how a model runs on this machine, once.

A `Calibration` holds one model's measurements on this machine by name, as one JSON file under
`calibration_dir()` (`$SPECDECODE_CALIBRATION_DIR`, else `$SPECDECODE_HOME/calibration`), keyed by what
they depend on: the model's shape (config), dtype, device, quantization and role (a verified target or a
model that only drafts), and the machine (`machine_key`: CPU model AND flags, threads, torch version). A
value is measured the first time it is asked for and read back on every later load. So a choice that
changes rounding (the matmul orientation, the widest exact forward, the padding table) is made once per
model and machine: the same model on the same machine always computes the same tokens.

Measurements run at load or before a generation's clock starts, never inside a timed region.
`ForwardCosts` (one forward's seconds vs tokens fed) is measured here; how drafts are sized from it is
the policy's business (policy.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from ..errors import SpecDecodeError
from ..files import write_atomic
from .cache import KVCache
from .machine import machine_key, specdecode_home

T = TypeVar("T")

FORMAT_VERSION = 3  # 3: one file per model and machine, the machine key with CPU flags and torch version
MEASURED_SIZES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)


def calibration_dir() -> Path:
    folder = os.environ.get("SPECDECODE_CALIBRATION_DIR")
    return Path(folder).expanduser() if folder else specdecode_home() / "calibration"


class Calibration:
    """One model's (or the machine's) measurements by name: read from its JSON, else measured once and saved.

    `scope` names what the values depend on besides the machine (see `for_model`, `for_machine`)."""

    def __init__(self, scope: dict, folder: Path | None = None):
        self.scope = scope
        text = json.dumps([scope, machine_key(), FORMAT_VERSION], sort_keys=True)
        self.key = hashlib.sha256(text.encode()).hexdigest()[:16]
        self.folder = Path(folder) if folder is not None else calibration_dir()
        self._values: dict[str, Any] | None = None

    @classmethod
    def for_model(cls, model: torch.nn.Module, *, quantization: str | None = None, drafts_only: bool = False,
                  folder: Path | None = None) -> "Calibration":
        """A model's calibration: its shape, dtype, device, quantization and role on this machine."""
        config = model.config.get_text_config().to_dict()  # a vision-language model's language model
        shape = {k: config.get(k) for k in ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers",
                                            "num_attention_heads", "num_key_value_heads", "vocab_size", "head_dim")}
        vision = getattr(model.config, "vision_config", None)
        if vision is not None:  # and its vision tower
            shape["vision"] = {k: getattr(vision, k, None) for k in ("model_type", "hidden_size", "num_hidden_layers")}
        parameter = next(model.parameters())
        return cls({"model": shape, "dtype": str(parameter.dtype), "device": parameter.device.type,
                    "quantization": quantization, "drafts_only": drafts_only}, folder)

    @classmethod
    def for_machine(cls, device: torch.device, folder: Path | None = None) -> "Calibration":
        """Measurements that belong to no model (which dtype or quantization runs a one-token step fastest)."""
        return cls({"machine": device.type}, folder)

    @property
    def path(self) -> Path:
        return self.folder / f"{self.key}.json"

    def values(self) -> dict[str, Any]:
        """Every value measured so far (an unreadable file counts as none: they are measured again)."""
        if self._values is None:
            try:
                document = json.loads(self.path.read_text(encoding="utf-8"))
                self._values = dict(document["values"]) if document.get("format") == FORMAT_VERSION else {}
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                self._values = {}
        return self._values

    def get(self, name: str, measure: Callable[[], Any]) -> Any:
        """The value called `name`: as measured on an earlier load, else `measure()` (JSON-able), saved."""
        values = self.values()
        if name not in values:
            values[name] = measure()
            self._save()
        return values[name]

    def parsed(self, name: str, measure: Callable[[], Any], parse: Callable[[Any], T]) -> T:
        """`parse` of the value called `name` (as `get`); an entry `parse` refuses (a damaged or outdated
        file: KeyError, TypeError, ValueError, SpecDecodeError) is measured again, once."""
        try:
            return parse(self.get(name, measure))
        except (KeyError, TypeError, ValueError, SpecDecodeError):
            self.values().pop(name, None)
            return parse(self.get(name, measure))

    def _save(self) -> None:
        document = {"format": FORMAT_VERSION, "scope": self.scope, "machine": machine_key(), "values": self._values}
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, json.dumps(document, indent=1, sort_keys=True))  # a reader sees the old or the new
        except OSError:
            pass  # a read-only home costs a measurement per process, nothing else

    def forward_costs(self, model: torch.nn.Module, runner, measure=None) -> "ForwardCosts":
        """The model's forward costs as it runs now (its kernels, attention and runner)."""
        state = runtime_state(model, runner)
        measure = measure or measure_forward_costs
        return self.parsed(f"forward_costs:{state}", lambda: measure(model, runner).to_json(), ForwardCosts.from_json)


def runtime_state(model: torch.nn.Module, runner) -> str:
    """What a timing of the model depends on beyond its calibration's scope: the classes of its products
    (orientation, padded rows, quantized kernels), its attention implementation, how the runner runs it."""
    products = sorted({type(m).__name__ for m in model.modules() if hasattr(m, "in_features")})
    attention = getattr(model.config, "_attn_implementation", None)
    text = json.dumps([products, attention, runner.describe(model)])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class ForwardCosts:
    """Seconds of one forward vs tokens fed, at measured sizes; linear in between."""

    sizes: tuple[int, ...]  # tokens fed, ascending, starting at 1
    seconds: tuple[float, ...]  # median seconds of one forward at each size

    def __post_init__(self):
        sizes, seconds = tuple(self.sizes), tuple(float(s) for s in self.seconds)
        if not sizes or sizes[0] != 1 or list(sizes) != sorted(set(sizes)) or len(sizes) != len(seconds):
            raise SpecDecodeError(f"ForwardCosts needs ascending sizes starting at 1, one time each; got {sizes}.")
        if any(not s > 0 for s in seconds):
            raise SpecDecodeError("ForwardCosts times must be positive seconds.")
        object.__setattr__(self, "sizes", sizes)
        object.__setattr__(self, "seconds", seconds)

    def raw(self, tokens: int) -> float:
        """Interpolated seconds of a forward of exactly `tokens` tokens (extrapolated past the last size)."""
        sizes, seconds = self.sizes, self.seconds
        if tokens <= 1 or len(sizes) == 1:
            return seconds[0]
        upper = next((i for i, s in enumerate(sizes) if s >= tokens), len(sizes) - 1)
        lower = upper - 1
        slope = (seconds[upper] - seconds[lower]) / (sizes[upper] - sizes[lower])
        return max(seconds[lower] + slope * (tokens - sizes[lower]), 1e-9)

    def __call__(self, tokens: int) -> float:
        """Seconds to verify `tokens` tokens: the cheapest forward of >= tokens rows (padding is allowed)."""
        return min([self.raw(tokens)] + [s for size, s in zip(self.sizes, self.seconds) if size >= tokens])

    def cheapest_rows(self, tokens: int, limit: int | None = None, gain: float = 0.85) -> int:
        """The measured row count >= tokens (and <= limit) whose forward costs least, where that is under `gain`
        times a forward of exactly `tokens` rows; else `tokens`."""
        own = self.raw(tokens)
        options = [(seconds, size) for size, seconds in zip(self.sizes, self.seconds)
                   if size >= tokens and (limit is None or size <= limit) and seconds < gain * own]
        return min(options)[1] if options else tokens

    def table_ms(self) -> dict[int, float]:
        return {size: round(s * 1000, 3) for size, s in zip(self.sizes, self.seconds)}

    def to_json(self) -> dict:
        return {"sizes": list(self.sizes), "seconds": list(self.seconds)}

    @classmethod
    def from_json(cls, document: dict) -> "ForwardCosts":
        return cls(tuple(document["sizes"]), tuple(document["seconds"]))


def measure_forward_costs(model: torch.nn.Module, runner, *, sizes: tuple[int, ...] = MEASURED_SIZES,
                          context: int = 128, rounds: int = 3, clock: Callable[[], float] = time.perf_counter
                          ) -> ForwardCosts:
    """Time forwards of each size after `context` cached tokens (random ids; the cost does not depend
    on them), as verification runs them: logits for every row, a tree mask beyond one token. Rounds
    go over all sizes so that machine drift hits every size alike; the median round counts."""
    vocab = model.get_input_embeddings().weight.shape[0]
    generator = torch.Generator().manual_seed(0)
    samples: dict[int, list[float]] = {size: [] for size in sizes}
    with torch.inference_mode():
        cache = KVCache(model)
        prefix = torch.randint(vocab, (context,), generator=generator)  # [context]
        runner.forward(model, cache, prefix, torch.arange(context), hidden=True, prefill=True)  # a prompt: batched
        for round_ in range(rounds + 1):  # round 0 warms every size up
            for size in sizes:
                ids = torch.randint(vocab, (size,), generator=generator)  # [size]
                mask = torch.ones(size, size, dtype=torch.bool).tril() if size > 1 else None  # [size, size]
                start = clock()
                runner.forward(model, cache, ids, context + torch.arange(size), mask)
                if model.device.type == "cuda":
                    torch.cuda.synchronize()
                if round_:
                    samples[size].append(clock() - start)
                cache.crop(context)
    return ForwardCosts(tuple(sizes), tuple(statistics.median(samples[size]) for size in sizes))
