"""The lean decode forward against the model's own (transformers') forward, paired step by step.

    python scripts/lean_ab.py qwen2.5-coder-1.5b-instruct --quantize w8a8
    python scripts/lean_ab.py qwen2.5-coder-0.5b-instruct --quantize w8a8 --drafts-only

One model, one cache with `--context` tokens; each round feeds q tokens through both forwards one after
the other (the order alternating), so this machine's drift hits both alike. Prints the medians and the
median of the per-round ratios (lean / own).
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
    parser.add_argument("--quantize", default=None)
    parser.add_argument("--drafts-only", action="store_true")
    parser.add_argument("--context", type=int, default=400)
    parser.add_argument("--sizes", default="1,4")
    parser.add_argument("--rounds", type=int, default=60)
    args = parser.parse_args()
    model = load_model(args.model, quantize=args.quantize, drafts_only=args.drafts_only).model
    backends = {"lean": SDPABackend(), "own": SDPABackend(lean=False)}
    sizes = [int(s) for s in args.sizes.split(",")]
    times: dict[tuple[str, int], list[float]] = {(name, q): [] for name in backends for q in sizes}
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        cache = KVCache(model)
        backends["own"].forward(model, cache, torch.randint(0, 1000, (args.context,), generator=generator),
                                torch.arange(args.context), prefill=True)
        if not backends["lean"].runs_lean(model):
            raise SystemExit(f"{args.model}: the lean forward does not apply (see lean_forward.py)")
        for round_ in range(args.rounds + 4):  # 4 warm-up rounds
            for q in sizes:
                ids, positions = torch.randint(0, 1000, (q,), generator=generator), torch.arange(args.context,
                                                                                                  args.context + q)
                for name in ("lean", "own") if round_ % 2 else ("own", "lean"):
                    start = time.perf_counter()
                    backends[name].forward(model, cache, ids, positions)
                    if round_ >= 4:
                        times[(name, q)].append(time.perf_counter() - start)
                    cache.crop(args.context)
    print(f"{args.model} quantize={args.quantize} threads={torch.get_num_threads()} context={args.context}")
    for q in sizes:
        lean, own = times[("lean", q)], times[("own", q)]
        ratio = statistics.median(a / b for a, b in zip(lean, own))
        print(f"q={q}: lean {statistics.median(lean) * 1e3:.1f} ms, own {statistics.median(own) * 1e3:.1f} ms, "
              f"median paired ratio {ratio:.3f}")


if __name__ == "__main__":
    main()
