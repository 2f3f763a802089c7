"""MixtureDrafter: several drafters propose at once; their trees are merged into one tree (shared
prefixes stored once) that the target verifies in one forward pass.

When the merged tree exceeds the step's budget, the nodes most likely to be accepted are kept. Each
drafter has an acceptance estimate `alpha` (its levels accepted vs rejected, checked against the
committed tokens whether or not its nodes made it into the merged tree, decayed per step and pulled
toward a prior); a node at depth d proposed by drafter i scores alpha_i^(d+1), a node several
drafters proposed the best of their scores, and the `budget` best nodes are kept (whole paths: a
node never scores above its parent). Drafters run in order of decreasing alpha (cheapest first when
costs decide, below), and a drafter whose best node (alpha_i) could not beat the `budget` nodes
already proposed is not run at all: a small model is spared on the steps where a copy from the
context is the better bet. Per drafter, the stats count the tokens it proposed into the merged tree
and the ones accepted, and the steps it was not run.

Cost-aware skipping (`cost_aware=True`, greedy decoding): the mixture also times each drafter's proposals
(per drafted level) and the target's verifications (the seconds from a proposal to the committed tokens),
and runs a drafter only when the step's expected tokens per second are higher with its draft than with the
drafts already in hand: (1 + E_with) / (verify(rows_with) + its seconds) > (1 + E_without) /
verify(rows_without), where verify(rows) follows the engine's measured forward costs (`set_verify_costs`; a
bigger tree costs more to verify: on a w8a8 target 4 rows cost ~1.3x one), scaled to the verifications timed
here (without a cost model: a line fitted to their seconds against the rows they fed), and E is the expected
accepted depth of the merged trees (a drafter's tree reaches level d with chance alpha^(d+1), however wide:
a wide tree of weak copies is worth little more than its best path). Its seconds are timed only on proposals
that follow one of its own (else they include catching up on the skipped tokens, which would make a skipped
drafter look ever costlier), and its depth is the depth it last drafted (not the engine's budget, which
shrinks while it is skipped); a drafter that did not run on the step before is also charged its catching up
on the tokens generated since it last ran (timed per token on its earlier catch-ups within a generation),
not on the prompt: feeding a generation's prompt is a one-time cost of using the drafter, which one step's
gain could never repay (charging it shut the model out of every generation after the first two). A skipped drafter's acceptance is not observed, so its estimate
drifts back to the prior, at which a costly drafter may never pay again (a new generation starts from the
prior too). With `probe_gap=N` (default None: never), after N steps skipped for cost in a row it runs once
anyway (a probe), and the gap doubles after each probe that does not win it back (up to `MAX_PROBE_GAP`), so
a drafter that never pays costs a few probes per generation and one that pays on this text is found. A probe
first feeds the drafter every token since it last ran (a model drafter skipped from a generation's start:
the whole prompt), so it waits until that catching up (timed per token on its earlier catch-ups) costs at
most `PROBE_SHARE` of the seconds since the drafter last ran: a summary's 1500-token prompt is not prefilled
into the 0.5B model to learn that copying wins again. Probes are off by default because they measured worse:
on a w8a8 target (dev subset, 2 questions per category, side by side) they found the 0.5B model where it
pays (math 1.43x vs 1.24x) but cost more elsewhere than they found (overall 1.17x vs 1.20x;
docs/benchmarks.md, "The lean decode forward ..."): once found, the rule runs the model on steps where it
expects a gain that the runs do not show (not from overlap with lookup's copies: capping the gain by the
levels the model was measured to add beyond them changed nothing). Under sampling the drafts must not depend
on timing (a seed gives the same tokens), so there only the scores decide.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..errors import SpecDecodeError
from ..sampling import GREEDY
from ..tree import DraftTree
from ..policy import LevelAcceptance
from .base import Drafter, drafter_name, optional_part

MAX_PROBE_GAP = 128
PROBE_SHARE = 0.25  # a probe's catching up may cost this share of the seconds since the drafter last ran


class MixtureDrafter(Drafter):
    """Merge the drafts of `drafters` into one tree of at most `budget` nodes, the likeliest first."""

    def __init__(self, drafters: Sequence[Drafter], *, prior: float = 0.5, cost_aware: bool = True,
                 probe_gap: int | None = None):
        drafters = list(drafters)
        if not drafters or not all(isinstance(d, Drafter) for d in drafters):
            raise SpecDecodeError("MixtureDrafter needs a non-empty list of drafters (Drafter instances).")
        if not 0 < prior < 1:
            raise SpecDecodeError(f"MixtureDrafter prior must be in (0, 1), got {prior}.")
        if probe_gap is not None and (isinstance(probe_gap, bool) or not isinstance(probe_gap, int) or probe_gap < 1):
            raise SpecDecodeError(f"MixtureDrafter probe_gap must be a whole number >= 1 (steps) or None (never "
                                  f"probe), got {probe_gap!r}.")
        self.drafters = drafters
        self.prior = prior
        self.cost_aware = cost_aware
        self.first_probe_gap = probe_gap
        # seconds, smoothed over steps and kept across generations (a property of the models and machine)
        self.level_s: list[float | None] = [None] * len(drafters)  # each drafter's seconds per drafted level
        self.catch_up_s: list[float | None] = [None] * len(drafters)  # ... per token fed to catch up after a skip
        self.verify = VerifyTimes()  # from a proposal to the committed tokens (the verification), by rows fed
        self.names = _unique([drafter_name(d) for d in drafters])
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
        self.cost_skipped = [0] * len(self.drafters)  # ... of which its draft was not worth its seconds
        self.probes = [0] * len(self.drafters)  # steps it ran although not worth it (to measure it again)
        self.probe_gap = [self.first_probe_gap] * len(self.drafters)  # None: never probe
        self.cost_skips_in_row = [0] * len(self.drafters)
        self.fed = [0] * len(self.drafters)  # the context length at each drafter's last proposal (0: none yet)
        self.prompt_length = 0
        self.last_run_at = [time.perf_counter()] * len(self.drafters)  # when it last proposed (or the start)
        self.ran = [False] * len(self.drafters)  # whether each drafter ran in the last step
        self.last_depth = [0] * len(self.drafters)  # the depth of each drafter's last own draft
        self.last_nodes = [0] * len(self.drafters)  # ... and its nodes
        self._proposed_at: float | None = None

    def check_target(self, target) -> None:
        for drafter in self.drafters:
            check_target = optional_part(drafter, "check_target")
            if check_target is not None:
                check_target(target)

    def set_verify_costs(self, costs: Callable[[int], float] | None) -> None:
        self.verify.curve = costs
        for drafter in self.drafters:
            set_verify_costs = optional_part(drafter, "set_verify_costs")
            if set_verify_costs is not None:
                set_verify_costs(costs)

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
        self.prompt_length = len(prompt_ids)

    def propose(self, context_ids: Sequence[int], budget: int) -> DraftTree:
        alphas = [min(a.alpha, 1 - 1e-6) for a in self.acceptance]
        scores: list[float] = []  # of the nodes proposed so far, any order
        order = sorted(range(len(self.drafters)), key=lambda i: -alphas[i])  # stable: list order breaks ties
        self.trees = [DraftTree.empty() for _ in self.drafters]
        ran = [False] * len(self.drafters)
        for i in self._run_order(order):
            if len(scores) >= budget and sorted(scores, reverse=True)[budget - 1] >= alphas[i]:
                self.skipped[i] += 1
                continue
            in_hand = [(alphas[j], self.trees[j].depth, len(self.trees[j])) for j, done in enumerate(ran) if done]
            if not self._runs(i, alphas[i], in_hand, budget, len(context_ids)):
                continue
            self.trees[i] = self._timed_propose(i, context_ids, budget)
            ran[i] = True
            self.last_depth[i], self.last_nodes[i] = self.trees[i].depth, len(self.trees[i])
            scores += [alphas[i] ** (depth + 1) for depth in self.trees[i].depths.tolist()]
        self.ran = ran
        self.prefill_s = sum(optional_part(self.drafters[i], "prefill_s", 0.0) for i, did in enumerate(ran) if did)
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
        self._proposed_at = time.perf_counter() if len(self.tree) else None
        return self.tree

    def _runs(self, i: int, alpha: float, in_hand: list[tuple[float, int, int]], budget: int, context: int) -> bool:
        """Whether drafter i runs this step: its draft pays, or it is time for a probe (and the probe's
        catching up costs at most PROBE_SHARE of the seconds since it last ran).

        The cost rule charges catching up on the tokens generated since the drafter last ran, not on the
        prompt: feeding the prompt is a one-time cost of using the drafter in this generation (as the
        target's prefill is), which one step's gain could never repay, so charging it to the first step
        shut a model drafter out of every generation once its catching up had been timed."""
        per_token = 0.0 if self.ran[i] else (self.catch_up_s[i] or 0.0)
        catch_up = per_token * (context - max(self.fed[i], self.prompt_length))
        if self._pays(i, alpha, in_hand, budget, catch_up):
            self.probe_gap[i], self.cost_skips_in_row[i] = self.first_probe_gap, 0
            return True
        gap = self.probe_gap[i]
        if gap is not None and self.cost_skips_in_row[i] >= gap and \
                per_token * (context - self.fed[i]) <= PROBE_SHARE * (time.perf_counter() - self.last_run_at[i]):
            self.probes[i] += 1  # its acceptance on this text is measured again
            self.probe_gap[i], self.cost_skips_in_row[i] = max(gap, min(2 * gap, MAX_PROBE_GAP)), 0
            return True
        self.skipped[i] += 1
        self.cost_skipped[i] += 1
        self.cost_skips_in_row[i] += 1
        return False

    def _timed_propose(self, i: int, context_ids: Sequence[int], budget: int) -> DraftTree:
        """Drafter i's proposal, timed: per drafted level when it ran on the step before (no catching up,
        nor prefill), else the catching up per token fed (beyond its levels' seconds) when it ran earlier in
        this generation (a first run also feeds the prompt, in one batch: not a catch-up)."""
        tick = time.perf_counter()
        tree = self.drafters[i].propose(context_ids, budget)
        seconds, fed = time.perf_counter() - tick, len(context_ids) - self.fed[i]  # fed: tokens it caught up on
        if self.ran[i] and tree.depth:  # a model drafts level by level
            self.level_s[i] = _smoothed(self.level_s[i], seconds / tree.depth)
        elif tree.depth and self.level_s[i] is not None and fed > 1 and self.fed[i] > 0:  # ran this generation
            self.catch_up_s[i] = _smoothed(self.catch_up_s[i], max(seconds - self.level_s[i] * tree.depth, 0.0) / fed)
        self.fed[i], self.last_run_at[i] = len(context_ids), time.perf_counter()
        return tree

    def _run_order(self, order: list[int]) -> list[int]:
        """Likeliest first; when costs decide, the cheapest first (a costly drafter is then weighed
        against what the cheap ones found)."""
        if not self._costs_decide():
            return order
        return sorted(order, key=lambda i: self.level_s[i] or 0.0)

    def _costs_decide(self) -> bool:
        return self.cost_aware and self.sampling.greedy and self.verify.count > 0

    def _pays(self, i: int, alpha: float, drafted: list[tuple[float, int, int]], budget: int,
              catch_up: float = 0.0) -> bool:
        """Whether drafter i's draft is worth its seconds this step (always, until both are timed).
        `drafted`: (alpha, depth, nodes) of the drafters already run. A drafter's tree reaches level d with
        probability alpha^(d+1) however wide it is (alpha is measured on its whole tree); several trees,
        taken as independent, reach it unless all miss. Drafter i would draft as deep and as many nodes as
        it last did (within the budget), at its seconds per level, plus `catch_up` seconds (feeding it the
        tokens committed since it last ran); the verification feeds 1 + the nodes."""
        per_level = self.level_s[i]
        if not self._costs_decide() or per_level is None:
            return True
        depth = min(budget, self.last_depth[i] or budget)
        rows_without = 1 + min(budget, sum(nodes for _, _, nodes in drafted))
        rows_with = 1 + min(budget, rows_without - 1 + (self.last_nodes[i] or depth))
        trees = [(a, d) for a, d, _ in drafted]
        without = _expected_levels(trees, budget)
        with_it = _expected_levels(trees + [(alpha, depth)], budget)
        # tokens per second, multiplied out
        return (1 + with_it) * self.verify.seconds(rows_without) > \
            (1 + without) * (self.verify.seconds(rows_with) + per_level * depth + catch_up)

    def accept(self, token_ids: Sequence[int]) -> None:
        if self._proposed_at is not None:
            self.verify.add(1 + len(self.tree), time.perf_counter() - self._proposed_at)
            self._proposed_at = None
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
        """Per drafter: tokens it proposed into the merged tree, tokens accepted, steps it was not run (of
        which for cost), steps it ran as a probe, its final acceptance-per-level estimate and its measured
        milliseconds per level."""
        return {name: {"drafted": d, "accepted": a, "acceptance_rate": a / d if d else 0.0, "skipped_steps": s,
                       "skipped_for_cost": c, "probes": p, "alpha": round(acc.alpha, 3),
                       "ms_per_level": None if t is None else round(t * 1000, 2)}
                for name, d, a, s, c, p, acc, t in zip(self.names, self.drafted, self.accepted, self.skipped,
                                                        self.cost_skipped, self.probes, self.acceptance,
                                                        self.level_s)}


def _expected_levels(trees: list[tuple[float, int]], most: int) -> float:
    """Expected accepted draft tokens of merged trees, each (alpha, depth): the sum over levels of the
    chance that some tree reaches the level."""
    expected = 0.0
    for level in range(min(most, max((depth for _, depth in trees), default=0))):
        all_miss = 1.0
        for alpha, depth in trees:
            if level < depth:
                all_miss *= 1 - alpha ** (level + 1)
        expected += 1 - all_miss
    return expected


@dataclass
class VerifyTimes:
    """Verification seconds against rows fed, from the verifications timed so far (older ones decayed by
    `decay` per verification). With `curve` (the target's measured forward seconds vs rows): the curve,
    scaled so that it matches the timed seconds on average (a forward after a longer context, plus the
    step's bookkeeping, costs more than the curve's). Without: a least-squares line, its slope never
    negative, and 0 until the rows have varied (then every size is predicted the mean)."""

    decay: float = 0.98
    curve: Callable[[int], float] | None = None
    count: int = 0
    weight: float = 0.0
    rows: float = 0.0  # decayed sums: of rows, seconds, rows^2, rows * seconds, curve(rows)
    seconds_sum: float = 0.0
    rows_sq: float = 0.0
    rows_seconds: float = 0.0
    curve_sum: float = 0.0

    def add(self, rows: int, seconds: float) -> None:
        self.count += 1
        self.weight = self.weight * self.decay + 1
        self.rows = self.rows * self.decay + rows
        self.seconds_sum = self.seconds_sum * self.decay + seconds
        self.rows_sq = self.rows_sq * self.decay + rows * rows
        self.rows_seconds = self.rows_seconds * self.decay + rows * seconds
        self.curve_sum = self.curve_sum * self.decay + (self.curve(rows) if self.curve is not None else 0.0)

    def seconds(self, rows: int) -> float:
        if self.curve is not None and self.curve_sum > 0:
            return self.seconds_sum / self.curve_sum * self.curve(rows)
        mean_rows, mean_seconds = self.rows / self.weight, self.seconds_sum / self.weight
        variance = self.rows_sq / self.weight - mean_rows ** 2
        slope = (self.rows_seconds / self.weight - mean_rows * mean_seconds) / variance if variance > 0.25 else 0.0
        return max(mean_seconds + max(slope, 0.0) * (rows - mean_rows), 1e-6)


def _smoothed(previous: float | None, seconds: float, weight: float = 0.3) -> float:
    return seconds if previous is None else (1 - weight) * previous + weight * seconds


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    result = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        result.append(name if names.count(name) == 1 else f"{name}#{seen[name]}")
    return result
