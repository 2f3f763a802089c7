"""Side by side in one process: an fp32 target's verification under transformers' SDPA (the cache repeated
once per query head for several tokens under a mask) vs grouped attention (runtime/grouped_attention.py),
on long-suite documents: plain and speculative decoding under each, interleaved per question (the order
alternating), the decode phase's tokens/s (after the prefill) and whether the tokens equal plain decoding's.

    python -m specdecode.bench.long_suite --out ~/.cache/specdecode/bench/long_summarization.jsonl
    python scripts/target_grouped_ab.py --category long_summarization_4k --limit 2
"""
from interleaved_ab import ab_parser, chosen_questions, interleaved_runs

from specdecode.drafters.registry import DrafterOptions, make_drafter
from specdecode.engine import SpeculativeGenerator
from specdecode.models.load import load_model
from specdecode.runtime.grouped_attention import GROUPED, use_grouped_attention

args = ab_parser("~/.cache/specdecode/bench/long_summarization.jsonl", "long_summarization_4k", 2,
                 "model:qwen2.5-coder-0.5b-instruct").parse_args()

questions = chosen_questions(args)
target = load_model("qwen2.5-coder-1.5b-instruct", dtype="fp32")
use_grouped_attention(target.model)  # registers it; each run below sets the implementation it measures
drafter = make_drafter(args.drafter, target, DrafterOptions())
generators = {}
for implementation in ("sdpa", GROUPED):  # each with the forward costs calibrated under its attention
    target.model.set_attn_implementation(implementation)
    generators[implementation] = SpeculativeGenerator(target, drafter, reuse_prompt=False)
    generators[implementation].generate("Hello", max_new_tokens=2)
interleaved_runs(generators, questions, args.max_new_tokens,
                 before=lambda implementation: target.model.set_attn_implementation(implementation))
