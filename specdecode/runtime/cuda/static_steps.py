"""Decode and verification steps at static shapes, captured as CUDA graphs.

At batch 1 a GPU is bound by launching kernels, not by arithmetic: a 1.5B model's forward costs about the
same for 1 and 64 fed tokens, ~20 ms of launches ([docs/gpu.md](../../../docs/gpu.md)). A CUDA graph
records a forward's kernels once and replays them with one launch, but it needs every tensor the forward
touches at a fixed address and every shape fixed. So a step here:

- feeds `rows` tokens: a bucket of BUCKETS at least as large as the tokens fed (the rest are copies of the
  last token that no real token attends to), or one fixed width for every step;
- writes its keys and values at given slots of per-layer buffers allocated once (`StaticKV`), which the
  KVCache's layers then view, so the engine's bookkeeping (keep, crop) works on them unchanged;
- attends over the buffers' first `span` entries (a power of two from MIN_SPAN) under a mask that shows each
  fed token the committed entries and its own ancestors (a chain: the tokens before it);
- runs the model through lean_forward: the model's own modules in transformers' order of operations,
  without the per-call machinery that a graph could not capture.

Its inputs (token ids, positions, slots, mask) live in static tensors per shape, filled before each step.
On CUDA each shape is captured once, on first use, and replayed after; elsewhere it runs eagerly through the
same code, which is what the CPU tests check. A graph is recorded over one set of buffers: when a longer
generation needs more entries, the buffers are made anew (doubled) and their shapes captured again.
"""

from __future__ import annotations

import time
import warnings
import weakref
from dataclasses import dataclass

import torch

from ..cache import KVCache
from ..lean_forward import lean_forward

BUCKETS = (1, 2, 4, 8, 16, 32, 64)  # fed-token counts a step is padded to
MIN_SPAN = 1024  # the fewest key entries a step attends over
BUFFER_SETS_PER_MODEL = 2  # caches of one model in use at once: a target's, and a self-draft's over the same weights


def bucket_of(tokens: int) -> int | None:
    """The smallest bucket holding `tokens` fed tokens; None above the largest (no static step)."""
    return next((size for size in BUCKETS if tokens <= size), None)


def span_of(entries: int) -> int:
    """The key entries a step with `entries` cached + fed entries attends over: a power of two >= MIN_SPAN."""
    span = MIN_SPAN
    while span < entries:
        span *= 2
    return span


@dataclass(frozen=True)
class StepShape:
    rows: int  # tokens fed, padded
    span: int  # key entries attended
    hidden: bool  # final hidden states instead of logits


