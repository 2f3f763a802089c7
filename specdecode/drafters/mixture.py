"""MixtureDrafter: several drafters propose at once; their trees are merged into one tree (shared
prefixes stored once) that the target verifies in one forward pass.

When the merged tree exceeds the step's budget, the nodes most likely to be accepted are kept. Each
drafter has an acceptance estimate `alpha` (its levels accepted vs rejected, checked against the
committed tokens whether or not its nodes made it into the merged tree, decayed per step and pulled
toward a prior); a node at depth d proposed by drafter i scores alpha_i^(d+1), a node several
drafters proposed the best of their scores, and the `budget` best nodes are kept (whole paths: a
node never scores above its parent). Drafters run in order of decreasing alpha, and a drafter whose
best node (alpha_i) could not beat the `budget` nodes already proposed is not run at all: a small
model is spared on the steps where a copy from the context is the better bet. Per drafter, the
stats count the tokens it proposed into the merged tree and the ones accepted.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import SpecDecodeError
from ..sampling import GREEDY
from ..tree import DraftTree
from .base import Drafter, LevelAcceptance


class MixtureDrafter(Drafter):
    """Merge the drafts of `drafters` into one tree of at most `budget` nodes, the likeliest first."""

    def __init__(self, drafters: Sequence[Drafter], *, prior: float = 0.5):
        drafters = list(drafters)
        if not drafters or not all(isinstance(d, Drafter) for d in drafters):
            raise SpecDecodeError("MixtureDrafter needs a non-empty list of drafters (Drafter instances).")
        if not 0 < prior < 1:
            raise SpecDecodeError(f"MixtureDrafter prior must be in (0, 1), got {prior}.")
        self.drafters = drafters
        self.prior = prior
        self.names = _unique([getattr(d, "name", type(d).__name__) for d in drafters])
        self.name = "mixture(" + ",".join(self.names) + ")"
        self._reset()

    def _reset(self) -> None:
        self.tree = DraftTree.empty()
        self.trees = [DraftTree.empty() for _ in self.drafters]  # each drafter's own proposal this step
        self.sources: list[set[int]] = []  # merged node -> indices of the drafters that proposed it
        self.acceptance = [LevelAcceptance(prior=self.prior) for _ in self.drafters]
        self.drafted = [0] * len(self.drafters)
        self.accepted = [0] * len(self.drafters)
        self.skipped = [0] * len(self.drafters)  # steps a drafter was not run (it could not make the cut)

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
        self._reset()

    def propose(self, context_ids: Sequence[int], budget: int) -> DraftTree:
        alphas = [min(a.alpha, 1 - 1e-6) for a in self.acceptance]
        scores: list[float] = []  # of the nodes proposed so far, any order
        order = sorted(range(len(self.drafters)), key=lambda i: -alphas[i])  # stable: list order breaks ties
        self.trees = [DraftTree.empty() for _ in self.drafters]
        for i in order:
            if len(scores) >= budget and sorted(scores, reverse=True)[budget - 1] >= alphas[i]:
                self.skipped[i] += 1
                continue
            self.trees[i] = self.drafters[i].propose(context_ids, budget)
            scores += [alphas[i] ** (depth + 1) for depth in self.trees[i].depths.tolist()]
        # Merge in that order (the likeliest drafter's nodes first), then keep the `budget` best nodes.
        merged, located = DraftTree.merge_located([self.trees[i] for i in order])  # located[r][j]: merged node
        node_scores = [0.0] * len(merged)
        for rank, i in enumerate(order):
            for node, depth in zip(located[rank], self.trees[i].depths.tolist()):
                node_scores[node] = max(node_scores[node], alphas[i] ** (depth + 1))
        best = sorted(range(len(merged)), key=lambda n: (-node_scores[n], n))[:budget]  # parents score >= children
        self.tree = merged.subset(best)
        kept = {old: new for new, old in enumerate(sorted(best))}
        self.sources = [set() for _ in range(len(self.tree))]
        for rank, i in enumerate(order):
            for node in located[rank]:
                if node in kept:
                    self.sources[kept[node]].add(i)
                    self.drafted[i] += 1
        return self.tree

    def accept(self, token_ids: Sequence[int]) -> None:
        for node in self.tree.matched_path(token_ids[:-1]):  # the last committed token is the target's own
            for source in self.sources[node]:
                self.accepted[source] += 1
        for acceptance, tree in zip(self.acceptance, self.trees):  # each drafter's own tree, verified or not
            matched = tree.matched_depth(token_ids)  # the target's own last token counts: it is the truth too
            acceptance.step(matched, missed=matched < min(tree.depth, len(token_ids)))  # beyond: unknown
        self.tree, self.sources = DraftTree.empty(), []  # consumed (a step without a draft counts nothing)
        self.trees = [DraftTree.empty() for _ in self.drafters]
        for drafter in self.drafters:
            drafter.accept(token_ids)

    def report(self) -> dict:
        """Per drafter: tokens it proposed into the merged tree, tokens accepted, steps it was not run,
        and its final acceptance-per-level estimate."""
        return {name: {"drafted": d, "accepted": a, "acceptance_rate": a / d if d else 0.0, "skipped_steps": s,
                       "alpha": round(acc.alpha, 3)}
                for name, d, a, s, acc in zip(self.names, self.drafted, self.accepted, self.skipped, self.acceptance)}


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    result = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        result.append(name if names.count(name) == 1 else f"{name}#{seen[name]}")
    return result
