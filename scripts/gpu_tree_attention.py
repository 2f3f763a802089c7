"""A verification's cost on a CUDA GPU against context length and tree size, per tree-attention backend:
"sdpa" (one SDPA call per layer under the tree's mask, query heads stacked per key/value head), "flash"
(the cached prefix through FlashAttention's kernel, the tree under its mask, merged by log-sum-exp), "auto"
(per step the faster of the two by one layer's measured attention, whose table is printed first) and
"graphs" (static steps over preallocated buffers, recorded as CUDA graphs; the first round captures). A
random-weight model of Qwen2.5-1.5B's shape (or --shape 0.5b; --shape tiny: a dry run on a CPU) in bf16; no
weights travel.

    python scripts/gpu_tree_attention.py --contexts 1024,8192,32768 --nodes 16,64

Prints per context and backend the forward's median milliseconds for 1 token and for each tree size (a chain
mask: every token sees the prefix and its ancestors), and each tree's cost relative to a one-token step.
"""

from __future__ import annotations

import argparse

import torch

from gpu_check import random_model

from specdecode.runtime.calibrate import measure_forward_costs
from specdecode.runtime.runner import select_backend


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--contexts", default="1024,8192,32768")
    parser.add_argument("--nodes", default="16,64")
    parser.add_argument("--shape", default="1.5b")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    nodes = [int(n) for n in args.nodes.split(",")]
    tiny = args.shape == "tiny"  # a dry run of this script on a CPU
    print("CPU dry run" if tiny else torch.cuda.get_device_name(0), "torch", torch.__version__, "bf16", args.shape)
    target = random_model(args.shape, 0, torch.bfloat16, "cpu" if tiny else "cuda")
    auto = select_backend("auto")
    auto.prepare(target.model)
    split_costs = auto.split_costs_of(target.model)
    print("one layer's attention, ms, masked / split:\n"
          + (split_costs.table_markdown() if split_costs else "not measured (a CPU)"))
    print(f"{'context':>8} {'backend':>7} {'1 token':>8} " + " ".join(f"{n:>6} nodes (x)" for n in nodes))
    for context in (int(c) for c in args.contexts.split(",")):
        for backend in ("sdpa", "flash", "auto", "graphs"):
            costs = measure_forward_costs(target.model, select_backend(backend), sizes=(1, *[n + 1 for n in nodes]),
                                          context=context, rounds=args.rounds)
            one = costs.raw(1)
            cells = " ".join(f"{costs.raw(n + 1) * 1000:7.2f} ({costs.raw(n + 1) / one:4.2f})" for n in nodes)
            print(f"{context:8d} {backend:>7} {one * 1000:8.2f} {cells}", flush=True)


if __name__ == "__main__":
    main()
