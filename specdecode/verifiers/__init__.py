"""Verification: acceptance rules over a scored DraftTree."""

from __future__ import annotations

import torch

from ..sampling import SamplingParams
from ..tree import DraftTree
from .acceptance import Acceptance, greedy_accept, sampling_accept

__all__ = ["Acceptance", "greedy_accept", "sampling_accept", "accept"]


def accept(
    tree: DraftTree,
    target_logits: torch.Tensor,
    params: SamplingParams,
    generator: torch.Generator | None = None,
) -> Acceptance:
    """The rule that keeps the target's output: greedy for temperature 0, speculative sampling otherwise."""
    if params.greedy:
        return greedy_accept(tree, target_logits)
    return sampling_accept(tree, target_logits, params, generator)
