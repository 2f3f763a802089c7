"""How often a windowed drafter agrees with the target, by what the window keeps of a long prompt.

For each question the target decodes greedily (the truth); the drafter then reads each view of the prompt
followed by the truth in one forward (teacher forcing), and the script reports the share of truth tokens
that are the drafter's own greedy choice (agreement) and the mean run of agreed tokens from each position,
capped at 8 (what a chain could get accepted). Views: the window (2048 tokens) with each head of `--heads`
(16: StreamingLLM's sinks; 1024: half, the default) and the rest from the prompt's end; and the whole prompt.

    python scripts/window_agreement.py -q ~/.cache/specdecode/bench/long_summarization.jsonl \\
        -m qwen2.5-coder-1.5b-instruct --drafter qwen2.5-coder-0.5b-instruct \\
        --categories long_summarization_4k,long_summarization_8k --heads 16,128,256,1024
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from specdecode import SpeculativeGenerator
from specdecode.bench.questions import read_questions, select_questions
from specdecode.bench.runner import encoded_turn
from specdecode.drafters.prompt_window import DEFAULT_CONTEXT_WINDOW, SINKS, PromptWindow
from specdecode.models.load import load_model

RUN_CAP = 8


def agreement(drafter, view: list[int], truth: list[int]) -> tuple[float, float]:
    """(share of truth tokens the drafter picks, mean capped run of picked tokens from each position)."""
    ids = torch.tensor([view + truth[:-1]])  # [1, view + truth - 1]
    with torch.inference_mode():
        logits = drafter(ids, logits_to_keep=len(truth)).logits[0]  # [truth, vocab]
    agreed = (logits.argmax(-1) == torch.tensor(truth)).tolist()
    runs = []
    for start in range(len(agreed)):
        run = 0
        while start + run < len(agreed) and agreed[start + run] and run < RUN_CAP:
            run += 1
        runs.append(run)
    return sum(agreed) / len(agreed), sum(runs) / len(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-q", "--questions", type=Path, required=True)
    parser.add_argument("-m", "--model", required=True)
    parser.add_argument("--drafter", required=True, help="a zoo name or folder, loaded in bf16 with batched attention")
    parser.add_argument("--categories", help="comma-separated categories (default: all)")
    parser.add_argument("--limit-per-category", type=int)
    parser.add_argument("--window", type=int, default=DEFAULT_CONTEXT_WINDOW)
    parser.add_argument("--heads", default=f"{SINKS},{DEFAULT_CONTEXT_WINDOW // 2}",
                        help="comma-separated head sizes (the window's first tokens) to compare")
    parser.add_argument("-n", "--max-new-tokens", type=int, default=128)
    args = parser.parse_args()
    questions = select_questions(read_questions(args.questions), args.categories and args.categories.split(","),
                                 args.limit_per_category)
    target = load_model(args.model)
    drafter = load_model(args.drafter, dtype="bf16", quantize=None, drafts_only=True).model
    views = {f"head {head}": PromptWindow(args.window, int(head)) for head in args.heads.split(",")}
    views["whole"] = None
    totals = {name: [0.0, 0.0] for name in views}
    for question in questions:
        prompt = encoded_turn(target, question, [{"role": "user", "content": question.turns[0]}])
        truth = list(SpeculativeGenerator(target).generate(prompt, args.max_new_tokens).token_ids)
        row = {name: agreement(drafter, list(w.view(prompt, w.tail_start(len(prompt))) if w else prompt), truth)
               for name, w in views.items()}
        for name, figures in row.items():
            totals[name] = [t + f / len(questions) for t, f in zip(totals[name], figures)]
        print(json.dumps({"question": question.key, "prompt_tokens": len(prompt),
                          **{name: [round(f, 3) for f in figures] for name, figures in row.items()}}), flush=True)
    for name, (agreed, run) in totals.items():
        print(f"{name}: agreement {agreed:.2f}, mean run {run:.2f} (mean over {len(questions)} questions)")


if __name__ == "__main__":
    main()
