"""Prompt lookup: draft by copying what followed an earlier occurrence of the context's last n-gram.

Free to draft (no model), strong when the output repeats the input (summaries, RAG answers, code
edits). The context's suffix n-gram is searched for n from `max_ngram` down to `min_ngram`; the
continuations of the most recent matches become branches of one tree (shared prefixes merged).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import SpecDecodeError
from ..sampling import GREEDY
from ..tree import DraftTree
from .base import AdaptiveLength, Drafter


class NgramIndex:
    """n-gram -> end positions (index of its last token) in a growing token sequence, for each n."""

    def __init__(self, min_ngram: int, max_ngram: int):
        self.sizes = range(min_ngram, max_ngram + 1)
        self.positions: dict[int, dict[tuple[int, ...], list[int]]] = {n: {} for n in self.sizes}
        self.indexed = 0  # tokens of the sequence indexed so far

    def reset(self) -> None:
        self.positions = {n: {} for n in self.sizes}
        self.indexed = 0

    def extend(self, tokens: Sequence[int]) -> None:
        """Index the n-grams ending at positions self.indexed .. len(tokens) - 1."""
        for end in range(self.indexed, len(tokens)):
            for n in self.sizes:
                if end + 1 >= n:
                    self.positions[n].setdefault(tuple(tokens[end + 1 - n : end + 1]), []).append(end)
        self.indexed = len(tokens)

    def continuations(self, tokens: Sequence[int], length: int, max_branches: int) -> list[list[int]]:
        """Up to `max_branches` distinct continuations of earlier matches of the suffix, longest n
        first, then the most recent match first."""
        found: list[list[int]] = []
        last = len(tokens) - 1
        for n in reversed(self.sizes):
            if n > len(tokens):
                continue
            for end in reversed(self.positions[n].get(tuple(tokens[last + 1 - n :]), [])):
                continuation = list(tokens[end + 1 : end + 1 + length])
                if end < last and continuation not in found:
                    found.append(continuation)
                    if len(found) == max_branches:
                        return found
        return found


class LookupDrafter(Drafter):
    """Prompt-lookup drafter (n-gram copy from the context), chains or trees of matches.

    k: fixed draft length; None adapts it (AdaptiveLength, starting at `initial_k`, at most `max_k`).
    tree_width: how many distinct matches to propose at once (1 = a chain).
    max_nodes: cap on the tree's size.
    The defaults (n-grams of 3 then 2 words, a tree up to 3 wide, at most 15 nodes so a verification
    feeds at most 16 tokens) fit replays of greedy outputs of Spec-Bench's summarization, rag, qa,
    translation and math questions against the CPU cost of verifying q tokens: a lone matching token
    (min_ngram=1) predicts the next ones too rarely to pay for their verification.
    """

    name = "lookup"

    def __init__(
        self,
        k: int | None = None,
        *,
        max_ngram: int = 3,
        min_ngram: int = 2,
        tree_width: int = 3,
        initial_k: int = 8,
        max_k: int = 16,
        max_nodes: int = 15,
    ):
        if not 1 <= min_ngram <= max_ngram:
            raise SpecDecodeError(f"LookupDrafter needs 1 <= min_ngram <= max_ngram, got {min_ngram}, {max_ngram}.")
        if k is not None and k < 1:
            raise SpecDecodeError(f"LookupDrafter k must be >= 1 (or None to adapt), got {k}.")
        if tree_width < 1 or max_nodes < 1:
            raise SpecDecodeError("LookupDrafter tree_width and max_nodes must be >= 1.")
        self.index = NgramIndex(min_ngram, max_ngram)
        self.tree_width = tree_width
        self.max_nodes = max_nodes
        self.length = AdaptiveLength(initial=k or initial_k, maximum=k or max_k, adaptive=k is None)

    def begin(self, prompt_ids, *, sampling=GREEDY, generator=None) -> None:
        super().begin(prompt_ids, sampling=sampling, generator=generator)
        self.index.reset()
        self.length.reset()

    def propose(self, context_ids: Sequence[int], budget: int) -> DraftTree:
        self.index.extend(context_ids)
        length = min(self.length.current, budget)
        chains = self.index.continuations(context_ids, length, self.tree_width) if length > 0 else []
        tree = DraftTree.merge([DraftTree.chain(chain) for chain in chains]).truncated(min(budget, self.max_nodes))
        self.length.drafted(tree)
        return tree

    def accept(self, token_ids: Sequence[int]) -> None:
        self.length.committed(token_ids)
