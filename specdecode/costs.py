"""The cost model: what one target forward costs vs the tokens it is fed, and the draft size that
maximises the expected tokens per second.

Forward costs are measured once per (model config, dtype, quantization, machine, threads, torch
version) and cached as JSON under `$SPECDECODE_HOME/costs/`, so only the first generation on a
machine pays for the measurement (~10 forwards per size).

The rule (`DraftSizer`). A step feeds the pending token plus a draft of n nodes. If each draft level
is accepted, given its parent was, with probability `alpha` (the geometric model of Leviathan et
al.), a draft of depth d commits on average

    E(d) = 1 + alpha + ... + alpha^d = (1 - alpha^(d+1)) / (1 - alpha)   tokens,

and the step costs

    T(n) = verify(1 + n) + n * draft_per_node   seconds,

with verify(q) the measured forward cost (the cheapest measured at >= q rows, since a forward may be
padded) and draft_per_node the drafter's own measured seconds per drafted node. The budget is the
n in 0..max that maximises E(n / shape) / T(n), where shape = nodes per level of the drafter's recent
trees (1 for a chain). n = 0 is a plain step: where no draft pays (a drafter as slow as the target,
or one that is rarely right), none is made. alpha is estimated from the generation so far: accepted
and rejected levels, decayed by `decay` per step and pulled toward a prior, so after a run of
rejections the estimate drifts back up and drafting is retried.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .attention import AttentionBackend, select_backend
from .cache import KVCache
from .drafters.base import LevelAcceptance
from .errors import SpecDecodeError
from .machine import machine_key

MEASURED_SIZES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
FORMAT_VERSION = 2  # 2: decode forwards through lean_forward.py


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

    def table_ms(self) -> dict[int, float]:
        return {size: round(s * 1000, 3) for size, s in zip(self.sizes, self.seconds)}


def measure_forward_costs(model: torch.nn.Module, *, sizes: tuple[int, ...] = MEASURED_SIZES, context: int = 128,
                          rounds: int = 3, attention: AttentionBackend | None = None) -> ForwardCosts:
    """Time forwards of each size after `context` cached tokens (random ids; the cost does not depend
    on them), as verification runs them: logits for every row, a tree mask beyond one token. Rounds
    go over all sizes so that machine drift hits every size alike; the median round counts."""
    attention = attention or select_backend()
    vocab = model.get_input_embeddings().weight.shape[0]
    generator = torch.Generator().manual_seed(0)
    samples: dict[int, list[float]] = {size: [] for size in sizes}
    with torch.inference_mode():
        cache = KVCache(model)
        prefix = torch.randint(vocab, (context,), generator=generator)  # [context]
        attention.forward(model, cache, prefix, torch.arange(context), hidden=True)
        for round_ in range(rounds + 1):  # round 0 warms every size up
            for size in sizes:
                ids = torch.randint(vocab, (size,), generator=generator)  # [size]
                mask = torch.ones(size, size, dtype=torch.bool).tril() if size > 1 else None  # [size, size]
                start = time.perf_counter()
                attention.forward(model, cache, ids, context + torch.arange(size), mask)
                if model.device.type == "cuda":
                    torch.cuda.synchronize()
                if round_:
                    samples[size].append(time.perf_counter() - start)
                cache.crop(context)
    return ForwardCosts(tuple(sizes), tuple(statistics.median(samples[size]) for size in sizes))


def costs_key(model: torch.nn.Module, quantization: str | None) -> str:
    """What the timings depend on: architecture and sizes, dtype, quantization, the kernels of its linear
    layers, float or quantized (padded one-row inputs or not: kernels.py), its attention
    (rowwise_attention.py), machine, threads, torch."""
    config = model.config.to_dict()
    shape = {k: config.get(k) for k in ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers",
                                        "num_attention_heads", "num_key_value_heads", "vocab_size", "head_dim")}
    kernels = sorted({type(m).__name__ for m in model.modules() if hasattr(m, "in_features")})  # every product
    attention = getattr(model.config, "_attn_implementation", None)
    text = json.dumps([shape, str(model.dtype), str(model.device.type), quantization, kernels, attention,
                       machine_key(), torch.__version__, FORMAT_VERSION], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def forward_costs(model: torch.nn.Module, quantization: str | None = None, *, cache_dir: Path | None = None,
                  measure=measure_forward_costs) -> ForwardCosts:
    """The model's forward costs on this machine: read from the cache, else measured and cached."""
    from .zoo import zoo_home

    folder = Path(cache_dir) if cache_dir is not None else zoo_home() / "costs"
    path = folder / f"{costs_key(model, quantization)}.json"
    if path.exists():
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            return ForwardCosts(tuple(document["sizes"]), tuple(document["seconds"]))
        except (OSError, ValueError, KeyError, TypeError, SpecDecodeError):
            pass  # unreadable: measure again and overwrite
    costs = measure(model)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"sizes": costs.sizes, "seconds": costs.seconds, "machine": machine_key()}))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home only costs a measurement per process
    return costs


