"""Decode speedups predicted on a GPU for long documents and captions: step costs measured on the GPU with
random-weight models of real shapes, acceptance measured on a CPU with real weights. Every speedup printed
is a PREDICTION (no real weights run on the GPU); label it so wherever it is quoted.

    python scripts/gpu_predict.py --models 1.5b,8b --contexts 8192,32768,131072
    python scripts/gpu_predict.py --models vl-3b,vl-7b --contexts 1024 --drafters model
    python scripts/gpu_predict.py --tiny          # a dry run of this script on a CPU

Per model and context, through the runner named by --attention, after `context` cached tokens:
- the target's forward cost for 1 token (plain decoding) and for 2..9 tokens (a verification of a chain);
- `self`: the self-draft's one-token cost, the same weights over a compressed cache of --budget entries
  (SelfDrafter's default 2048), i.e. the target's one-token cost at that context;
- `model`: the 0.5B drafter's one-token cost over its window of 2048 entries (ModelDrafter's default).
For a chain of k drafted tokens each accepted with probability a (--acceptance: rates measured on the CPU):
    tokens per step = (1 - a^(k+1)) / (1 - a);   seconds per step = k * draft + verify(k + 1)
    predicted decode speedup = tokens per step * target(1) / seconds per step, at the best k in 1..8.
Defaults for a: self 0.75 (the snapkv self-draft's acceptance in the 8k/16k bench, docs/benchmarks.md) and
model 0.82 (the windowed 0.5B's agreement with the 1.5B on 4k-8k summaries); for captions pass the
stand-in's (--acceptance model=0.4: the 0.5B's 1.52 tokens a step on its captions, docs/benchmarks.md).
The vl-* shapes are the language models of Qwen2.5-VL-3B/7B: a caption's text steps run only the language
model (the vision tower runs once, in the prefill).
"""

from __future__ import annotations

import argparse

import torch

from gpu_check import random_model

from specdecode.runtime.calibrate import measure_forward_costs
from specdecode.runtime.runner import select_backend

DRAFT_WINDOW = 2048  # entries the 0.5B drafter attends over (ModelDrafter's context_window)


def one_token(model: torch.nn.Module, attention: str, context: int) -> float:
    return measure_forward_costs(model, select_backend(attention), sizes=(1,), context=context, rounds=5).raw(1)


def best_chain(acceptance: float, draft_s: float, verify, target_s: float) -> tuple[float, int]:
    """(predicted speedup, k) at the best chain length k in 1..8; verify(n): seconds of an n-token forward."""
    options = []
    for k in range(1, 9):
        tokens = (1 - acceptance ** (k + 1)) / (1 - acceptance) if acceptance < 1 else k + 1
        options.append((tokens * target_s / (k * draft_s + verify(k + 1)), k))
    return max(options)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="1.5b,8b")
    parser.add_argument("--contexts", default="8192,32768,131072")
    parser.add_argument("--drafters", default="self,model")
    parser.add_argument("--budget", type=int, default=2048, help="the self-draft's cache entries")
    parser.add_argument("--acceptance", default="self=0.75,model=0.82")
    parser.add_argument("--attention", default="auto")
    parser.add_argument("--tiny", action="store_true", help="tiny models on the CPU: check the script itself")
    args = parser.parse_args()
    device, dtype = ("cpu", torch.float32) if args.tiny else ("cuda", torch.bfloat16)
    acceptance = {name: float(value) for name, value in (part.split("=") for part in args.acceptance.split(","))}
    drafters = [name.strip() for name in args.drafters.split(",")]
    models = ["tiny"] if args.tiny else [name.strip() for name in args.models.split(",")]
    contexts = [int(c) for c in args.contexts.split(",")] if not args.tiny else [256, 1024]
    print("CPU dry run" if args.tiny else torch.cuda.get_device_name(0), "torch", torch.__version__,
          f"attention={args.attention}; speedups are PREDICTIONS (random weights, CPU-measured acceptance "
          f"{acceptance})")
    if "model" in drafters:
        small = random_model("tiny" if args.tiny else "0.5b", 1, dtype, device).model
        window = 128 if args.tiny else DRAFT_WINDOW
        model_draft_s = one_token(small, args.attention, window)
        del small
        print(f"0.5B drafter, one token over {window} entries: {model_draft_s * 1000:.2f} ms")
    for shape in models:
        target = random_model(shape, 0, dtype, device).model
        for context in contexts:
            costs = measure_forward_costs(target, select_backend(args.attention), sizes=tuple(range(1, 10)),
                                          context=context, rounds=5)
            cells = [f"{shape} @ {context}: one token {costs.raw(1) * 1000:.2f} ms, "
                     f"9 tokens {costs.raw(9) * 1000:.2f} ms"]
            for drafter in drafters:
                draft_s = (model_draft_s if drafter == "model"
                           else one_token(target, args.attention, min(args.budget, context)))
                speedup, k = best_chain(acceptance[drafter], draft_s, costs.raw, costs.raw(1))
                cells.append(f"{drafter}: draft {draft_s * 1000:.2f} ms, predicted {speedup:.2f}x at k={k}")
            print("; ".join(cells), flush=True)
        del target
        if device == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
