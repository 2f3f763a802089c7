"""A drafter's output layer restricted to common token ids plus the prompt's own (drafts only)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch


class PrunedHead:
    """The drafter's output layer restricted to the `size` lowest token ids plus the prompt's tokens.

    On a CPU the output layer over a large vocabulary is a big share of a small drafter's cost per
    token (Qwen2.5-0.5B: 136M of its 494M weights). Byte-level BPE ids are roughly in merge order,
    so low ids are the common tokens; the prompt's own tokens are added so that copying works.
    Drafts only: the target still verifies over the full vocabulary, so this never changes output.
    The head is a torch Linear (its rows are views) or a quantized layer with `select_rows`
    (runtime/cpu/quantize.py); `base` computes the lowest `size` ids (`head_rows`, built once per drafter).
    """

    def __init__(self, head: torch.nn.Module, size: int, base: Callable[[torch.Tensor], torch.Tensor],
                 prompt_ids: Sequence[int]):
        self.size, self.base = size, base
        device = torch.device("cpu") if hasattr(head, "select_rows") else head.weight.device  # quantized, packed: CPU
        self.extra = torch.tensor(sorted({t for t in prompt_ids if size <= t < head.out_features}),
                                  dtype=torch.long, device=device)  # [e], on the head's device: no copies per draft
        self.extra_rows = head_rows(head, self.extra)

    def logits(self, hidden: torch.Tensor, vocab_size: int) -> torch.Tensor:
        """hidden [q, hidden_size] -> logits [q, vocab_size], -inf outside the kept ids."""
        kept = torch.cat([self.base(hidden), self.extra_rows(hidden)], dim=-1).float()  # [q, size + e]
        logits = torch.full((hidden.shape[0], vocab_size), float("-inf"), device=hidden.device)  # [q, vocab]
        width = min(self.size, vocab_size)
        logits[:, :width] = kept[:, :width]
        inside = self.extra < vocab_size  # [e]
        logits[:, self.extra[inside]] = kept[:, self.size :][:, inside]
        return logits


def head_rows(head: torch.nn.Module, rows: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """hidden [q, hidden_size] -> the logits [q, r] of the output channels `rows` [r] of `head`
    (a torch Linear, whose contiguous rows are a view, or a quantized or packed layer with `select_rows`)."""
    if len(rows) == 0:
        return lambda hidden: hidden.new_empty(hidden.shape[0], 0)
    if hasattr(head, "select_rows"):  # a quantized or packed layer (runtime/cpu): no dense weight to slice
        return head.select_rows(rows)
    contiguous = int(rows[-1]) - int(rows[0]) == len(rows) - 1
    weight = head.weight[int(rows[0]) : int(rows[-1]) + 1] if contiguous else head.weight[rows]  # [r, hidden]
    bias = None if head.bias is None else head.bias[rows]
    return partial(torch.nn.functional.linear, weight=weight, bias=bias)
