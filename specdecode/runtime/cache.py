"""KV cache view over transformers' DynamicCache, with the surgery speculative decoding needs.

Rollback is bookkeeping: after a verification forward the cache holds the committed prefix plus one
entry per fed token; `keep` moves the accepted path's entries down next to the prefix (a no-op for a
chain) and drops the rest. Every layer is a GrowingLayer: entries are written in place into a buffer
with spare room, so a step does not copy the whole cache as DynamicLayer's torch.cat does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from ..errors import SpecDecodeError


GROWTH_MIN_ENTRIES = 256  # spare room a buffer gets at least when it grows
KEY_BLOCK = 512  # buffers hold whole blocks of this many entries: row-wise attention reads keys in such blocks


class GrowingLayer(DynamicLayer):
    """A DynamicLayer whose keys and values are views [batch, heads, length, head_dim] of preallocated
    buffers [batch, heads, capacity, head_dim] that grow by half when full. A buffer is zeroed when made
    and its capacity is whole KEY_BLOCKs, so what lies past the entries is always finite (zeros or
    dropped entries): row-wise attention reads up to the end of a block, masked.

    DynamicLayer appends with torch.cat: every step allocates and copies the whole cache, O(length)
    per token (every layer's keys and values of every token so far). Here a step writes its q
    entries in place. crop, keep and reset keep working on the views; a view replaced by other
    tensors (KVCache.cast) is copied into fresh buffers at the next update.
    """

    key_buffer: torch.Tensor | None = None
    value_buffer: torch.Tensor | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Append key/value states [batch, heads, q, head_dim]; return the views of all entries."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        start = self.get_seq_length()
        end = start + key_states.shape[-2]
        if not (self._fits(self.key_buffer, self.keys, key_states, end)
                and self._fits(self.value_buffer, self.values, value_states, end)):
            self._reallocate(key_states, value_states, start, end)
        self.key_buffer[..., start:end, :] = key_states
        self.value_buffer[..., start:end, :] = value_states
        self.keys = self.key_buffer[..., :end, :]
        self.values = self.value_buffer[..., :end, :]
        return self.keys, self.values

    @staticmethod
    def _fits(buffer: torch.Tensor | None, held: torch.Tensor, states: torch.Tensor, end: int) -> bool:
        """Whether `buffer` holds the `held` entries (or none) and has room up to `end` for `states`."""
        return (buffer is not None and buffer.shape[-2] >= end and buffer.dtype == states.dtype
                and buffer.device == states.device and buffer.shape[:2] == states.shape[:2]
                and buffer.shape[-1] == states.shape[-1]
                and (held.numel() == 0 or held.data_ptr() == buffer.data_ptr()))

    def _reallocate(self, key_states: torch.Tensor, value_states: torch.Tensor, start: int, end: int) -> None:
        capacity = -(-(end + max(end // 2, GROWTH_MIN_ENTRIES)) // KEY_BLOCK) * KEY_BLOCK
        buffers = []
        for held, states in ((self.keys, key_states), (self.values, value_states)):
            buffer = states.new_zeros(*states.shape[:2], capacity, states.shape[-1])  # [b, heads, capacity, d]
            if start:
                buffer[..., :start, :] = held[..., :start, :]
            buffers.append(buffer)
        self.key_buffer, self.value_buffer = buffers


class KVCache:
    """One model's KV cache: `length` entries, one per token fed so far. Entry i holds the token at rotary
    position i + position_shift (0, except after a prompt whose positions are not its indices: an M-RoPE
    image prompt)."""

    def __init__(self, model: torch.nn.Module, position_shift: int = 0):
        self.position_shift = position_shift
        self.hf = DynamicCache(config=model.config)
        if any(getattr(layer, "is_sliding", False) for layer in self.hf.layers):
            raise SpecDecodeError(
                f"{type(model).__name__} uses sliding-window attention layers, which specdecode's cache "
                "surgery does not support yet; use a model with full attention in every layer."
            )
        self.hf.layers = [GrowingLayer() if type(layer) is DynamicLayer else layer for layer in self.hf.layers]
        if self.hf.layer_class_to_replicate is DynamicLayer:  # a config without layer types: layers made lazily
            self.hf.layer_class_to_replicate = GrowingLayer

    @property
    def length(self) -> int:
        return self.hf.get_seq_length()

    def reset(self) -> None:
        self.hf.reset()

    def cast(self, dtype: torch.dtype) -> None:
        """Convert every stored key and value to `dtype` (e.g. after a prefill in another precision)."""
        for layer in self.hf.layers:
            if getattr(layer, "is_initialized", False):
                layer.keys, layer.values = layer.keys.to(dtype), layer.values.to(dtype)

    def crop(self, length: int) -> None:
        """Keep the first `length` entries."""
        excess = self.length - length
        if excess < 0:
            raise ValueError(f"cannot crop a cache of {self.length} entries to {length}")
        if excess:
            self.hf.crop(-excess)  # transformers 5.x takes a negative count of entries to drop

    def keep(self, start: int, offsets: Sequence[int]) -> None:
        """Keep entries [0, start) and then start + offsets[i] (ascending), dropping all the others.

        Used after a tree verification: `start` is the committed length before the forward and
        `offsets` are the fed positions on the accepted path.
        """
        kept = len(offsets)
        if list(offsets) != list(range(kept)):  # a chain's accepted prefix needs no move
            source = torch.as_tensor(offsets, dtype=torch.long) + start  # [kept]
            for layer in self.hf.layers:
                source = source.to(layer.keys.device)
                for states in (layer.keys, layer.values):  # [batch, heads, length, head_dim]
                    states[..., start : start + kept, :] = states.index_select(-2, source)
        self.crop(start + kept)

    def layer_entries(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every layer's (keys, values) [batch, kv_heads, length, head_dim] (views, not copies)."""
        return [(layer.keys, layer.values) for layer in self.hf.layers if getattr(layer, "is_initialized", False)]

    def gathered(self, model: torch.nn.Module, index: Sequence[torch.Tensor], dtype: torch.dtype | None = None
                 ) -> KVCache:
        """A new cache for `model` holding, in layer l and KV head h, this cache's entries index[l][h]
        (index[l]: [kv_heads, n], the same count n for every head and layer), in `dtype` (default: as
        stored). Keys already carry their rotary positions, so gathered entries need no recompute."""
        cache = KVCache(model, self.position_shift)
        for layer_index, ((keys, values), chosen) in enumerate(zip(self.layer_entries(), index, strict=True)):
            chosen = chosen.to(keys.device)
            gather = chosen[None, :, :, None].expand(keys.shape[0], -1, -1, keys.shape[-1])  # [b, kv, n, d]
            dtype_ = dtype or keys.dtype
            cache.hf.update(keys.gather(2, gather).to(dtype_), values.gather(2, gather).to(dtype_), layer_index)
        return cache

    def append_from(self, source: KVCache, start: int, end: int) -> None:
        """Append `source`'s entries [start, end) to every layer, in this cache's dtype."""
        if end <= start:
            return
        for layer_index, (keys, values) in enumerate(source.layer_entries()):
            own = self.hf.layers[layer_index]
            dtype = own.keys.dtype if getattr(own, "is_initialized", False) else keys.dtype
            self.hf.update(keys[..., start:end, :].to(dtype), values[..., start:end, :].to(dtype), layer_index)
