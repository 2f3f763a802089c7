"""A same-run A/B of draft-policy settings (policy.SizerSettings) or drafter options (registry.DrafterOptions,
e.g. context_head): for each question, each drafter decodes with setting A then B on one loaded target;
decode-phase tokens/s (after the prefill) are summed per side; tokens must be identical.

    python scripts/sizer_ab.py -q captioning/question.jsonl -m stand-in:qwen2.5-coder-1.5b-instruct \
        --drafters self:full:w8a8,model:qwen2.5-coder-0.5b-instruct+lookup --b prior=0.7
    python scripts/sizer_ab.py -q ../shared/data/spec_bench/question.jsonl -m qwen2.5-coder-1.5b-instruct \
        --drafters model:qwen2.5-coder-0.5b-instruct --limit-per-category 1 --a node_prices=0 --b node_prices=1
    python scripts/sizer_ab.py -q ~/.cache/specdecode/bench/long_summarization.jsonl -m qwen2.5-coder-1.5b-instruct \
        --drafters model:qwen2.5-coder-0.5b-instruct --categories long_summarization_8k --a context_head=16
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from specdecode import SpeculativeGenerator
from specdecode.bench.methods import DraftModels
from specdecode.bench.questions import read_questions, select_questions
from specdecode.bench.runner import encoded_turn, loader_for
from specdecode.drafters.registry import DrafterOptions, make_drafter
from specdecode.models.load import draft_quantization, load_model, resolve_device
from specdecode.policy import SizerSettings


def settings(text: str) -> tuple[SizerSettings, DrafterOptions]:
    """"name=value,..." -> (SizerSettings, DrafterOptions), each name a field of one of them (empty: defaults)."""
    fields = {f.name: (SizerSettings, f.type) for f in dataclasses.fields(SizerSettings)}
    fields.update({f.name: (DrafterOptions, f.type) for f in dataclasses.fields(DrafterOptions)
                   if f.type in ("int", "int | None")})
    changes = {SizerSettings: {}, DrafterOptions: {}}
    for item in filter(None, text.split(",")):
        name, _, value = item.partition("=")
        if name not in fields:
            raise SystemExit(f"error: {name!r} is no setting; use one of {', '.join(sorted(fields))}.")
        owner, kind = fields[name]
        if kind == "bool" and value not in ("0", "1"):
            raise SystemExit(f"error: {name} is on or off: write {name}=1 or {name}=0, not {value!r}.")
        changes[owner][name] = value == "1" if kind == "bool" else float(value) if kind == "float" else int(value)
    return SizerSettings(**changes[SizerSettings]), DrafterOptions(**changes[DrafterOptions])


POLICY_FIGURES = ("mean_budget", "steps_without_draft", "draft_ms_per_node", "acceptance_per_level")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-q", "--questions", type=Path, required=True)
    parser.add_argument("-m", "--model", required=True)
    parser.add_argument("--drafters", required=True, help="comma-separated drafter names")
    parser.add_argument("--a", default="", help="setting A as name=value,... (B: --b)")
    parser.add_argument("--b", default="")
    parser.add_argument("--categories", help="comma-separated categories (default: all)")
    parser.add_argument("--limit-per-category", type=int)
    parser.add_argument("-n", "--max-new-tokens", type=int, default=128)
    args = parser.parse_args()
    categories = args.categories.split(",") if args.categories else None
    questions = select_questions(read_questions(args.questions), categories, args.limit_per_category)
    target = loader_for(questions)(args.model)
    models = DraftModels("fast-decode", load_model, draft_quantization(resolve_device("auto")))
    sides = {"A": settings(args.a), "B": settings(args.b)}
    totals = {}
    for name in args.drafters.split(","):
        drafters = {options: make_drafter(name, target, options, models) for _, options in sides.values()}  # one
        # per distinct options: sides that differ only in policy share it (a self-draft's twin is built once)
        gens = {side: SpeculativeGenerator(target, drafters[options], draft_policy=sizer)
                for side, (sizer, options) in sides.items()}
        first = questions[0]  # warm-up, untimed: a short text prompt unless the questions show images
        warm_up = encoded_turn(target, first, [{"role": "user", "content": first.turns[0] if first.images else
                                                "Name three rivers."}])
        for gen in gens.values():
            gen.generate(warm_up, 16)
        for question in questions:
            prompt = encoded_turn(target, question, [{"role": "user", "content": question.turns[0]}])
            outs = {side: gen.generate(prompt, args.max_new_tokens) for side, gen in gens.items()}
            assert outs["A"].token_ids == outs["B"].token_ids, f"{name}, question {question.key}: tokens differ"
            for side, out in outs.items():
                tokens, seconds = totals.get((name, side), (0, 0.0))
                totals[name, side] = (tokens + len(out.token_ids), seconds + out.stats.decode_s)
            print(json.dumps({"drafter": name, "question": question.key,
                              **{side: round(len(o.token_ids) / o.stats.decode_s, 3) for side, o in outs.items()},
                              **{f"{side} policy": {k: o.stats.cost_model.get(k) for k in POLICY_FIGURES}
                                 for side, o in outs.items()}}))
    for name in args.drafters.split(","):
        a, b = (totals[name, side][0] / totals[name, side][1] for side in "AB")
        print(f"{name}: decode A {a:.3f} tok/s, B {b:.3f} tok/s, B/A {b / a:.3f}")


if __name__ == "__main__":
    main()
