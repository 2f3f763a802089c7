"""MixtureDrafter: several drafters propose at once; their trees are merged into one tree (shared
prefixes stored once) that the target verifies in one forward pass. It counts, per drafter, how
many of its proposed tokens were drafted and accepted, for the stats."""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import SpecDecodeError
from ..sampling import GREEDY
from ..tree import DraftTree
from .base import Drafter


class MixtureDrafter(Drafter):
    """Merge the drafts of `drafters`; each gets the whole budget, the merged tree is cut to it
    (earlier drafters' nodes first)."""

    def __init__(self, drafters: Sequence[Drafter]):
        drafters = list(drafters)
        if not drafters or not all(isinstance(d, Drafter) for d in drafters):
            raise SpecDecodeError("MixtureDrafter needs a non-empty list of drafters (Drafter instances).")
        self.drafters = drafters
        self.names = _unique([getattr(d, "name", type(d).__name__) for d in drafters])
        self.name = "mixture(" + ",".join(self.names) + ")"
        self.tree = DraftTree.empty()
        self.sources: list[set[int]] = []  # merged node -> indices of the drafters that proposed it
        self.drafted = [0] * len(drafters)
        self.accepted = [0] * len(drafters)

    def check_target(self, target) -> None:
        for drafter in self.drafters:
            drafter.check_target(target)

    def set_passages(self, passages: Sequence[Sequence[int]]) -> None:
        """Hand retrieved passages (token ids) to the drafters that copy from them."""
        for drafter in self.drafters:
            if hasattr(drafter, "set_passages"):
                drafter.set_passages(passages)

    def begin(self, prompt_ids, *, sampling=GREEDY, generator=None) -> None:
        super().begin(prompt_ids, sampling=sampling, generator=generator)
        for drafter in self.drafters:
            drafter.begin(prompt_ids, sampling=sampling, generator=generator)
        self.tree, self.sources = DraftTree.empty(), []
        self.drafted = [0] * len(self.drafters)
        self.accepted = [0] * len(self.drafters)

    def propose(self, context_ids: Sequence[int], budget: int) -> DraftTree:
        trees = [drafter.propose(context_ids, budget) for drafter in self.drafters]
        merged = DraftTree.merge(trees).truncated(budget)
        self.sources = [set() for _ in range(len(merged))]
        for source, tree in enumerate(trees):
            for node in _locate(merged, tree):
                if node is not None:
                    self.sources[node].add(source)
                    self.drafted[source] += 1
        self.tree = merged
        return merged

    def accept(self, token_ids: Sequence[int]) -> None:
        for node in self.tree.matched_path(token_ids[:-1]):  # the last committed token is the target's own
            for source in self.sources[node]:
                self.accepted[source] += 1
        self.tree, self.sources = DraftTree.empty(), []  # consumed (a step without a draft counts nothing)
        for drafter in self.drafters:
            drafter.accept(token_ids)

    def report(self) -> dict:
        """Per drafter: tokens it proposed (that made it into the merged tree) and tokens accepted."""
        return {name: {"drafted": d, "accepted": a, "acceptance_rate": a / d if d else 0.0}
                for name, d, a in zip(self.names, self.drafted, self.accepted)}


def _locate(merged: DraftTree, tree: DraftTree) -> list[int | None]:
    """The merged node of each of `tree`'s nodes (None where truncation dropped it)."""
    children = merged.children
    located: list[int | None] = []
    for token, parent in zip(tree.token_list, tree.parent_list):
        base = -1 if parent < 0 else located[parent]
        if parent >= 0 and base is None:
            located.append(None)
            continue
        located.append(next((c for c in children.get(base, []) if merged.token_list[c] == token), None))
    return located


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    result = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        result.append(name if names.count(name) == 1 else f"{name}#{seen[name]}")
    return result
