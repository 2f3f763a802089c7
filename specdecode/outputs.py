"""What a generation returns: the text, the token ids, and statistics that explain the speed."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Tally:
    """Running counts of one generation (filled by the engine's loop)."""

    steps: int = 0
    fed_tokens: int = 0  # tokens fed to verification forwards (pending + draft + padding)
    drafted_tokens: int = 0
    accepted_tokens: int = 0
    accept_histogram: list[int] = field(default_factory=list)  # [a] = steps that accepted a draft tokens
    prefill_s: float = 0.0
    draft_s: float = 0.0
    verify_s: float = 0.0
    wall_s: float = 0.0

    def record_step(self, drafted: int, accepted: int, fed: int) -> None:
        self.steps += 1
        self.fed_tokens += fed
        self.drafted_tokens += drafted
        self.accepted_tokens += accepted
        if len(self.accept_histogram) <= accepted:
            self.accept_histogram.extend([0] * (accepted + 1 - len(self.accept_histogram)))
        self.accept_histogram[accepted] += 1


@dataclass(frozen=True)
class GenerationStats:
    new_tokens: int
    steps: int  # target verification forwards; each commits >= 1 token
    mean_accepted: float  # tau: new tokens per verification forward, the target's own token included
    acceptance_rate: float  # accepted draft tokens / drafted tokens (0 when nothing was drafted)
    drafted_tokens: int
    accepted_tokens: int
    fed_tokens: int  # tokens fed to verification forwards: pending + draft + padding to a cheap size
    accept_histogram: tuple[int, ...]  # [a] = number of steps that accepted a draft tokens
    prefill_s: float
    draft_s: float
    verify_s: float
    wall_s: float  # prefill + every step (prompt tokenisation and text decoding excluded)
    tokens_per_s: float
    drafters: dict = field(default_factory=dict)  # per-drafter counts from Drafter.report() (e.g. a mixture's)
    cost_model: dict = field(default_factory=dict)  # the draft-size rule's inputs and choices (costs.DraftSizer)

    @classmethod
    def from_tally(cls, tally: Tally, new_tokens: int, drafters: dict | None = None,
                   cost_model: dict | None = None) -> GenerationStats:
        return cls(
            new_tokens=new_tokens,
            steps=tally.steps,
            mean_accepted=new_tokens / tally.steps if tally.steps else 0.0,
            acceptance_rate=tally.accepted_tokens / tally.drafted_tokens if tally.drafted_tokens else 0.0,
            drafted_tokens=tally.drafted_tokens,
            accepted_tokens=tally.accepted_tokens,
            fed_tokens=tally.fed_tokens,
            accept_histogram=tuple(tally.accept_histogram),
            prefill_s=tally.prefill_s,
            draft_s=tally.draft_s,
            verify_s=tally.verify_s,
            wall_s=tally.wall_s,
            tokens_per_s=new_tokens / tally.wall_s if tally.wall_s > 0 else 0.0,
            drafters=drafters or {},
            cost_model=cost_model or {},
        )


@dataclass(frozen=True)
class GenerationOutput:
    text: str  # generated text (special tokens skipped, cut before a stop string)
    token_ids: list[int]  # generated token ids (an end-of-sequence token included, as in transformers)
    prompt_ids: list[int]
    stop_reason: str  # "eos" | "stop_string" | "max_new_tokens"
    stats: GenerationStats
    top2_margins: list[float]  # greedy runs: target top-1 minus top-2 logit at each generated token


@dataclass(frozen=True)
class Divergence:
    """Where two generations of the same prompt first differ."""

    position: int  # index into the generated tokens
    reference_token: int | None  # None when the reference ended first
    other_token: int | None
    reference_margin: float | None  # the reference run's top-2 logit margin there (None if unknown)

    def describe(self) -> str:
        margin = "unknown" if self.reference_margin is None else f"{self.reference_margin:.4f}"
        return (
            f"outputs differ at generated token {self.position}: reference {self.reference_token}, "
            f"other {self.other_token}; the reference's top-2 logit margin there is {margin}"
        )


def first_divergence(reference: GenerationOutput, other: GenerationOutput | list[int]) -> Divergence | None:
    """None when the token ids are identical; else the first differing position and the reference's
    (normally plain decoding's) top-2 margin there: a margin near 0 is a floating-point near-tie,
    a clear margin (> 0.1) means a bug. `other` may be a GenerationOutput or generated token ids
    (e.g. from transformers' generate)."""
    ref = reference.token_ids
    oth = list(other.token_ids if isinstance(other, GenerationOutput) else other)
    if ref == oth:
        return None
    position = next((i for i, (a, b) in enumerate(zip(ref, oth)) if a != b), min(len(ref), len(oth)))
    margins = reference.top2_margins
    return Divergence(
        position=position,
        reference_token=ref[position] if position < len(ref) else None,
        other_token=oth[position] if position < len(oth) else None,
        reference_margin=margins[position] if position < len(margins) else None,
    )
