"""The side-by-side loop of the A/B scripts (target_grouped_ab.py, target_kernels_ab.py): every variant's
plain and speculative decoding of each question's first turn, the variants' order rotating per question; the
decode phase's tokens/s (after the prefill) and whether each run's tokens equal the question's first run's;
and the options they share."""
import argparse
import statistics
from collections.abc import Callable
from pathlib import Path

from specdecode.bench.questions import read_questions, select_questions

from specdecode.engine import SpeculativeGenerator


def ab_parser(questions: str, categories: str | None, limit: int, drafter: str) -> argparse.ArgumentParser:
    """A parser with the options every A/B script takes (their defaults given): --questions (a Spec-Bench
    format file), --categories (or --category; comma-separated, none: all), --limit (questions per category),
    --drafter (a drafter spec), --max-new-tokens."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--questions", default=questions)
    parser.add_argument("--categories", "--category", default=categories)
    parser.add_argument("--limit", type=int, default=limit, help="questions per category")
    parser.add_argument("--drafter", default=drafter)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    return parser


def chosen_questions(args: argparse.Namespace) -> list:
    """The questions an A/B script's parsed options select."""
    categories = args.categories.split(",") if args.categories else None
    return select_questions(read_questions(Path(args.questions).expanduser()), categories, args.limit)


def interleaved_runs(generators: dict[str, SpeculativeGenerator], questions, max_new_tokens: int,
                     before: Callable[[str], None] = lambda variant: None) -> dict[tuple[str, bool], list[float]]:
    """Decode-phase tokens/s per (variant, speculative), one entry per question; `before(variant)` runs before
    each of that variant's runs (e.g. to switch the model's attention). Prints a line per run and a summary."""
    variants = list(generators)
    rates: dict[tuple[str, bool], list[float]] = {}
    identical = 0
    for number, question in enumerate(questions):
        reference = None
        for variant in variants[number % len(variants):] + variants[:number % len(variants)]:
            before(variant)
            for speculative in (False, True):
                out = generators[variant].generate([{"role": "user", "content": question.turns[0]}],
                                                   max_new_tokens=max_new_tokens, speculative=speculative)
                stats = out.stats
                rate = stats.new_tokens / (stats.wall_s - stats.prefill_s)
                rates.setdefault((variant, speculative), []).append(rate)
                reference = reference or out.token_ids
                identical += out.token_ids == reference
                print(f"{question.question_id} {question.category:14s} {variant:24s} "
                      f"{'speculative' if speculative else 'plain':11s} decode {rate:.3f} tok/s, prefill "
                      f"{stats.prefill_s:.1f} s, tau {stats.new_tokens / stats.steps:.2f}, "
                      f"identical {out.token_ids == reference}", flush=True)
    print(f"identical: {identical} of {2 * len(variants) * len(questions)} runs")
    for variant in variants:
        plain, spec = (statistics.mean(rates[(variant, s)]) for s in (False, True))
        print(f"{variant:24s} plain {plain:.3f} tok/s, speculative {spec:.3f} tok/s, "
              f"decode speedup {spec / plain:.2f}x")
    for variant in variants[1:]:
        for speculative in (False, True):
            ratios = [a / b for a, b in zip(rates[(variant, speculative)], rates[(variants[0], speculative)])]
            print(f"{variant} / {variants[0]}, {'speculative' if speculative else 'plain'}: mean of per-question "
                  f"ratios {statistics.mean(ratios):.3f}x (min {min(ratios):.3f}, max {max(ratios):.3f})")
    return rates
