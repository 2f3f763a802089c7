"""How well a model drafter's top probability predicts acceptance, along a target's recorded greedy outputs.

For each recorded output (a replay truth file, `python -m specdecode.bench.replay` writes them), the drafter
reads the prompt as it would (its window, its pruned head) and then the target's output teacher-forced, in
one forward: at each output position, its top probability and whether its top token is the target's (which
is whether a chain node there is accepted, given its parents were). Prints acceptance per bin of top
probability, the figure behind policy.NodePrices (docs/cost-model.md).

    python scripts/draft_calibration.py --truth ~/.cache/specdecode/replays/spec_bench-question.jsonl \
        -m qwen2.5-coder-1.5b-instruct --drafter qwen2.5-coder-0.5b-instruct
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from specdecode.bench.replay import read_recordings
from specdecode.drafters import ModelDrafter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--truth", type=Path, required=True, help="a replay truth file (JSON lines)")
    parser.add_argument("-m", "--model", required=True, help="the target whose recordings to read")
    parser.add_argument("--drafter", required=True, help="the drafter model (a zoo name or folder)")
    parser.add_argument("--keys", default="", help="only recordings whose question key starts with this")
    parser.add_argument("-n", "--max-new-tokens", type=int, default=128)
    parser.add_argument("--bins", type=int, default=10)
    args = parser.parse_args()
    recordings = [r for key, r in read_recordings(args.truth, args.model, args.max_new_tokens).items()
                  if key.startswith(args.keys)]
    drafter = ModelDrafter(args.drafter)
    accepted, seen = torch.zeros(args.bins), torch.zeros(args.bins)
    with torch.inference_mode():
        for recording in recordings:
            drafter.begin(list(recording.prompt_ids))
            after_prompt = drafter.prompt_logits  # [vocab]
            logits = drafter._forward(list(recording.output_ids[:-1]), len(drafter.cached_ids))  # [n - 1, vocab]
            top = torch.cat([after_prompt[None], logits]).float().softmax(-1).max(-1)  # [n]
            right = (top.indices == torch.tensor(recording.output_ids)).float()  # [n]
            bins = (top.values * args.bins).long().clamp(max=args.bins - 1)  # [n]
            accepted.index_add_(0, bins, right)
            seen.index_add_(0, bins, torch.ones_like(right))
    print(f"{len(recordings)} recordings of {args.model}, drafter {args.drafter}: acceptance by top probability")
    for b in range(args.bins):
        rate = f"{float(accepted[b] / seen[b]):.3f}" if seen[b] else "-"
        print(f"  {b / args.bins:.1f}-{(b + 1) / args.bins:.1f}  {int(seen[b]):6d} nodes  accepted {rate}")


if __name__ == "__main__":
    main()
