"""The draft policy: the draft size that maximises the expected tokens per second, from what one
target forward costs vs the tokens it is fed (ForwardCosts, measured once per model and machine by
runtime/calibrate.py) and the acceptance seen so far; and which members of a mixture run and which of
their nodes are verified. Pure: no clock of its own; the engine hands it the seconds it measured.

The rule (`DraftSizer`). A step feeds the pending token plus a draft of n nodes. If each draft level
is accepted, given its parent was, with probability `alpha` (the geometric model of Leviathan et
al.), a draft of depth d commits on average

    E(d) = 1 + alpha + ... + alpha^d = (1 - alpha^(d+1)) / (1 - alpha)   tokens,

and the step costs

    T(n) = verify(1 + n) + n * draft_per_node   seconds,

with verify(q) the measured forward cost (the cheapest measured at >= q rows, since a forward may be
padded) and draft_per_node the drafter's own measured seconds per drafted node. The budget is the
n in 0..max that maximises E(n / shape) / T(n), where shape = nodes per level of the drafter's recent
trees (1 for a chain). n = 0 is a plain step: where no draft pays (a drafter as slow as the target,
or one that is rarely right), none is made. alpha is estimated from the generation so far: accepted
and rejected levels, decayed by `decay` per step and pulled toward a prior, so after a run of
rejections the estimate drifts back up and drafting is retried.

Node prices (`NodePrices`). A drafter with probabilities knows more than alpha: its own top probability
at a node predicts whether the target agrees there (well calibrated for a same-family drafter:
docs/cost-model.md), so the chance that a node's path is accepted is about the product of the top
probabilities along it. Each step the sizer prices a node at the generation's decoding rate so far
(tokens per second): a node is worth verifying when that chance covers its verification row's seconds at
that rate, and worth drafting a child for when the chance of the child covers a drafter forward too. Such a
drafter drafts as deep as its confidence pays for (at most `budget`), instead of a depth sized from alpha.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from .outputs import Step
from .runtime.calibrate import ForwardCosts

__all__ = ["DraftSizer", "ForwardCosts", "LevelAcceptance", "NodePrices", "SizerSettings", "best_nodes",
           "makes_the_cut", "node_score"]


@dataclass
class LevelAcceptance:
    """How often a draft level is accepted given its parent was (alpha of the geometric model), from
    the levels accepted and the drafts cut short so far, decayed per step (so the estimate follows the
    text, and after a run of misses drifts back toward the prior, so drafting is retried) and pulled
    toward `prior`, worth `prior_weight` observed levels. The engine's cost model keeps one for the
    verified tree; a MixtureDrafter one per drafter."""

    prior: float = 0.5
    prior_weight: float = 2.0
    decay: float = 0.9
    accepted: float = 0.0
    rejected: float = 0.0

    @property
    def alpha(self) -> float:
        return (self.prior * self.prior_weight + self.accepted) / (self.prior_weight + self.accepted + self.rejected)

    def step(self, accepted: int = 0, missed: bool = False) -> None:
        """One step: older evidence decays; then `accepted` levels and, if a checked level was wrong, a miss."""
        self.accepted = self.accepted * self.decay + accepted
        self.rejected = self.rejected * self.decay + (1 if missed else 0)


@dataclass(frozen=True)
class SizerSettings:
    prior: float = 0.6  # acceptance per level assumed before any evidence
    prior_weight: float = 2.0  # ... worth this many observed levels
    decay: float = 0.9  # per step: older evidence counts less, so the estimate follows the text
    shape_decay: float = 0.8  # per draft: nodes-per-level estimate
    node_prices: bool = True  # drafters with probabilities price each node by them (NodePrices)


@dataclass(frozen=True)
class NodePrices:
    """What one more draft node must be worth this step, as the chance that the target accepts it (its
    path's acceptance probability), priced at the generation's decoding rate so far."""

    rate: float  # tokens per second of this generation's decoding so far (plain decoding's before any step)
    verify: ForwardCosts
    draft_per_node: float  # the drafter's seconds per drafted node

    def keep(self, nodes: int) -> float:
        """The least acceptance chance for which a node, after `nodes` others, pays its verification row."""
        return self.rate * (self.verify(2 + nodes) - self.verify(1 + nodes))

    def expand(self, nodes: int) -> float:
        """The least acceptance chance of a next node, after `nodes` others, for which drafting it (one
        drafter forward) and verifying it pay."""
        return self.rate * self.draft_per_node + self.keep(nodes)


@dataclass
class DraftSizer:
    """Chooses each step's draft budget from forward costs and the acceptance seen so far (one generation)."""

    verify: ForwardCosts
    settings: SizerSettings = SizerSettings()
    levels: LevelAcceptance = field(init=False)  # acceptance per level of the verified trees
    draft_seconds: float = 0.0  # drafting seconds over drafted nodes (a drafter feeds its prompt in begin)
    draft_nodes: float = 0.0
    shape: float = 1.0
    budgets: list[int] = field(default_factory=list)
    priced_steps: int = 0  # steps whose drafter was handed node prices (and the largest budget)
    decoded_tokens: int = 0  # committed by the steps observed
    decoded_seconds: float = 0.0  # ... in this many seconds (drafting and verifying)

    def __post_init__(self):
        self.levels = LevelAcceptance(self.settings.prior, self.settings.prior_weight, self.settings.decay)

    @property
    def alpha(self) -> float:
        return self.levels.alpha

    @property
    def draft_per_node(self) -> float:
        return self.draft_seconds / self.draft_nodes if self.draft_nodes else 0.0

    def expected_tokens(self, depth: float) -> float:
        alpha = min(self.alpha, 1 - 1e-9)
        return (1 - alpha ** (depth + 1)) / (1 - alpha)

    def step_seconds(self, nodes: int) -> float:
        return self.verify(1 + nodes) + nodes * self.draft_per_node

    def budget(self, most: int) -> int:
        """The draft size in 0..most with the most expected tokens per second (a drafter handed prices
        then drafts what they pay for, up to `most`, where this is > 0)."""
        best = max(range(most + 1), key=lambda n: (self.expected_tokens(n / self.shape) / self.step_seconds(n), -n))
        self.budgets.append(best)
        return best

    def prices(self) -> NodePrices:
        """This step's node prices, at the decoding rate so far (before any step: plain decoding's)."""
        rate = self.decoded_tokens / self.decoded_seconds if self.decoded_seconds > 0 else 1 / self.verify(1)
        self.priced_steps += 1
        return NodePrices(rate, self.verify, self.draft_per_node)

    def observe(self, step: Step) -> None:
        """After a step: the draft's node count and depth, the levels accepted, the seconds spent drafting."""
        self.decoded_tokens += step.accepted + 1
        self.decoded_seconds += step.draft_s + step.verify_s
        if step.drafted == 0:
            self.levels.step()
            return
        self.levels.step(step.accepted, missed=step.accepted < step.depth)
        decay = self.settings.shape_decay
        self.shape = decay * self.shape + (1 - decay) * (step.drafted / step.depth)
        self.draft_seconds += step.draft_s
        self.draft_nodes += step.drafted

    def report(self) -> dict:
        return {
            "verify_ms": self.verify.table_ms(),
            "draft_ms_per_node": round(self.draft_per_node * 1000, 3),
            "acceptance_per_level": round(self.alpha, 4),
            "mean_budget": round(sum(self.budgets) / len(self.budgets), 3) if self.budgets else 0.0,
            "steps_without_draft": sum(1 for b in self.budgets if b == 0),
            "priced_steps": self.priced_steps,
            "settings": asdict(self.settings),
        }


# ----------------------------------------------------------------------------- a mixture's choices
def node_score(alpha: float, depth: int) -> float:
    """The chance that a node at `depth` (0 = a root) is accepted, for a drafter whose levels are accepted
    with probability `alpha` each given their parent was: alpha^(depth + 1)."""
    return alpha ** (depth + 1)


def makes_the_cut(scores: Sequence[float], budget: int, best: float) -> bool:
    """Whether a drafter whose best node scores `best` could enter the `budget` best of the nodes already
    proposed (`scores`): a mixture runs a member only then."""
    return len(scores) < budget or sorted(scores, reverse=True)[budget - 1] < best


def best_nodes(scores: Sequence[float], budget: int) -> list[int]:
    """The `budget` nodes with the highest scores (ties: the earlier node), as indices. A node never scores
    above its parent, so the kept nodes are whole paths."""
    return sorted(range(len(scores)), key=lambda node: (-scores[node], node))[:budget]
