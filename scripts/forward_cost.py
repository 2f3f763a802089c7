"""Forward cost vs tokens fed, after a fixed context: the curve that decides what a draft may cost.

    python scripts/forward_cost.py qwen2.5-coder-1.5b-instruct --dtype fp32 --cpu-kernels auto

Prints the median milliseconds of one forward of q tokens (q = 1, 2, 4, ...) after `--context`
tokens, rounds interleaved over q so machine drift hits every q alike, and the ratio to q = 1.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from specdecode import load_model
from specdecode.attention import SDPABackend
from specdecode.cache import KVCache


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--cpu-kernels", default="auto")
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--sizes", default="1,2,4,8,16,32")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    loaded = load_model(args.model, dtype=args.dtype, cpu_kernels=args.cpu_kernels)
    sizes = [int(s) for s in args.sizes.split(",")]
    backend, model = SDPABackend(), loaded.model
    generator = torch.Generator().manual_seed(0)
    times: dict[int, list[float]] = {q: [] for q in sizes}
    with torch.inference_mode():
        cache = KVCache(model)
        context = torch.randint(0, 1000, (args.context,), generator=generator)
        backend.forward(model, cache, context, torch.arange(args.context), logits_to_keep=1)
        for round_ in range(args.rounds + 1):
            for q in sizes:
                ids = torch.randint(0, 1000, (q,), generator=generator)
                start = time.perf_counter()
                backend.forward(model, cache, ids, torch.arange(args.context, args.context + q))
                if round_:  # round 0 warms up
                    times[q].append(time.perf_counter() - start)
                cache.crop(args.context)
    base = statistics.median(times[sizes[0]])
    print(f"{loaded.name} {loaded.dtype} linear_kernel={loaded.linear_kernel} threads={torch.get_num_threads()}")
    print(" | ".join(f"q={q}: {statistics.median(times[q]) * 1000:.0f} ms ({statistics.median(times[q]) / base:.2f}x)"
                     for q in sizes))


if __name__ == "__main__":
    main()
