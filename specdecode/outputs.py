"""What a generation returns: the text, the token ids, and statistics that explain the speed."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Step:
    """One propose -> verify -> accept -> commit step, as the draft policy and the stats see it."""

    drafted: int  # draft nodes verified
    depth: int  # the draft's depth (levels)
    accepted: int  # draft tokens accepted (the accepted path's length)
    recovered: bool  # the target's own token replaced a rejected draft (else it is a bonus token)
    rows: int  # rows of the verification forward: the pending token + the draft + padding
    draft_s: float  # seconds spent proposing (the draft policy's choice included)
    verify_s: float  # seconds from the proposal to the committed tokens


@dataclass
class Tally:
    """Running counts of one generation (filled by the engine's loop)."""

    steps: int = 0
    forward_rows: int = 0  # rows of the verification forwards (pending + draft + padding)
    drafted_tokens: int = 0
    accepted_tokens: int = 0
    recovered_tokens: int = 0  # steps whose own token replaced a rejected draft
    accept_histogram: list[int] = field(default_factory=list)  # [a] = steps that accepted a draft tokens
    prefill_s: float = 0.0
    reused_prompt_tokens: int = 0  # prompt tokens whose cache entries came from the previous prompt's prefill
    draft_s: float = 0.0
    verify_s: float = 0.0
    wall_s: float = 0.0

    def record(self, step: Step) -> None:
        self.steps += 1
        self.forward_rows += step.rows
        self.drafted_tokens += step.drafted
        self.accepted_tokens += step.accepted
        self.recovered_tokens += step.recovered
        self.draft_s += step.draft_s
        self.verify_s += step.verify_s
        if len(self.accept_histogram) <= step.accepted:
            self.accept_histogram.extend([0] * (step.accepted + 1 - len(self.accept_histogram)))
        self.accept_histogram[step.accepted] += 1


@dataclass(frozen=True)
class GenerationStats:
    new_tokens: int
    steps: int  # target verification forwards; each commits >= 1 token
    mean_accepted: float  # tau: new tokens per target forward = accepted draft tokens + the target's own
    acceptance_rate: float  # accepted draft tokens / drafted tokens (0 when nothing was drafted)
    drafted_tokens: int  # draft tokens verified
    accepted_tokens: int  # draft tokens accepted
    bonus_tokens: int  # the target's own tokens after a fully accepted path (or no draft)
    recovered_tokens: int  # the target's own tokens in place of a rejected draft token
    forward_rows: int  # rows of verification forwards: pending + draft + padding to a cheap size
    accept_histogram: tuple[int, ...]  # [a] = number of steps that accepted a draft tokens
    prefill_s: float
    draft_s: float
    verify_s: float
    wall_s: float  # prefill + every step (prompt tokenisation and text decoding excluded)
    tokens_per_s: float
    drafters: dict = field(default_factory=dict)  # per-drafter counts from Drafter.report() (e.g. a mixture's)
    cost_model: dict = field(default_factory=dict)  # the draft policy's inputs and choices (policy.DraftSizer)
    reused_prompt_tokens: int = 0  # prompt tokens not prefilled: the previous prompt's cache held them

    @property
    def decode_s(self) -> float:
        """Seconds after the prefill: the decoding phase, which is what drafting speeds up."""
        return self.wall_s - self.prefill_s

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
            bonus_tokens=new_tokens - tally.accepted_tokens - tally.recovered_tokens,
            recovered_tokens=tally.recovered_tokens,
            forward_rows=tally.forward_rows,
            accept_histogram=tuple(tally.accept_histogram),
            prefill_s=tally.prefill_s,
            draft_s=tally.draft_s,
            verify_s=tally.verify_s,
            wall_s=tally.wall_s,
            tokens_per_s=new_tokens / tally.wall_s if tally.wall_s > 0 else 0.0,
            drafters=drafters or {},
            cost_model=cost_model or {},
            reused_prompt_tokens=tally.reused_prompt_tokens,
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
