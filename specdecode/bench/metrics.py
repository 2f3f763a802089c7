"""Benchmark arithmetic (pure functions of results records, Spec-Bench's definitions).

Per question: tokens/s = new tokens / wall seconds, both summed over its turns.
speedup = mean over questions of a method's tokens/s / the same mean for `plain` (only questions
both have finished); median_speedup = the median over those questions of the per-question ratio.
tau = new tokens / target forwards that produced them (1.00 for plain decoding, bonus included).
decode_speedup: the speedup of the tokens/s after the prompt's prefill (new tokens / (wall - prefill)),
where both methods measured their prefill (ours; HF's: its first forwards, methods.FirstForwards); the
prefill is the same forward for plain and speculative decoding, so it bounds the end-to-end speedup
(prefill_share: its share of the method's wall).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

OVERALL = "overall"


@dataclass(frozen=True)
class MethodSummary:
    method: str
    questions: int
    new_tokens: int
    wall_s: float
    tokens_per_s: float  # mean over questions
    speedup: float | None  # None when plain has not run on these questions
    median_speedup: float | None
    tau: float | None  # None when the method's target forwards are not counted
    identical: float | None  # fraction of questions whose token ids equal plain's
    accept_histogram: tuple[int, ...] | None  # summed over questions (ours only)
    drafters: dict | None = None  # a mixture's {drafter: {"drafted", "accepted"}} summed over questions
    decode_speedup: float | None = None  # the speedup after the prefill (None: a prefill not measured)
    prefill_share: float | None = None  # prefill seconds / wall seconds, summed over questions


def tokens_per_s(record: dict) -> float:
    return record["new_tokens"] / record["wall_s"] if record["wall_s"] > 0 else 0.0


def decode_tokens_per_s(record: dict) -> float:
    decode_s = record["wall_s"] - record["prefill_s"]
    return record["new_tokens"] / decode_s if decode_s > 0 else 0.0


def _mean_ratio(paired: list[tuple[dict, dict]], rate) -> float | None:
    plain_mean = statistics.fmean(rate(p) for _, p in paired)
    return statistics.fmean(rate(r) for r, _ in paired) / plain_mean if plain_mean > 0 else None


def summarize_method(method: str, records: Sequence[dict], plain: dict[str, dict]) -> MethodSummary:
    """One method's records (any questions) against `plain` records by question id."""
    rates = [tokens_per_s(r) for r in records]
    paired = [(r, plain[r["question_id"]]) for r in records if r["question_id"] in plain]
    speedup = median = decode_speedup = None
    if paired:
        speedup = _mean_ratio(paired, tokens_per_s)
        ratios = [tokens_per_s(r) / tokens_per_s(p) for r, p in paired if tokens_per_s(p) > 0]
        median = statistics.median(ratios) if ratios else None
        if all(r.get("prefill_s") is not None and p.get("prefill_s") is not None for r, p in paired):
            decode_speedup = _mean_ratio(paired, decode_tokens_per_s)
    measured = [r for r in records if r.get("prefill_s") is not None]
    wall = sum(r["wall_s"] for r in measured)
    prefill_share = sum(r["prefill_s"] for r in measured) / wall if measured and wall > 0 else None
    counted = [r for r in records if r.get("target_forwards")]
    tau = (sum(r["new_tokens"] for r in counted) / sum(r["target_forwards"] for r in counted)) if counted else None
    flags = [r["identical"] for r in records if r.get("identical") is not None]
    return MethodSummary(
        method=method,
        questions=len(records),
        new_tokens=sum(r["new_tokens"] for r in records),
        wall_s=sum(r["wall_s"] for r in records),
        tokens_per_s=statistics.fmean(rates) if rates else 0.0,
        speedup=speedup,
        median_speedup=median,
        tau=tau,
        identical=sum(flags) / len(flags) if flags else None,
        accept_histogram=add_histograms(r.get("accept_histogram") for r in records),
        drafters=add_drafter_counts(r.get("drafters") for r in records),
        decode_speedup=decode_speedup,
        prefill_share=prefill_share,
    )


def summarize(records: Iterable[dict], methods: Sequence[str]) -> dict[str, list[MethodSummary]]:
    """{category or OVERALL: [summary per method, in `methods` order]} (categories in first-seen order)."""
    records = list(records)
    categories = list(dict.fromkeys(r["category"] for r in records))
    table = {}
    for category in [OVERALL, *categories]:
        chosen = [r for r in records if category in (OVERALL, r["category"])]
        plain = {r["question_id"]: r for r in chosen if r["method"] == "plain"}
        rows = [summarize_method(m, [r for r in chosen if r["method"] == m], plain) for m in methods]
        table[category] = [row for row in rows if row.questions]
    return table


def add_histograms(histograms: Iterable[Sequence[int] | None]) -> tuple[int, ...] | None:
    total: list[int] = []
    seen = False
    for histogram in histograms:
        if histogram is None:
            continue
        seen = True
        total.extend([0] * (len(histogram) - len(total)))
        for i, count in enumerate(histogram):
            total[i] += count
    return tuple(total) if seen else None


def add_drafter_counts(reports: Iterable[dict | None]) -> dict | None:
    """Per-drafter reports ({name: {"drafted": n, "accepted": n, ...}}) -> the counts summed (a mixture's
    steps without a drafter too). A single drafter's own statistics (not per-member counts) are left out."""
    keys = ("drafted", "accepted", "skipped_steps")
    total: dict[str, dict[str, int]] = {}
    for report in reports:
        for name, counts in (report or {}).items():
            if not isinstance(counts, dict):
                continue
            entry = total.setdefault(name, dict.fromkeys(keys, 0))
            for key in keys:
                entry[key] += int(counts.get(key) or 0)
    return total or None
