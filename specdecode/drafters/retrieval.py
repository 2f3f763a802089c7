"""RetrievalDrafter: copy spans from the context, from the passages retrieved for this request, and
optionally from a whole corpus (a REST-style suffix index), as a tree of the most frequent
continuations.

For n from `max_ngram` down to `min_ngram`, the context's last n tokens are looked up in every
source; the continuations of the longest n that matches anywhere feed a frequency trie (each
continuation weighted by its source: the request's own text counts more than the corpus), and the
heaviest `max_nodes` trie nodes are the draft. Drafts carry no probabilities (`draft_probs=None`):
under sampling they are point masses, which the acceptance rule keeps exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import SpecDecodeError
from ..sampling import GREEDY
from ..tree import DraftTree
from .base import AdaptiveLength, Drafter
from .lookup import NgramIndex
from .suffix import SuffixIndex, frequency_tree


@dataclass(frozen=True)
class SourceWeights:
    """How much one continuation from each source counts in the frequency trie."""

    context: float = 3.0  # the prompt and the tokens generated so far
    passages: float = 2.0  # the passages retrieved for this request
    corpus: float = 1.0  # the whole datastore corpus


class RetrievalDrafter(Drafter):
    """Draft by exact-match retrieval of continuations.

    corpus: a SuffixIndex over the token ids of a whole corpus (in the target's tokenizer), or None.
    passages: token id sequences retrieved for the next request (or call `set_passages` before it).
    k: fixed draft depth; None adapts it (start `initial_k`, at most `max_k`).
    max_nodes: tree size cap; max_matches: occurrences read per source and step.
    """

    name = "retrieval"

    def __init__(self, corpus: SuffixIndex | None = None, *, passages: Sequence[Sequence[int]] = (),
                 k: int | None = None, max_ngram: int = 4, min_ngram: int = 2, initial_k: int = 8, max_k: int = 16,
                 max_nodes: int = 15, max_matches: int = 64, weights: SourceWeights = SourceWeights()):
        if not 1 <= min_ngram <= max_ngram:
            raise SpecDecodeError(f"RetrievalDrafter needs 1 <= min_ngram <= max_ngram, got {min_ngram}, {max_ngram}.")
        if corpus is not None and max_ngram > corpus.key_tokens:
            raise SpecDecodeError(f"max_ngram ({max_ngram}) exceeds the corpus index's key length "
                                  f"({corpus.key_tokens}); rebuild the index with longer keys or lower max_ngram.")
        if k is not None and k < 1:
            raise SpecDecodeError(f"RetrievalDrafter k must be >= 1 (or None to adapt), got {k}.")
        if max_nodes < 1 or max_matches < 1:
            raise SpecDecodeError("RetrievalDrafter max_nodes and max_matches must be >= 1.")
        self.corpus = corpus
        self.sizes = list(range(max_ngram, min_ngram - 1, -1))
        self.max_nodes, self.max_matches, self.weights = max_nodes, max_matches, weights
        self.length = AdaptiveLength(initial=k or initial_k, maximum=k or max_k, adaptive=k is None)
        self.passage_index = SuffixIndex([], key_tokens=max_ngram)
        self.set_passages(passages)
        self.context_index = NgramIndex(min_ngram, max_ngram)  # the prompt + generated tokens, grown per step

    def set_passages(self, passages: Sequence[Sequence[int]]) -> None:
        """The token ids of the passages retrieved for the next generation."""
        self.passage_index = SuffixIndex([list(p) for p in passages], key_tokens=self.sizes[0])

    def begin(self, prompt_ids, *, sampling=GREEDY, generator=None) -> None:
        super().begin(prompt_ids, sampling=sampling, generator=generator)
        self.length.reset()
        self.context_index.reset()

    def propose(self, context_ids: Sequence[int], budget: int) -> DraftTree:
        depth = min(self.length.current, budget)
        weighted = self.continuations(context_ids, depth) if depth > 0 else []
        tree = frequency_tree(weighted, min(budget, self.max_nodes))
        self.length.drafted(tree)
        return tree

    def accept(self, token_ids: Sequence[int]) -> None:
        self.length.committed(token_ids)

    def continuations(self, context_ids: Sequence[int], depth: int) -> list[tuple[list[int], float]]:
        """(continuation, weight) pairs for the longest context suffix found in any source."""
        context = list(context_ids)
        self.context_index.extend(context)  # incremental: only the newly committed tokens are indexed
        last = len(context) - 1
        for n in self.sizes:
            if n > len(context):
                continue
            suffix = context[-n:]
            ends = self.context_index.positions[n].get(tuple(suffix), [])  # earlier occurrences, by last token
            weighted = [(context[end + 1 : end + 1 + depth], self.weights.context)
                        for end in reversed(ends) if end < last][: self.max_matches]
            for index, weight in ((self.passage_index, self.weights.passages), (self.corpus, self.weights.corpus)):
                if index is not None:
                    weighted += [(c, weight) for c in index.continuations(suffix, depth, self.max_matches)]
            if weighted:
                return weighted
        return []
