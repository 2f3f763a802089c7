"""The cost-aware MixtureDrafter against the same mixture with scores alone, side by side in one bench run.

    python scripts/mixture_ab.py OUT                 # dev subset: rag + summarization, 2 questions each
    python scripts/mixture_ab.py OUT pydoc           # docs/benchmarks/pydoc-questions.jsonl over the python-docs store

Methods, interleaved per question on one loaded target (qwen2.5-coder-1.5b-instruct, dtype auto):
plain, lookup, `retrieval+model:qwen2.5-coder-0.5b-instruct` (the default, cost-aware mixture) and
`model:qwen2.5-coder-0.5b-instruct+retrieval`, which this script makes the same mixture [retrieval, model]
with cost_aware=False (scores alone decide, as before the cost-aware rule): read that row's name as
"retrieval+model, scores only".
"""

from __future__ import annotations

import sys
from pathlib import Path

import specdecode.bench.methods as methods_module
from specdecode.bench.runner import BenchConfig, run_benchmark
from specdecode.drafters import MixtureDrafter
from specdecode.drafters.registry import make_drafter

DRAFT = "qwen2.5-coder-0.5b-instruct"
SCORES_ONLY = f"model:{DRAFT}+retrieval"


def make_drafter_with_scores_only_twin(name, target, options, load_draft=None):
    if name == SCORES_ONLY:
        parts = [make_drafter(part, target, options, load_draft) for part in ("retrieval", f"model:{DRAFT}")]
        return MixtureDrafter(parts, cost_aware=False)
    return make_drafter(name, target, options, load_draft)


def main() -> None:
    out, corpus = Path(sys.argv[1]), (sys.argv[2] if len(sys.argv) > 2 else "dev")
    if corpus == "pydoc":
        questions = dict(questions=Path("docs/benchmarks/pydoc-questions.jsonl"),
                         store=Path.home() / ".cache/specdecode/stores/python-docs")
    else:
        questions = dict(questions=Path("../shared/data/spec_bench/question.jsonl"),
                         categories=("rag", "summarization"), limit_per_category=2)
    methods_module.make_drafter = make_drafter_with_scores_only_twin
    config = BenchConfig(model="qwen2.5-coder-1.5b-instruct", out=out,
                         methods=f"plain,lookup,retrieval+model:{DRAFT},{SCORES_ONLY}", **questions)
    run_benchmark(config)
    print((out / "report.md").read_text())


if __name__ == "__main__":
    main()
