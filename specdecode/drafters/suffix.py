"""Exact-match drafting structures: a suffix array over token sequences (REST-style datastore
lookup) and the frequency trie that turns many continuations into one draft tree.

SuffixIndex sorts every position of the concatenated sequences by the `key_tokens` tokens that
start there (numpy lexsort), so the positions where an n-gram (n <= key_tokens) occurs form one
contiguous range, found with n binary searches. Sequences are joined with a separator (-1) that
no n-gram matches and no continuation crosses.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import numpy as np

from ..tree import DraftTree

SEPARATOR = -1


class SuffixIndex:
    """Positions of n-grams in a token corpus, and the continuations that follow them."""

    def __init__(self, sequences: Sequence[Sequence[int]], key_tokens: int = 8):
        parts = []
        for sequence in sequences:
            parts.append(np.asarray(sequence, dtype=np.int32))
            parts.append(np.array([SEPARATOR], dtype=np.int32))
        self._build(np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32), key_tokens)

    @classmethod
    def from_tokens(cls, body: np.ndarray, key_tokens: int = 8) -> SuffixIndex:
        """An index over `body`: sequences already joined, each followed by SEPARATOR (as `tokens[:size]`)."""
        index = cls.__new__(cls)
        index._build(np.asarray(body, dtype=np.int32), key_tokens)
        return index

    def _build(self, body: np.ndarray, key_tokens: int) -> None:
        self.key_tokens = key_tokens
        self.size = len(body)  # corpus tokens, separators included
        self.tokens = np.concatenate([body, np.full(key_tokens, SEPARATOR, dtype=np.int32)])  # [size + key]
        if self.size:
            keys = np.lib.stride_tricks.sliding_window_view(self.tokens, key_tokens)[: self.size]  # [size, key]
            self.order = np.lexsort(keys.T[::-1]).astype(np.int64)  # [size]: positions, sorted by their keys
        else:
            self.order = np.zeros(0, dtype=np.int64)
        self.first = self.tokens[self.order]  # [size]: the first token of each sorted position

    def __len__(self) -> int:
        return self.size

    def positions(self, ngram: Sequence[int]) -> np.ndarray:
        """Every position p with tokens[p : p + n] == ngram (n <= key_tokens), in key order."""
        if not ngram or len(ngram) > self.key_tokens or self.size == 0:
            return np.zeros(0, dtype=np.int64)
        lo = int(np.searchsorted(self.first, ngram[0], "left"))
        hi = int(np.searchsorted(self.first, ngram[0], "right"))
        for offset, token in enumerate(ngram[1:], start=1):
            if lo >= hi:
                break
            column = self.tokens[self.order[lo:hi] + offset]  # sorted: earlier key tokens are equal here
            lo, hi = lo + int(np.searchsorted(column, token, "left")), lo + int(np.searchsorted(column, token, "right"))
        return self.order[lo:hi]

    def continuations(self, ngram: Sequence[int], depth: int, limit: int = 64) -> list[list[int]]:
        """The (up to `depth`) tokens after each of at most `limit` occurrences of `ngram`, cut at
        the end of their sequence; empty continuations are left out."""
        found = self.positions(ngram)[:limit]
        if len(found) == 0 or depth < 1:
            return []
        starts = found + len(ngram)  # [m]
        window = self.tokens[np.minimum(starts[:, None] + np.arange(depth), len(self.tokens) - 1)]  # [m, depth]
        result = []
        for row in window.tolist():
            cut = row.index(SEPARATOR) if SEPARATOR in row else depth
            if cut:
                result.append(row[:cut])
        return result


def frequency_tree(weighted: Sequence[tuple[Sequence[int], float]], max_nodes: int) -> DraftTree:
    """A draft tree of the heaviest trie nodes: every continuation adds its weight to each node on
    its path; nodes are taken best-first (a node only after its parent), at most `max_nodes`."""
    children: dict[tuple[int, int], int] = {}  # (parent trie node, token) -> trie node
    trie_tokens: list[int] = []
    trie_parents: list[int] = []
    weights: list[float] = []
    for continuation, weight in weighted:
        node = -1
        for token in continuation:
            key = (node, int(token))
            if key not in children:
                children[key] = len(trie_tokens)
                trie_tokens.append(int(token))
                trie_parents.append(node)
                weights.append(0.0)
            node = children[key]
            weights[node] += weight
    kids: dict[int, list[int]] = {}
    for node, parent in enumerate(trie_parents):
        kids.setdefault(parent, []).append(node)
    heap = [(-weights[n], n) for n in kids.get(-1, [])]
    heapq.heapify(heap)
    chosen: dict[int, int] = {}  # trie node -> draft node
    tokens, parents = [], []
    while heap and len(tokens) < max_nodes:
        _, node = heapq.heappop(heap)
        chosen[node] = len(tokens)
        tokens.append(trie_tokens[node])
        parents.append(chosen[trie_parents[node]] if trie_parents[node] >= 0 else -1)
        for child in kids.get(node, []):
            heapq.heappush(heap, (-weights[child], child))
    return DraftTree(tokens, parents)
