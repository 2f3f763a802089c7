"""Side by side in one process: the 0.5B drafter in w8a8 (FBGEMM, fp32 activations) vs in bf16 (weights
packed for oneDNN where load_model packs them), drafting for one bf16 target; plain and speculative decoding
per variant, interleaved per question (scripts/interleaved_ab.py).

    python scripts/drafter_weights_ab.py --limit 1
"""
from interleaved_ab import ab_parser, chosen_questions, interleaved_runs

from specdecode.drafters.registry import DrafterOptions, make_drafter
from specdecode.engine import SpeculativeGenerator
from specdecode.models.load import load_model

parser = ab_parser("../shared/data/spec_bench/question.jsonl", None, 1, "model:qwen2.5-coder-0.5b-instruct")
parser.add_argument("--model", default="qwen2.5-coder-1.5b-instruct")
args = parser.parse_args()

questions = chosen_questions(args)
target = load_model(args.model)
options = {"w8a8": DrafterOptions(drafter_quantize="w8a8"),
           "bf16": DrafterOptions(drafter_dtype="bf16", drafter_quantize=None)}
generators = {}
for variant, option in options.items():
    drafter = make_drafter(args.drafter, target, option)
    print(f"{variant}: drafter {drafter.model.dtype}, linear kernel {drafter.draft.linear_kernel}")
    generators[variant] = SpeculativeGenerator(target, drafter, reuse_prompt=False)
    generators[variant].generate("Hello", max_new_tokens=2)  # calibration and warm-up, untimed
interleaved_runs(generators, questions, args.max_new_tokens)
