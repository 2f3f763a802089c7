"""KV cache view over transformers' DynamicCache, with the surgery speculative decoding needs.

Rollback is bookkeeping: after a verification forward the cache holds the committed prefix plus one
entry per fed token; `keep` moves the accepted path's entries down next to the prefix (a no-op for a
chain) and drops the rest.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import DynamicCache

from .errors import SpecDecodeError


class KVCache:
    """One model's KV cache: `length` entries, one per token fed so far (positions 0..length-1)."""

    def __init__(self, model: torch.nn.Module):
        self.hf = DynamicCache(config=model.config)
        if any(getattr(layer, "is_sliding", False) for layer in self.hf.layers):
            raise SpecDecodeError(
                f"{type(model).__name__} uses sliding-window attention layers, which specdecode's cache "
                "surgery does not support yet; use a model with full attention in every layer."
            )

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
