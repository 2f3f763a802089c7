"""MixtureDrafter: several drafters propose at once; their trees are merged into one tree (shared
prefixes stored once) that the target verifies in one forward pass.

When the merged tree exceeds the step's budget, the nodes most likely to be accepted are kept. Each
member has an acceptance estimate `alpha` (its levels accepted vs rejected, checked against the
committed tokens whether or not its nodes made it into the merged tree, decayed per step and pulled
toward a prior: policy.LevelAcceptance); a node at depth d proposed by member i scores alpha_i^(d+1), a
node several members proposed the best of their scores, and the `budget` best nodes are kept (whole
paths: a node never scores above its parent). Members run in order of decreasing alpha, and a member whose
best node (alpha_i) could not beat the `budget` nodes already proposed is not run at all: a small model is
spared on the steps where a copy from the context is the better bet. How large the budget is, given what
drafting and verifying cost, is the engine's draft policy (policy.DraftSizer). Per member, the stats count
the tokens it put into the merged tree, the ones accepted, and the steps it was not run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import SpecDecodeError
from ..policy import LevelAcceptance, best_nodes, makes_the_cut, node_score
from ..sampling import GREEDY
from ..tree import DraftTree
from .base import Drafter, check_drafter, drafter_name, optional_part


@dataclass
class Member:
    """One drafter of a mixture and what the mixture knows of it."""

    drafter: Drafter
    name: str
    acceptance: LevelAcceptance
    tree: DraftTree = field(default_factory=DraftTree.empty)  # its own proposal this step (empty: not run)
    drafted: int = 0  # tokens it put into merged trees
    accepted: int = 0  # ... of which the target accepted
    skipped: int = 0  # steps it was not run: its best node could not make the budget

    def report(self) -> dict:
        return {"drafted": self.drafted, "accepted": self.accepted,
                "acceptance_rate": self.accepted / self.drafted if self.drafted else 0.0,
                "skipped_steps": self.skipped, "alpha": round(self.acceptance.alpha, 3)}


class MixtureDrafter(Drafter):
    """Merge the drafts of `drafters` into one tree of at most `budget` nodes, the likeliest first."""

    def __init__(self, drafters: Sequence[Drafter], *, prior: float = 0.5):
        drafters = list(drafters)
        if not drafters:
            raise SpecDecodeError("MixtureDrafter needs a non-empty list of drafters.")
        for drafter in drafters:
            check_drafter(drafter)
        if not 0 < prior < 1:
            raise SpecDecodeError(f"MixtureDrafter prior must be in (0, 1), got {prior}.")
        self.prior = prior
        names = _unique([drafter_name(d) for d in drafters])
        self.members = [Member(d, name, LevelAcceptance(prior=prior)) for d, name in zip(drafters, names)]
        self.name = "mixture(" + ",".join(names) + ")"
        self.tree = DraftTree.empty()
        self.sources: list[set[int]] = []  # merged node -> the members that proposed it

    def check_target(self, target) -> None:
        for member in self.members:
            check_target = optional_part(member.drafter, "check_target")
            if check_target is not None:
                check_target(target)

    def set_passages(self, passages: Sequence[Sequence[int]]) -> None:
        """Hand retrieved passages (token ids) to the members that copy from them."""
        for member in self.members:
            set_passages = optional_part(member.drafter, "set_passages")
            if set_passages is not None:
                set_passages(passages)

    def read_target_cache(self, cache) -> None:
        """Hand the target's cache to the members that draft from it (a SelfDrafter)."""
        for member in self.members:
            read_target_cache = optional_part(member.drafter, "read_target_cache")
            if read_target_cache is not None:
                read_target_cache(cache)

    def read_images(self, images) -> None:
        """Hand an image prompt's encoding (None: a text prompt) to the members that look at images."""
        for member in self.members:
            read_images = optional_part(member.drafter, "read_images")
            if read_images is not None:
                read_images(images)

    def begin(self, prompt_ids, *, sampling=GREEDY, generator=None) -> None:
        super().begin(prompt_ids, sampling=sampling, generator=generator)
        for member in self.members:
            member.drafter.begin(prompt_ids, sampling=sampling, generator=generator)
            member.acceptance = LevelAcceptance(prior=self.prior)
            member.tree, member.drafted, member.accepted, member.skipped = DraftTree.empty(), 0, 0, 0
        self.tree, self.sources = DraftTree.empty(), []

    def propose(self, context_ids: Sequence[int], budget: int) -> DraftTree:
        alphas = [min(m.acceptance.alpha, 1 - 1e-6) for m in self.members]
        order = sorted(range(len(self.members)), key=lambda i: -alphas[i])  # stable: list order breaks ties
        scores: list[float] = []  # of the nodes proposed so far, any order
        for i in order:
            member = self.members[i]
            member.tree = DraftTree.empty()
            if not makes_the_cut(scores, budget, node_score(alphas[i], 0)):
                member.skipped += 1
                continue
            member.tree = member.drafter.propose(context_ids, budget)
            scores += [node_score(alphas[i], depth) for depth in member.tree.depths.tolist()]
        # Merge in that order (the likeliest member's nodes first), then keep the `budget` best nodes.
        merged, located = DraftTree.merge_located([self.members[i].tree for i in order])  # located[r][j]: node
        node_scores = [0.0] * len(merged)
        for rank, i in enumerate(order):
            for node, depth in zip(located[rank], self.members[i].tree.depths.tolist()):
                node_scores[node] = max(node_scores[node], node_score(alphas[i], depth))
        best = best_nodes(node_scores, budget)
        self.tree = merged.subset(best)
        kept = {old: new for new, old in enumerate(sorted(best))}
        self.sources = [set() for _ in range(len(self.tree))]
        for rank, i in enumerate(order):
            for node in located[rank]:
                if node in kept:
                    self.sources[kept[node]].add(i)
                    self.members[i].drafted += 1
        return self.tree

    def accept(self, token_ids: Sequence[int]) -> None:
        for node in self.tree.matched_path(token_ids[:-1]):  # the last committed token is the target's own
            for source in self.sources[node]:
                self.members[source].accepted += 1
        for member in self.members:  # each member's own tree, verified or not
            tree = member.tree
            matched = tree.matched_depth(token_ids)  # the target's own last token counts: it is the truth too
            member.acceptance.step(matched, missed=matched < min(tree.depth, len(token_ids)))  # beyond: unknown
            member.tree = DraftTree.empty()  # consumed (a step without a draft counts nothing)
            member.drafter.accept(token_ids)
        self.tree, self.sources = DraftTree.empty(), []

    def report(self) -> dict:
        """Per member: tokens it put into the merged tree, tokens accepted, steps it was not run, and its
        final acceptance-per-level estimate."""
        return {member.name: member.report() for member in self.members}


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    result = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        result.append(name if names.count(name) == 1 else f"{name}#{seen[name]}")
    return result
