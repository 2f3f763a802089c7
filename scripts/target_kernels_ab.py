"""Side by side in one process, a bf16 target's linear kernels and one-token padding (variants below): plain
and speculative decoding under each, interleaved per question (the order rotating): the decode phase's
tokens/s (after the prefill) and whether every run's tokens equal the first's.

- standard: F.linear (oneDNN reorders each weight on every call), one-token steps as one row (twice: PaddedRows)
- packed: weights reordered once at load (runtime/cpu/packed_linear.py), one-token steps as before
- packed+pad: packed, and an exact target's one-token steps fed at the row count its whole forward runs
  cheapest (SpeculativeGenerator._padded_size)

    python scripts/target_kernels_ab.py --variants standard,packed --limit 1
    python scripts/target_kernels_ab.py --variants packed,packed+pad --limit 1
"""
from interleaved_ab import ab_parser, chosen_questions, interleaved_runs

from specdecode.drafters.registry import DrafterOptions, make_drafter
from specdecode.engine import SpeculativeGenerator
from specdecode.models.load import load_model

KERNELS = {"standard": "standard", "packed": "auto", "packed+pad": "auto"}  # variant -> load_model's cpu_kernels

parser = ab_parser("../shared/data/spec_bench/question.jsonl", None, 1, "model:qwen2.5-coder-0.5b-instruct")
parser.add_argument("--variants", default="standard,packed")
parser.add_argument("--model", default="qwen2.5-coder-1.5b-instruct")
args = parser.parse_args()

variants = args.variants.split(",")
questions = chosen_questions(args)
targets = {kernels: load_model(args.model, cpu_kernels=kernels) for kernels in {KERNELS[v] for v in variants}}
drafter = make_drafter(args.drafter, next(iter(targets.values())), DrafterOptions())
generators = {}
for variant in variants:
    target = targets[KERNELS[variant]]
    generators[variant] = SpeculativeGenerator(target, drafter, reuse_prompt=False)
    generators[variant].generate("Hello", max_new_tokens=2)  # calibration and warm-up, untimed
    if not variant.endswith("+pad"):
        generators[variant]._one_token_rows = 1  # one-token steps unpadded (as before the padding)
    print(f"{variant}: {target.dtype}, linear kernel {target.linear_kernel}, exact steps {target.exact_steps}, "
          f"one-token rows {generators[variant]._one_token_rows}")
interleaved_runs(generators, questions, args.max_new_tokens)
