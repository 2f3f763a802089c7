"""The MixtureDrafter against a twin with one of its rules changed, side by side in one bench run.

    python scripts/mixture_ab.py OUT                        # dev subset: rag + summarization, 2 questions each
    python scripts/mixture_ab.py OUT pydoc                  # docs/benchmarks/pydoc-questions.jsonl, python-docs store
    python scripts/mixture_ab.py OUT w8a8 --twin probes     # w8a8 target, dev subset (2 per category), llama.cpp too

Methods, interleaved per question on one loaded target (qwen2.5-coder-1.5b-instruct; dtype auto, or w8a8):
plain, lookup, `CHEAP+model:qwen2.5-coder-0.5b-instruct` (the default mixture; CHEAP = retrieval over a
store, lookup otherwise) and `model:qwen2.5-coder-0.5b-instruct+CHEAP`, which this script makes the same
mixture [CHEAP, model] with one rule changed: `--twin scores-only` (cost_aware=False: scores alone decide, as
before the cost-aware rule) or `--twin probes` (probe_gap=8: a drafter skipped for cost is tried again now
and then; the default mixture never does). Read that row's name as "CHEAP+model, <twin>". The w8a8 run adds llama.cpp's plain decoding.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import specdecode.bench.methods as methods_module
from specdecode.bench.runner import BenchConfig, run_benchmark
from specdecode.drafters import MixtureDrafter
from specdecode.drafters.registry import make_drafter

DRAFT = "qwen2.5-coder-0.5b-instruct"
TWINS = {"scores-only": {"cost_aware": False}, "probes": {"probe_gap": 8}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("corpus", nargs="?", default="dev", choices=("dev", "pydoc", "w8a8"))
    parser.add_argument("--twin", default="scores-only", choices=sorted(TWINS))
    args = parser.parse_args()
    dev = dict(questions=Path("../shared/data/spec_bench/question.jsonl"), limit_per_category=2)
    if args.corpus == "pydoc":
        questions = dict(questions=Path("docs/benchmarks/pydoc-questions.jsonl"),
                         store=Path.home() / ".cache/specdecode/stores/python-docs")
    elif args.corpus == "w8a8":
        questions = dict(dev, quantize="w8a8")
    else:
        questions = dict(dev, categories=("rag", "summarization"))
    cheap = "lookup" if args.corpus == "w8a8" else "retrieval"
    twin = f"model:{DRAFT}+{cheap}"

    def make_drafter_with_twin(name, target, options, load_draft=None):
        if name == twin:
            parts = [make_drafter(part, target, options, load_draft) for part in (cheap, f"model:{DRAFT}")]
            return MixtureDrafter(parts, **TWINS[args.twin])
        return make_drafter(name, target, options, load_draft)

    methods_module.make_drafter = make_drafter_with_twin
    peers = ",llama-cpp" if args.corpus == "w8a8" else ""
    config = BenchConfig(model="qwen2.5-coder-1.5b-instruct", out=args.out,
                         methods=f"plain,lookup,{cheap}+model:{DRAFT},{twin}{peers}", **questions)
    run_benchmark(config)
    print((args.out / "report.md").read_text())


if __name__ == "__main__":
    main()
