"""Side by side in one process: the 0.5B drafter's forwards (1 and 4 tokens) over the 8k long-suite document's
cache, transformers' SDPA vs grouped attention alternated, median of 5 after a warm-up round.

    python -m specdecode.bench.long_suite --out ~/.cache/specdecode/bench/long_summarization.jsonl
    python scripts/grouped_attention_ab.py
"""
import time
from pathlib import Path

from specdecode.bench.questions import read_questions, select_questions
from specdecode.drafters.registry import DrafterOptions, make_drafter
from specdecode.models.load import load_model
from specdecode.runtime.grouped_attention import GROUPED
qs = select_questions(read_questions(Path("~/.cache/specdecode/bench/long_summarization.jsonl").expanduser()), ["long_summarization_8k"], 1)
target = load_model("qwen2.5-coder-1.5b-instruct")
ids = target.tokenizer.apply_chat_template([{"role": "user", "content": qs[0].turns[0]}], add_generation_prompt=True, tokenize=True)
ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
d = make_drafter("model:qwen2.5-coder-0.5b-instruct:all", target, DrafterOptions())
d.check_target(target); d.begin(ids)
n = d.cache.length
times = {(impl, q): [] for impl in ("sdpa", GROUPED) for q in (1, 4)}
for rep in range(6):
    for impl in ("sdpa", GROUPED):
        d.model.set_attn_implementation(impl)
        for q in (1, 4):
            t = time.perf_counter(); d._forward([13] * q, n, last_only=True); dt = time.perf_counter() - t
            d.cache.crop(n)
            if rep: times[(impl, q)].append(dt)  # the first round warms up
print("cache entries", n)
for (impl, q), ts in times.items():
    print(f"{impl:26s} q={q}: median {sorted(ts)[len(ts)//2]*1000:.1f} ms over {len(ts)}")
