"""Sampling settings and the one logits -> probabilities warp that drafters, verifiers and plain
decoding all share (so "the target distribution" means the same thing everywhere)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import SpecDecodeError


@dataclass(frozen=True)
class SamplingParams:
    """temperature 0 means greedy decoding; top_k 0 and top_p 1.0 mean "no truncation"."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0

    def __post_init__(self) -> None:
        if not self.temperature >= 0:  # also rejects NaN
            raise SpecDecodeError(
                f"temperature must be >= 0 (0 = greedy decoding), got {self.temperature}."
            )
        if not 0 < self.top_p <= 1:
            raise SpecDecodeError(f"top_p must be in (0, 1] (1 = no nucleus truncation), got {self.top_p}.")
        if int(self.top_k) != self.top_k or self.top_k < 0:
            raise SpecDecodeError(f"top_k must be a whole number >= 0 (0 = no top-k truncation), got {self.top_k}.")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


GREEDY = SamplingParams()


def warp_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """logits [..., vocab] -> probabilities [..., vocab] (float32) after temperature, top-k, top-p.

    Order as in transformers: temperature, then top-k, then top-p (the smallest set of most likely
    tokens whose mass reaches top_p; the most likely token is always kept).
    """
    if params.greedy:
        raise SpecDecodeError("warp_probs needs temperature > 0; greedy decoding uses argmax.")
    scaled = logits.float() / params.temperature  # [..., vocab]
    if params.top_k and params.top_k < scaled.shape[-1]:
        kth_best = torch.topk(scaled, params.top_k, dim=-1).values[..., -1:]  # [..., 1]
        scaled = scaled.masked_fill(scaled < kth_best, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(scaled, dim=-1, descending=True)  # [..., vocab]
        sorted_probs = sorted_logits.softmax(dim=-1)
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of strictly better tokens
        drop_sorted = mass_before >= params.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        scaled = scaled.masked_fill(drop, float("-inf"))
    return scaled.softmax(dim=-1)


def sample_from(probs: torch.Tensor, uniform: float) -> int:
    """Inverse-CDF draw from probs [vocab] (need not sum exactly to 1) with a uniform in [0, 1).
    The uniforms come from one CPU generator, so a seed gives the same draws on any device."""
    cumulative = probs.cumsum(dim=-1)  # [vocab]
    threshold = cumulative[-1:] * uniform  # [1], on the probabilities' device
    index = int(torch.searchsorted(cumulative, threshold, right=True))
    return min(index, probs.shape[-1] - 1)
