"""One-token step cost with our KV cache (GrowingLayer: in-place appends) vs transformers' DynamicCache
(torch.cat, which copies the whole cache every step), side by side on one loaded model.

    python scripts/cache_ab.py smollm2-135m-instruct --quantize w8a8 --context 2000

Both caches get the same `--context` random tokens (prefilled with batched SDPA, to be quick), then
rounds alternate between them: `--steps` one-token steps each, then a crop back to the context. Prints
the median and the fastest step per cache.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import DynamicCache

from specdecode import load_model
from specdecode.attention import SDPABackend
from specdecode.cache import KVCache


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--quantize", default=None)
    parser.add_argument("--context", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    model = load_model(args.model, quantize=args.quantize).model
    backend, prompt = SDPABackend(), torch.randint(0, 1000, (args.context,), generator=torch.Generator().manual_seed(0))
    caches = {"growing (ours)": KVCache(model), "DynamicCache": KVCache(model)}
    caches["DynamicCache"].hf = DynamicCache(config=model.config)
    times: dict[str, list[float]] = {name: [] for name in caches}
    with torch.inference_mode():
        own_attention = model.config._attn_implementation
        model.set_attn_implementation("sdpa")
        for cache in caches.values():
            backend.forward(model, cache, prompt, torch.arange(args.context), logits_to_keep=1)
        model.set_attn_implementation(own_attention)  # the steps use the model's own attention (w8a8: row-wise)
        for round_ in range(args.rounds + 1):  # round 0 warms up
            for name, cache in caches.items():
                for step in range(args.steps):
                    start = time.perf_counter()
                    backend.forward(model, cache, torch.tensor([5 + step]), torch.tensor([args.context + step]))
                    if round_:
                        times[name].append(time.perf_counter() - start)
                cache.crop(args.context)
    print(f"{args.model} quantize={args.quantize} context={args.context} threads={torch.get_num_threads()}")
    for name, values in times.items():
        print(f"{name}: median {statistics.median(values) * 1000:.1f} ms, fastest {min(values) * 1000:.1f} ms "
              f"({len(values)} steps)")


if __name__ == "__main__":
    main()