class SlotWriter:
    """One decoder layer's cache in a static step (a lean_forward cache layer): `update` writes the fed keys and
    values at `slots` of the layer's buffers and returns the buffers' first `span` entries to attend."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, slots: torch.Tensor, span: int):
        self.keys, self.values = keys, values  # [1, kv_heads, capacity, d] each
        self.slots, self.span = slots, span  # [rows]

    def update(self, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """key, value [1, kv_heads, rows, d] -> keys, values [1, kv_heads, span, d]."""
        self.keys.index_copy_(2, self.slots, key)
        self.values.index_copy_(2, self.slots, value)
        return self.keys[:, :, : self.span], self.values[:, :, : self.span]


class _Step:
    """One step shape over one set of buffers: its static inputs and, on CUDA, its captured graph."""

    def __init__(self, buffers: list[tuple[torch.Tensor, torch.Tensor]], shape: StepShape, device: torch.device):
        self.shape = shape
        self.ids = torch.zeros(shape.rows, dtype=torch.long, device=device)  # [rows]
        self.positions = torch.zeros(shape.rows, dtype=torch.long, device=device)  # [rows]
        self.slots = torch.zeros(shape.rows, dtype=torch.long, device=device)  # [rows]
        self.mask = torch.zeros(1, 1, shape.rows, shape.span, dtype=torch.bool, device=device)  # [1, 1, rows, span]
        self.writers = [SlotWriter(keys, values, self.slots, shape.span) for keys, values in buffers]
        self.graph: torch.cuda.CUDAGraph | None = None
        self.output: torch.Tensor | None = None  # the graph's output [rows, vocab or hidden]

    def run(self, model: torch.nn.Module) -> torch.Tensor:
        """The step over the static inputs, eagerly: logits [rows, vocab] or hidden states [rows, hidden]."""
        return lean_forward(model, self.writers, self.ids, self.positions, self.mask, hidden=self.shape.hidden)

    def replay(self, model: torch.nn.Module, pool) -> torch.Tensor:
        """The step through its CUDA graph, captured on the first call (after one warm-up run on a side
        stream, which writes the same entries the step writes)."""
        if self.graph is None:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                self.run(model)
            torch.cuda.current_stream().wait_stream(stream)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, pool=pool):
                self.output = self.run(model)
        self.graph.replay()
        return self.output


class StaticKV:
    """Per-layer key and value buffers [1, kv_heads, capacity, d] that one KVCache's layers view at a time
    (its `owner`), and the step shapes captured over them."""

    def __init__(self):
        self.buffers: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.steps: dict[StepShape, _Step] = {}
        self.owner: weakref.ref | None = None

    @property
    def capacity(self) -> int:
        return self.buffers[0][0].shape[2] if self.buffers else 0

    def owned_by(self, cache: KVCache) -> bool:
        return self.owner is not None and self.owner() is cache

    def free(self) -> bool:
        return self.owner is None or self.owner() is None

    def take(self, cache: KVCache, span: int) -> None:
        """Make `cache`'s layers views of these buffers, which hold at least `span` entries (a cache that
        viewed them before gets copies of its own entries first)."""
        layers = cache.hf.layers
        if self.owned_by(cache) and span <= self.capacity and layers[0].key_buffer is self.buffers[0][0]:
            return  # already viewed (a prefill or a dynamic forward that grew the cache would have moved it)
        if not self.owned_by(cache):
            if not self.free():
                _detach(self.owner().hf.layers)
            self.owner = weakref.ref(cache)
        if span > self.capacity or len(self.buffers) != len(layers) or any(
                (keys.dtype, keys.device, keys.shape[:2], keys.shape[3]) !=
                (layer.keys.dtype, layer.keys.device, layer.keys.shape[:2], layer.keys.shape[3])
                for (keys, _), layer in zip(self.buffers, layers)):
            capacity = max(span, self.capacity)
            self.buffers = [tuple(states.new_zeros(*states.shape[:2], capacity, states.shape[3])
                                  for states in (layer.keys, layer.values)) for layer in layers]
            self.steps = {}  # graphs read the buffers they were captured over
        for layer, (keys, values) in zip(layers, self.buffers):
            if layer.key_buffer is not keys:
                length = layer.keys.shape[2]
                keys[:, :, :length] = layer.keys
                values[:, :, :length] = layer.values
                layer.key_buffer, layer.value_buffer = keys, values
                layer.keys, layer.values = keys[:, :, :length], values[:, :, :length]

    def step(self, shape: StepShape) -> _Step:
        if shape not in self.steps:
            self.steps[shape] = _Step(self.buffers, shape, self.buffers[0][0].device)
        return self.steps[shape]


def _detach(layers) -> None:
    """Give cache layers that view shared buffers copies of their own entries (GrowingLayer buffers)."""
    for layer in layers:
        layer.key_buffer, layer.value_buffer = layer.key_buffer.clone(), layer.value_buffer.clone()
        length = layer.keys.shape[2]
        layer.keys, layer.values = layer.key_buffer[:, :, :length], layer.value_buffer[:, :, :length]


class StaticSteps:
    """A model's static steps: its buffer sets (one per cache in use, at most BUFFER_SETS_PER_MODEL, the most
    recently used last) and their captured shapes. `capture`: record CUDA graphs (a CUDA model), else run the same steps eagerly.
    `capture_s`: the seconds spent capturing so far."""

    def __init__(self, capture: bool):
        self.capture = capture
        self.sets: list[StaticKV] = []
        self.pool = None  # the CUDA graphs' shared memory pool
        self.capture_s = 0.0

    def run(self, model: torch.nn.Module, cache: KVCache, input_ids: torch.Tensor, positions: torch.Tensor,
            tree_mask: torch.Tensor | None, rows: int, hidden: bool = False) -> torch.Tensor:
        """Feed input_ids, positions [q] (the model's positions) after the cache's entries, padded to `rows`
        (>= q); tree_mask [q, m] as AttentionBackend.forward's, or None (causal). The cache grows by q
        entries. Returns logits [q, vocab] (or hidden states [q, hidden]), a tensor of the caller's own."""
        past, q = cache.length, input_ids.shape[-1]
        span = span_of(past + rows)
        buffers = self._buffers_for(cache)
        buffers.take(cache, span)
        step = buffers.step(StepShape(rows, span, hidden))
        device = step.ids.device
        step.ids[:q] = input_ids.to(device)
        step.ids[q:] = step.ids[q - 1]
        step.positions[:q] = positions.to(device)
        step.positions[q:] = step.positions[q - 1]
        step.slots.copy_(past + torch.arange(rows, device=device))  # [rows]: each fed token's slot
        step.mask[0, 0] = torch.arange(span, device=device)[None] <= step.slots[:, None]  # committed + causal
        if tree_mask is not None:  # the last m keys: the tree's
            step.mask[0, 0, :q, past + q - tree_mask.shape[-1]: past + q] = tree_mask.to(device)
        recorded = self._recorded(model, step) if self.capture else None
        # a graph's output is overwritten by its next replay: the caller gets a copy; an eager run's is fresh
        output = step.run(model)[:q] if recorded is None else recorded[:q].clone()
        for layer in cache.hf.layers:  # the cache holds the q real entries; the padding's are past its length
            layer.keys, layer.values = layer.key_buffer[:, :, : past + q], layer.value_buffer[:, :, : past + q]
        return output

    def _recorded(self, model: torch.nn.Module, step: _Step) -> torch.Tensor | None:
        """The step through its CUDA graph (recorded now if new); None, with a warning, where recording fails:
        the steps then run eagerly, here and from now on (a warm-up that ran wrote the entries the step writes)."""
        started = time.perf_counter()
        fresh = step.graph is None
        try:
            if self.pool is None:
                self.pool = torch.cuda.graph_pool_handle()
            output = step.replay(model, self.pool)
        except RuntimeError as error:
            warnings.warn(f"specdecode could not record a CUDA graph of a step ({type(error).__name__}: {error}); "
                          "its static steps run without graphs from now on.", RuntimeWarning, stacklevel=3)
            self.capture, step.graph = False, None
            return None
        if fresh:
            torch.cuda.synchronize()
            self.capture_s += time.perf_counter() - started
        return output

    def _buffers_for(self, cache: KVCache) -> StaticKV:
        """The buffer set this cache views, else a free one, else a new one, else the least recently used."""
        chosen = (next((s for s in self.sets if s.owned_by(cache)), None)
                  or next((s for s in self.sets if s.free()), None))
        if chosen is None:
            chosen = StaticKV() if len(self.sets) < BUFFER_SETS_PER_MODEL else self.sets[0]
        if chosen in self.sets:
            self.sets.remove(chosen)
        self.sets.append(chosen)
        return chosen
