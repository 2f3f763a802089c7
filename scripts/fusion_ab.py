"""One-token steps of a quantized model with fused projections (fusion.py) vs the same model without.

    python scripts/fusion_ab.py qwen2.5-coder-1.5b-instruct w8a8
    python scripts/fusion_ab.py qwen2.5-coder-0.5b-instruct w8a8 --drafts-only

Loads the model twice (fused, and with fusion switched off), prefills 400 tokens in each, then times
one-token steps in rounds that alternate the two, so machine drift hits both alike; prints medians.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import specdecode.quantize as quantize_module
from specdecode import load_model
from specdecode.attention import SDPABackend
from specdecode.cache import KVCache


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("quantize")
    parser.add_argument("--drafts-only", action="store_true")
    parser.add_argument("--context", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    fuse = quantize_module.fuse_projections
    variants = {}
    for label in ("separate", "fused"):
        quantize_module.fuse_projections = fuse if label == "fused" else (lambda model: 0)
        variants[label] = load_model(args.model, quantize=args.quantize, drafts_only=args.drafts_only).model
    quantize_module.fuse_projections = fuse
    backend = SDPABackend()
    prompt = torch.randint(100, 20000, (args.context,))
    caches = {}
    times: dict[str, list[float]] = {label: [] for label in variants}
    with torch.inference_mode():
        for label, model in variants.items():
            caches[label] = KVCache(model)
            backend.forward(model, caches[label], prompt, torch.arange(args.context), logits_to_keep=1, prefill=True)
        for _ in range(args.rounds):
            for label, model in variants.items():
                for position in range(args.context, args.context + 8):
                    start = time.perf_counter()
                    backend.forward(model, caches[label], torch.tensor([123]), torch.tensor([position]),
                                    logits_to_keep=1)
                    times[label].append(time.perf_counter() - start)
                caches[label].crop(args.context)
    for label, seconds in times.items():
        print(f"{args.model} {args.quantize} {label}: median {statistics.median(seconds[8:]) * 1e3:.2f} ms "
              f"per one-token step after {args.context} tokens")


if __name__ == "__main__":
    main()