@dataclass(frozen=True)
class SizerSettings:
    prior: float = 0.6  # acceptance per level assumed before any evidence
    prior_weight: float = 2.0  # ... worth this many observed levels
    decay: float = 0.9  # per step: older evidence counts less, so the estimate follows the text
    shape_decay: float = 0.8  # per draft: nodes-per-level estimate


@dataclass
class DraftSizer:
    """Chooses each step's draft budget from forward costs and the acceptance seen so far (one generation)."""

    verify: ForwardCosts
    settings: SizerSettings = SizerSettings()
    levels: LevelAcceptance = field(init=False)  # acceptance per level of the verified trees
    draft_seconds: float = 0.0  # drafter time over drafted nodes, excluding each generation's first draft
    draft_nodes: float = 0.0
    shape: float = 1.0
    budgets: list[int] = field(default_factory=list)

    def __post_init__(self):
        self.levels = LevelAcceptance(self.settings.prior, self.settings.prior_weight, self.settings.decay)

    @property
    def alpha(self) -> float:
        return self.levels.alpha

    @property
    def draft_per_node(self) -> float:
        return self.draft_seconds / self.draft_nodes if self.draft_nodes else 0.0

    def expected_tokens(self, depth: float) -> float:
        alpha = min(self.alpha, 1 - 1e-9)
        return (1 - alpha ** (depth + 1)) / (1 - alpha)

    def step_seconds(self, nodes: int) -> float:
        return self.verify(1 + nodes) + nodes * self.draft_per_node

    def budget(self, most: int) -> int:
        """The draft size in 0..most with the most expected tokens per second."""
        best = max(range(most + 1), key=lambda n: (self.expected_tokens(n / self.shape) / self.step_seconds(n), -n))
        self.budgets.append(best)
        return best

    def observe(self, nodes: int, depth: int, accepted: int, draft_seconds: float, first: bool) -> None:
        """After a step: the draft's node count and depth, the levels accepted, the drafter's time."""
        if nodes == 0:
            self.levels.step()
            return
        self.levels.step(accepted, missed=accepted < depth)
        self.shape = self.settings.shape_decay * self.shape + (1 - self.settings.shape_decay) * (nodes / depth)
        if not first:  # a drafter's first draft includes its prefill
            self.draft_seconds += draft_seconds
            self.draft_nodes += nodes

    def report(self) -> dict:
        return {
            "verify_ms": self.verify.table_ms(),
            "draft_ms_per_node": round(self.draft_per_node * 1000, 3),
            "acceptance_per_level": round(self.alpha, 4),
            "mean_budget": round(sum(self.budgets) / len(self.budgets), 3) if self.budgets else 0.0,
            "steps_without_draft": sum(1 for b in self.budgets if b == 0),
            "settings": asdict(self.settings),
        }
