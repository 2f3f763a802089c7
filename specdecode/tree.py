"""DraftTree: the one structure every drafter produces and the verifier consumes.

A tree of n draft tokens hangs below the last committed token (the "pending" token, whose KV entry
is not yet in the cache). Node i holds `tokens[i]`; `parents[i]` is the index of its parent node, or
-1 when it is a child of the pending token. Nodes are in topological order (parents[i] < i), so any
prefix of the nodes is itself a valid tree. A chain is the case parents[i] = i - 1.

`draft_probs[i]` is the distribution node i's token was drawn from (a row of [n, vocab]), or the
whole field is None for a deterministic draft (lookup, retrieval, greedy model drafts): each token is
then a point mass. Sampling verification relies on this meaning; greedy verification ignores it.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

import torch

from .errors import SpecDecodeError


def _as_int_list(values: Sequence[int] | torch.Tensor, what: str) -> list[int]:
    if isinstance(values, torch.Tensor):
        if values.is_floating_point():
            raise SpecDecodeError(f"DraftTree {what} must be integer token/node ids, got a {values.dtype} tensor.")
        return values.reshape(-1).tolist()
    if any(isinstance(v, (float, bool)) for v in values):
        raise SpecDecodeError(f"DraftTree {what} must be integer token/node ids, got {list(values)}.")
    return [int(v) for v in values]


class DraftTree:
    """tokens [n] long; parents [n] long (-1 = child of the committed token); draft_probs [n, vocab] or None.

    Treat it as immutable: derived structure (depths, masks, children) is computed once and cached.
    """

    def __init__(self, tokens, parents, draft_probs: torch.Tensor | None = None):
        self.token_list = _as_int_list(tokens, "tokens")
        self.parent_list = _as_int_list(parents, "parents")
        n = len(self.token_list)
        if len(self.parent_list) != n:
            raise SpecDecodeError(
                f"DraftTree got {n} tokens but {len(self.parent_list)} parents; give one parent index per token "
                "(-1 for a child of the last committed token)."
            )
        if any(not -1 <= parent < i for i, parent in enumerate(self.parent_list)):
            raise SpecDecodeError(
                f"DraftTree parents {self.parent_list} are not in topological order: each parent must be -1 "
                "or the index of an EARLIER node (parents[i] < i)."
            )
        if draft_probs is not None and (draft_probs.dim() != 2 or draft_probs.shape[0] != n):
            raise SpecDecodeError(
                f"DraftTree draft_probs must have shape [n_tokens={n}, vocab], got {tuple(draft_probs.shape)}; "
                "pass None for a deterministic draft."
            )
        self.draft_probs = draft_probs  # [n, vocab] | None

    @cached_property
    def tokens(self) -> torch.Tensor:
        """[n] long"""
        return torch.tensor(self.token_list, dtype=torch.long)

    @cached_property
    def parents(self) -> torch.Tensor:
        """[n] long"""
        return torch.tensor(self.parent_list, dtype=torch.long)

    def __repr__(self) -> str:
        probs = "None" if self.draft_probs is None else f"[{len(self)}, {self.draft_probs.shape[1]}]"
        return f"DraftTree(tokens={self.token_list}, parents={self.parent_list}, draft_probs={probs})"

    # ---------------------------------------------------------------- constructors
    @classmethod
    def empty(cls) -> DraftTree:
        return cls([], [])

    @classmethod
    def chain(cls, tokens: Sequence[int] | torch.Tensor, draft_probs: torch.Tensor | None = None) -> DraftTree:
        n = len(tokens)
        return cls(tokens, list(range(-1, n - 1)), draft_probs)

    # ---------------------------------------------------------------- derived structure
    def __len__(self) -> int:
        return len(self.token_list)

    @cached_property
    def depths(self) -> torch.Tensor:
        """[n] depth of each node; children of the committed token have depth 0."""
        depths = [0] * len(self)
        for i, parent in enumerate(self.parent_list):
            depths[i] = 0 if parent < 0 else depths[parent] + 1
        return torch.tensor(depths, dtype=torch.long)

    @cached_property
    def depth(self) -> int:
        """Levels of the tree: the longest root-to-node path (0 for an empty tree)."""
        return int(self.depths.max()) + 1 if len(self) else 0

    @cached_property
    def is_chain(self) -> bool:
        return self.parent_list == list(range(-1, len(self) - 1))

    @cached_property
    def children(self) -> dict[int, list[int]]:
        """node index (-1 = the committed token) -> its children, in node order."""
        children: dict[int, list[int]] = {-1: []}
        for i, parent in enumerate(self.parent_list):
            children.setdefault(parent, []).append(i)
            children.setdefault(i, [])
        return children

    def matched_path(self, token_ids: Sequence[int]) -> list[int]:
        """The nodes of the root-to-node path that the leading `token_ids` follow (as far as they do)."""
        path, node, children = [], -1, self.children
        for token in token_ids:
            node = next((c for c in children[node] if self.token_list[c] == token), None)
            if node is None:
                break
            path.append(node)
        return path

    def matched_depth(self, token_ids: Sequence[int]) -> int:
        """How many leading `token_ids` follow one root-to-node path of this tree."""
        return len(self.matched_path(token_ids))

    @cached_property
    def ancestor_mask(self) -> torch.Tensor:
        """[n, n] bool: mask[i, j] is True when node j is node i or one of its ancestors."""
        n = len(self)
        mask = torch.zeros(n, n, dtype=torch.bool)
        for i, parent in enumerate(self.parent_list):
            if parent >= 0:
                mask[i] = mask[parent]
            mask[i, i] = True
        return mask

    def paths(self) -> list[list[int]]:
        """Root-to-leaf paths as lists of node indices, in depth-first order."""
        paths: list[list[int]] = []
        stack = [[root] for root in reversed(self.children[-1])]
        while stack:
            path = stack.pop()
            kids = self.children[path[-1]]
            if not kids:
                paths.append(path)
            stack.extend(path + [kid] for kid in reversed(kids))
        return paths

    def path_tokens(self, node: int) -> list[int]:
        """The tokens from the root down to `node` (inclusive)."""
        path = []
        while node >= 0:
            path.append(self.token_list[node])
            node = self.parent_list[node]
        return path[::-1]

    def rooted_inputs(self, root_token: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """What a forward over [root] + nodes needs: (token ids [1+n], attention among them
        [1+n, 1+n] bool or None when the nodes form a chain (plain causal attention), depth offsets
        [1+n]: 0 for the root, 1 + depth for node i)."""
        input_ids = torch.tensor([root_token] + self.token_list, dtype=torch.long)  # [1+n]
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), self.depths + 1])  # [1+n]
        if self.is_chain:
            return input_ids, None, offsets
        n = len(self)
        mask = torch.zeros(n + 1, n + 1, dtype=torch.bool)  # [1+n, 1+n]
        mask[:, 0] = True  # everyone sees the root
        mask[1:, 1:] = self.ancestor_mask
        return input_ids, mask, offsets

    # ---------------------------------------------------------------- transformations
    def truncated(self, max_nodes: int) -> DraftTree:
        """The first `max_nodes` nodes (still a valid tree: parents come first)."""
        if max_nodes >= len(self):
            return self
        probs = None if self.draft_probs is None else self.draft_probs[:max_nodes]
        return DraftTree(self.token_list[:max_nodes], self.parent_list[:max_nodes], probs)

    def subset(self, keep: Sequence[int]) -> DraftTree:
        """The nodes `keep` (any order; each kept node's parent must be kept too), in tree order."""
        nodes = sorted(set(keep))
        if nodes == list(range(len(self))):
            return self  # nothing cut (no copy of draft_probs)
        remap = {old: new for new, old in enumerate(nodes)}
        parents = [self.parent_list[node] for node in nodes]
        if any(parent >= 0 and parent not in remap for parent in parents):
            raise SpecDecodeError(f"DraftTree.subset({nodes}) drops a parent of a kept node; keep whole paths.")
        probs = None if self.draft_probs is None else self.draft_probs[nodes]
        return DraftTree([self.token_list[node] for node in nodes], [remap.get(p, -1) for p in parents], probs)

    def one_hot_probs(self, vocab_size: int) -> torch.Tensor:
        """[n, vocab] draft distributions, with point masses (one-hot rows) for a deterministic draft."""
        if self.draft_probs is not None:
            return self.draft_probs
        probs = torch.zeros(len(self), vocab_size)
        probs[torch.arange(len(self)), self.tokens] = 1.0
        return probs

    @staticmethod
    def merge(trees: Sequence[DraftTree]) -> DraftTree:
        """One tree holding every path of `trees`; shared prefixes are stored once.

        Two nodes are shared only when they have the same parent, the same token and the same draft
        distribution (both point masses, or equal rows). Sampled nodes with different distributions
        stay separate siblings: merging them would change what sampling verification must assume.
        """
        return DraftTree.merge_located(trees)[0]

    @staticmethod
    def merge_located(trees: Sequence[DraftTree]) -> tuple[DraftTree, list[list[int]]]:
        """`merge(trees)`, and for each tree the merged node of each of its nodes."""
        tokens: list[int] = []
        parents: list[int] = []
        rows: list[torch.Tensor | None] = []
        index: dict[tuple[int, int], list[int]] = {}  # (parent, token) -> merged node ids
        located: list[list[int]] = []
        for tree in trees:
            remap: list[int] = []
            for i, (token, parent) in enumerate(zip(tree.token_list, tree.parent_list)):
                new_parent = -1 if parent < 0 else remap[parent]
                row = None if tree.draft_probs is None else tree.draft_probs[i]
                shared = next(
                    (j for j in index.get((new_parent, token), []) if _same_distribution(rows[j], row)), None
                )
                if shared is None:
                    shared = len(tokens)
                    tokens.append(token)
                    parents.append(new_parent)
                    rows.append(row)
                    index.setdefault((new_parent, token), []).append(shared)
                remap.append(shared)
            located.append(remap)
        nonempty = [tree for tree in trees if len(tree)]
        if len(nonempty) == 1 and len(tokens) == len(nonempty[0]):  # nothing merged: the tree itself (its probs)
            return nonempty[0], located
        draft_probs = None
        if any(tree.draft_probs is not None for tree in nonempty):
            vocab = next(tree.draft_probs.shape[1] for tree in nonempty if tree.draft_probs is not None)
            draft_probs = torch.zeros(len(tokens), vocab)
            for j, row in enumerate(rows):
                if row is None:
                    draft_probs[j, tokens[j]] = 1.0
                else:
                    draft_probs[j] = row
        return DraftTree(tokens, parents, draft_probs), located


def _same_distribution(row_a: torch.Tensor | None, row_b: torch.Tensor | None) -> bool:
    if row_a is None or row_b is None:
        return row_a is None and row_b is None
    return row_a is row_b or bool(torch.equal(row_a, row_b))
