"""Which attention a step of several tokens runs faster with, measured on this device: one SDPA call under the
step's mask (every cached entry plus the tree's ancestors), or the split (the cached prefix through
FlashAttention's kernel without a mask, the tree's own keys under their mask, merged by log-sum-exp:
grouped_attention.split_attention).

Which wins depends on the GPU, the model's heads, the dtype, the context and the step's size: the dense mask
grows with the context while the split pays a few extra kernels per layer whatever the context. So on a
GPU, `attention="auto"` times one layer's attention both ways over a grid of contexts and step sizes once per
attention shape and machine (a `Calibration`, read back on every later load) and each step takes the faster
at its nearest measured cell. A CPU keeps one masked call ("auto" is "sdpa" there): both cost the same on it
(docs/benchmarks.md).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import SpecDecodeError
from .grouped_attention import split_attention

CONTEXTS = (1024, 4096, 16384, 65536)  # cached entries measured
ROWS = (2, 8, 32, 64)  # tokens fed per step measured


@dataclass(frozen=True)
class AttentionShape:
    """What one layer's attention cost depends on besides the device: heads, key/value heads, head size, dtype."""

    heads: int
    kv_heads: int
    head_dim: int
    dtype: str  # e.g. "torch.bfloat16"

    @classmethod
    def of(cls, model: torch.nn.Module) -> "AttentionShape":
        config = model.config.get_text_config()  # a vision-language model's language model
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        return cls(heads, kv_heads, head_dim, str(next(model.parameters()).dtype))


@dataclass(frozen=True)
class SplitCosts:
    """Seconds of one layer's attention for a step of rows[j] tokens after contexts[i] cached entries:
    masked[i][j] as one masked SDPA call, split[i][j] split from the prefix."""

    contexts: tuple[int, ...]  # ascending
    rows: tuple[int, ...]  # ascending
    masked: tuple[tuple[float, ...], ...]  # [contexts][rows] seconds
    split: tuple[tuple[float, ...], ...]  # [contexts][rows] seconds

    def __post_init__(self):
        grid = (len(self.contexts), len(self.rows))
        for name in ("masked", "split"):
            table = tuple(tuple(float(s) for s in line) for line in getattr(self, name))
            if (len(table), *{len(line) for line in table}) != grid or any(not s > 0 for line in table for s in line):
                raise SpecDecodeError(f"SplitCosts.{name} needs {grid[0]} x {grid[1]} positive seconds.")
            object.__setattr__(self, name, table)
        for name in ("contexts", "rows"):
            values = tuple(int(v) for v in getattr(self, name))
            if not values or list(values) != sorted(set(values)) or values[0] < 1:
                raise SpecDecodeError(f"SplitCosts.{name} must be ascending positive numbers; got {values}.")
            object.__setattr__(self, name, values)

    def splits(self, context: int, rows: int) -> bool:
        """Whether a step of `rows` tokens after `context` cached entries is faster split: the measured context
        nearest by ratio, the smallest measured step of at least `rows` tokens (the largest past them)."""
        i = min(range(len(self.contexts)), key=lambda n: abs(math.log(self.contexts[n] / max(context, 1))))
        j = next((n for n, size in enumerate(self.rows) if size >= rows), len(self.rows) - 1)
        return self.split[i][j] < self.masked[i][j]

    def table_markdown(self) -> str:
        """Milliseconds per cell, "masked / split", a row per context and a column per step size."""
        lines = ["| cached entries | " + " | ".join(f"{rows} tokens" for rows in self.rows) + " |",
                 "| --- " * (len(self.rows) + 1) + "|"]
        for context, masked, split in zip(self.contexts, self.masked, self.split):
            cells = " | ".join(f"{m * 1000:.3f} / {s * 1000:.3f}" for m, s in zip(masked, split))
            lines.append(f"| {context} | {cells} |")
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict:
        return {"contexts": list(self.contexts), "rows": list(self.rows),
                "masked": [list(line) for line in self.masked], "split": [list(line) for line in self.split]}

    @classmethod
    def from_json(cls, document: dict) -> "SplitCosts":
        return cls(tuple(document["contexts"]), tuple(document["rows"]), tuple(map(tuple, document["masked"])),
                   tuple(map(tuple, document["split"])))


def measure_split_costs(shape: AttentionShape, device: torch.device, *, contexts: tuple[int, ...] = CONTEXTS,
                        rows: tuple[int, ...] = ROWS, rounds: int = 3, repeats: int = 10,
                        clock: Callable[[], float] = time.perf_counter) -> SplitCosts:
    """Time one layer's attention of each step size after each context, both ways, on random tensors of
    `shape` (the cost does not depend on their values), as grouped_attention calls it: each key/value head's
    query heads stacked as rows, a chain's mask over the step's own keys. The median round counts; round 0
    warms up."""
    dtype = getattr(torch, shape.dtype.removeprefix("torch."))
    groups = shape.heads // shape.kv_heads
    generator = torch.Generator(device=device).manual_seed(0)
    masked = [[0.0] * len(rows) for _ in contexts]
    split = [[0.0] * len(rows) for _ in contexts]
    for i, context in enumerate(contexts):
        key, value = (torch.randn(1, shape.kv_heads, context + rows[-1], shape.head_dim, generator=generator,
                                  device=device, dtype=dtype) for _ in range(2))  # [1, kv_heads, keys, d]
        for j, size in enumerate(rows):
            query = torch.randn(1, shape.kv_heads, groups * size, shape.head_dim, generator=generator, device=device,
                                dtype=dtype)  # [1, kv_heads, groups * size, d]
            mask = torch.ones(size, context + size, dtype=torch.bool, device=device).tril(context)  # [size, keys]
            mask = mask.repeat(groups, 1)[None, None]  # [1, 1, groups * size, keys]
            keys, values = key[:, :, : context + size], value[:, :, : context + size]
            calls = {"masked": lambda: F.scaled_dot_product_attention(query, keys, values, attn_mask=mask),
                     "split": lambda: split_attention(query, keys, values, mask, context)}
            samples: dict[str, list[float]] = {name: [] for name in calls}
            for round_ in range(rounds + 1):
                for name, call in calls.items():
                    seconds = _timed(call, repeats, device, clock)
                    if round_:
                        samples[name].append(seconds)
            masked[i][j] = statistics.median(samples["masked"])
            split[i][j] = statistics.median(samples["split"])
    return SplitCosts(tuple(contexts), tuple(rows), tuple(map(tuple, masked)), tuple(map(tuple, split)))


def _timed(call: Callable[[], torch.Tensor], repeats: int, device: torch.device, clock: Callable[[], float]) -> float:
    """Seconds of one call: `repeats` calls back to back, the device drained before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = clock()
    for _ in range(repeats):
        call()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return max(clock() - start, 1e-12) / repeats
