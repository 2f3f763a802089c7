"""Forward cost vs tokens fed, after a fixed context: the curve that decides what a draft may cost.

    python scripts/forward_cost.py qwen2.5-coder-1.5b-instruct --dtype fp32 --cpu-kernels auto
    python scripts/forward_cost.py qwen2.5-coder-1.5b-instruct --variants none,fp16,w8a8,w8a8:sdpa --context 400
    python scripts/forward_cost.py qwen2.5-coder-1.5b-instruct --variants w8a8,w8a8-unfused --sizes 1,4 --context 400
    python scripts/forward_cost.py qwen2.5-coder-1.5b-instruct --variants w8a8,w8a8:own --sizes 1,4,16 --context 400

Prints the median milliseconds of one forward of q tokens (q = 1, 2, 4, ...) after `--context`
tokens, the ratio to q = 1, and the context's prefill in seconds. `--variants` loads the model once
per quantization (`none`, `fp16`, `w8a8`, `int8`, `int4`; `w8a8:sdpa` = w8a8 with batched SDPA
instead of its row-wise attention, to show what exactness costs; `w8a8:own` = w8a8 through
transformers' own forward instead of lean_forward.py's; `w8a8-unfused` = w8a8 without
fused q/k/v and gate/up products, fusion.py) and measures them side by side: rounds interleaved over
variants and q, so machine drift hits all alike. `--drafts-only` loads as a drafter (batched attention).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import specdecode.runtime.cpu.quantize as quantize_module
from specdecode import load_model
from specdecode.runtime.runner import SDPABackend
from specdecode.runtime.cache import KVCache


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--cpu-kernels", default="auto")
    parser.add_argument("--variants", default="none", help="comma-separated quantizations, e.g. none,fp16,w8a8")
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--sizes", default="1,2,4,8,16,32")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--drafts-only", action="store_true")
    args = parser.parse_args()
    variants = [v.strip() for v in args.variants.split(",")]
    loaded = {}
    fuse = quantize_module.fuse_projections
    for variant in variants:
        weights = variant.split(":")[0]
        if weights not in loaded:
            quantize = weights.removesuffix("-unfused")
            quantize_module.fuse_projections = (lambda model: 0) if weights.endswith("-unfused") else fuse
            loaded[weights] = load_model(args.model, dtype=args.dtype, cpu_kernels=args.cpu_kernels,
                                         quantize=None if quantize == "none" else quantize,
                                         drafts_only=args.drafts_only)
    quantize_module.fuse_projections = fuse
    sizes = [int(s) for s in args.sizes.split(",")]
    backends, generator = {True: SDPABackend(), False: SDPABackend(lean=False)}, torch.Generator().manual_seed(0)
    context = torch.randint(0, 1000, (args.context,), generator=generator)
    times: dict[tuple[str, int | str], list[float]] = {}
    with torch.inference_mode():
        for round_ in range(args.rounds + 1):  # round 0 warms up
            for variant in variants:
                quantize, _, attention = variant.partition(":")
                model = loaded[quantize].model
                own_attention = model.config._attn_implementation
                backend = backends[attention != "own"]
                if attention and attention != "own":
                    model.set_attn_implementation(attention)
                cache = KVCache(model)
                start = time.perf_counter()
                backend.forward(model, cache, context, torch.arange(args.context), logits_to_keep=1)
                if round_:
                    times.setdefault((variant, "prefill"), []).append(time.perf_counter() - start)
                for q in sizes:
                    ids = torch.randint(0, 1000, (q,), generator=generator)
                    start = time.perf_counter()
                    backend.forward(model, cache, ids, torch.arange(args.context, args.context + q))
                    if round_:
                        times.setdefault((variant, q), []).append(time.perf_counter() - start)
                    cache.crop(args.context)
                model.set_attn_implementation(own_attention)
    print(f"{args.model} threads={torch.get_num_threads()} context={args.context} rounds={args.rounds}")
    for variant in variants:
        first = loaded[variant.split(":")[0]]
        base = statistics.median(times[(variant, sizes[0])])
        print(f"{variant} ({first.dtype}, linear_kernel={first.linear_kernel}): " + " | ".join(
            f"q={q}: {statistics.median(times[(variant, q)]) * 1000:.0f} ms "
            f"({statistics.median(times[(variant, q)]) / base:.2f}x)" for q in sizes)
            + f" | prefill {statistics.median(times[(variant, 'prefill')]):.1f} s")


if __name__ == "__main__":
    main()
