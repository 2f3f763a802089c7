"""Side-by-side speed check for the core engine (the issue #2 acceptance run).

    python scripts/speed_check.py --target qwen2.5-coder-1.5b-instruct --drafter qwen2.5-coder-0.5b-instruct

One Spec-Bench question per category (coding, summarization, rag, translation, qa), first turn,
chat template, greedy, --max-new-tokens each. Methods run interleaved per question on the same
loaded models, after one untimed warm-up, and each call is timed from token ids in to token ids out:
  hf-plain     model.generate(do_sample=False)
  plain        our plain decoding (speculative=False)
  lookup       LookupDrafter
  model        ModelDrafter(drafter)
  hf-assisted  model.generate(assistant_model=drafter)
  hf-lookup    model.generate(prompt_lookup_num_tokens=10)
Speedup = the method's tokens/s / plain's tokens/s on the same question. "same" = token ids equal to
our plain decoding's; where not, the first differing position and plain's top-2 logit margin there.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from specdecode import SpeculativeGenerator, first_divergence, load_model
from specdecode.drafters import LookupDrafter, ModelDrafter

QUESTIONS = Path(__file__).resolve().parents[2] / "shared" / "data" / "spec_bench" / "question.jsonl"
CATEGORIES = ("coding", "summarization", "rag", "translation", "qa")


def first_questions(path: Path) -> list[dict]:
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [next(r for r in records if r["category"] == c) for c in CATEGORIES]


def hf_call(model, prompt_ids: list[int], max_new_tokens: int, **kwargs) -> list[int]:
    ids = torch.tensor([prompt_ids])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                         do_sample=False, **kwargs)
    return out[0, len(prompt_ids):].tolist()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", default="qwen2.5-coder-1.5b-instruct")
    parser.add_argument("--drafter", default="qwen2.5-coder-0.5b-instruct")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--drafter-dtype", default="fast-decode")
    parser.add_argument("--cpu-kernels", default="auto")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--methods", default="hf-plain,plain,lookup,model,hf-assisted,hf-lookup")
    parser.add_argument("--questions", type=Path, default=QUESTIONS)
    parser.add_argument("--out", type=Path, default=None, help="write the per-question results as JSON")
    args = parser.parse_args()

    target = load_model(args.target, dtype=args.dtype, cpu_kernels=args.cpu_kernels)
    methods = args.methods.split(",")
    draft = None
    if any(m in ("model", "hf-assisted") for m in methods):
        draft = load_model(args.drafter, dtype=args.drafter_dtype, cpu_kernels=args.cpu_kernels)
    plain_gen = SpeculativeGenerator(target)
    ours = {"plain": plain_gen, "lookup": SpeculativeGenerator(target, drafter=LookupDrafter())}
    if draft is not None:
        ours["model"] = SpeculativeGenerator(target, drafter=ModelDrafter(draft))
    n = args.max_new_tokens

    def run(method: str, prompt_ids: list[int]):
        """(token ids, seconds, our GenerationOutput or None)."""
        start = time.perf_counter()
        if method == "hf-plain":
            ids, out = hf_call(target.model, prompt_ids, n), None
        elif method == "hf-assisted":
            ids, out = hf_call(target.model, prompt_ids, n, assistant_model=draft.model), None
        elif method == "hf-lookup":
            ids, out = hf_call(target.model, prompt_ids, n, prompt_lookup_num_tokens=10), None
        else:
            out = ours[method].generate(prompt_ids, max_new_tokens=n, speculative=method != "plain")
            ids = out.token_ids
        return ids, time.perf_counter() - start, out

    questions = first_questions(args.questions)
    warm = plain_gen.generate([{"role": "user", "content": "Hello"}], max_new_tokens=4).prompt_ids
    for method in methods:
        run(method, warm)

    print(f"target {target.name} {target.dtype} kernel={target.linear_kernel}; drafter "
          f"{draft.name + ' ' + str(draft.dtype) if draft else '-'}; {torch.get_num_threads()} threads; "
          f"max_new_tokens {n}")
    results = []
    for q in questions:
        prompt_ids = plain_gen.generate([{"role": "user", "content": q["turns"][0]}], max_new_tokens=1).prompt_ids
        row = {}
        for method in methods:
            ids, seconds, out = run(method, prompt_ids)
            row[method] = {"ids": ids, "seconds": seconds, "out": out}
        plain = row["plain"]
        plain_tps = len(plain["ids"]) / plain["seconds"]
        for method in methods:
            r = row[method]
            tps = len(r["ids"]) / r["seconds"]
            tau = r["out"].stats.mean_accepted if r["out"] else float("nan")
            same = r["ids"] == plain["ids"]
            note = "" if same else first_divergence(plain["out"], r["ids"]).describe()
            print(f"{q['category']:>13} {method:>11}: {len(r['ids']):4d} tok {r['seconds']:7.1f} s "
                  f"{tps:6.2f} tok/s  speedup {tps / plain_tps:5.2f}x  tau {tau:5.2f}  same={same} {note}")
            results.append({"question_id": q["question_id"], "category": q["category"], "method": method,
                            "new_tokens": len(r["ids"]), "seconds": r["seconds"], "tokens_per_s": tps,
                            "speedup": tps / plain_tps, "tau": tau, "identical": same, "divergence": note})
    for method in methods:
        speedups = [r["speedup"] for r in results if r["method"] == method]
        print(f"mean speedup {method:>11}: {sum(speedups) / len(speedups):.2f}x")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
