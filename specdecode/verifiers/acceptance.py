"""Acceptance rules: pure functions of the target's logits over a verified draft tree.

`target_logits` has one row per fed token: row 0 is the target's prediction after the committed
token (the parent of the tree's roots), row 1 + i its prediction after node i. A rule walks down the
tree from the root and returns the accepted path plus one more token from the target (the "bonus"
when the whole path was accepted, the correction otherwise), so every step commits >= 1 token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..sampling import SamplingParams, sample_from, warp_probs
from ..tree import DraftTree


@dataclass(frozen=True)
class Acceptance:
    accepted: list[int]  # node indices of the accepted path, root first
    next_token: int  # the target's token after the accepted path

    @property
    def rows(self) -> list[int]:
        """The target_logits rows that produced the committed tokens (accepted tokens + next_token)."""
        return [0] + [node + 1 for node in self.accepted]


def greedy_accept(tree: DraftTree, target_logits: torch.Tensor) -> Acceptance:
    """Longest root-to-node path whose tokens equal the target's argmax, plus the target's next argmax."""
    target_tokens = target_logits.argmax(dim=-1).tolist()  # [1+n]
    accepted: list[int] = []
    node = -1
    while True:
        wanted = target_tokens[node + 1]
        match = next((child for child in tree.children[node] if tree.token_list[child] == wanted), None)
        if match is None:
            return Acceptance(accepted, wanted)
        accepted.append(match)
        node = match


def sampling_accept(
    tree: DraftTree,
    target_logits: torch.Tensor,
    params: SamplingParams,
    generator: torch.Generator | None = None,
) -> Acceptance:
    """Speculative sampling over a tree by recursive rejection over siblings (SpecInfer / EAGLE).

    At a node, its children are tried in order against a residual distribution that starts as the
    target's. Child x drawn from draft distribution q is accepted with probability
    min(1, residual(x) / q(x)); on rejection the residual becomes normalize(max(0, residual - q)).
    A deterministic draft (draft_probs None) is a point mass: accept with probability residual(x),
    else zero x out. When no child is accepted, the next token is sampled from the residual.
    For a chain with draft probabilities this is exactly Leviathan et al.'s rule; the output is
    distributed as the target's (warped) distribution whenever each child's token was drawn from its
    row of draft_probs independently of its earlier siblings (or is deterministic).
    """
    target_probs = warp_probs(target_logits, params)  # [1+n, vocab]
    try_children = _try_point_masses if tree.draft_probs is None else _try_sampled
    # One uniform per node (each node is tried at most once) and one for the final draw.
    uniforms = torch.rand(len(tree) + 1, generator=generator).tolist()
    accepted: list[int] = []
    node = -1
    while True:
        chosen, residual = try_children(tree, node, target_probs[node + 1], uniforms)
        if chosen is None:
            return Acceptance(accepted, sample_from(residual, uniforms[-1]))
        accepted.append(chosen)
        node = chosen


def _try_point_masses(tree: DraftTree, node: int, target_row: torch.Tensor, uniforms: list[float]):
    """Deterministic children: accept x with probability residual(x) = p(x) / (1 - mass rejected so
    far); on rejection x leaves the residual. Returns (accepted child or None, residual [vocab])."""
    rejected: list[int] = []
    rejected_mass = 0.0
    for child in tree.children[node]:
        token = tree.token_list[child]
        if token in rejected:
            continue  # a duplicate sibling has residual mass 0
        mass = target_row[token].item()
        if rejected_mass < 1.0 and uniforms[child] < mass / (1.0 - rejected_mass):
            return child, None
        rejected.append(token)
        rejected_mass += mass
    if not rejected or rejected_mass >= 1.0:  # nothing removed, or (by rounding) everything
        return None, target_row
    residual = target_row.clone()  # [vocab]
    residual[rejected] = 0.0
    return None, residual


def _try_sampled(tree: DraftTree, node: int, target_row: torch.Tensor, uniforms: list[float]):
    """Children drawn from draft_probs rows: accept x with probability min(1, residual(x) / q(x));
    on rejection residual <- normalize(max(0, residual - q))."""
    residual = target_row  # [vocab]
    for child in tree.children[node]:
        token = tree.token_list[child]
        draft_row = tree.draft_probs[child].to(residual)  # [vocab]
        draft_mass = draft_row[token].item()
        if draft_mass > 0 and uniforms[child] < residual[token].item() / draft_mass:
            return child, None
        residual = (residual - draft_row).clamp_(min=0.0)
        total = residual.sum().item()
        if total <= 0.0:  # only reachable through rounding: the draft covered the target exactly
            residual, total = target_row, 1.0
        residual = residual / total
    return None, residual
