"""Self-draft variants on one long document, sharing one prefill: acceptance and decode speed per variant.

A maintainer's tool for choosing SelfDrafter defaults (KV policy, budget, weights): a long prompt's prefill
takes minutes on a CPU, so the target's prompt cache is computed once and copied into every later run
(by wrapping the generator's prefill step; the output is unchanged, which the `same` column checks
against plain decoding). Not the benchmark's protocol: one document, variants one after the other.

    python scripts/self_draft_sweep.py --tokens 8000 --new-tokens 96 \
        "kv='full',weights='w8a8',k=6" "kv='snapkv',kv_budget=2048,weights='w8a8',k=6" "name='lookup+self'"

Each variant is keyword arguments for SelfDrafter (plus `name=` for any drafter name of the registry, and
`cost_model=None` to draft at every step); plain decoding runs first as the reference.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

import specdecode as sd
from specdecode.drafters import SelfDrafter
from specdecode.drafters.registry import make_drafter
from specdecode.engine import SpeculativeGenerator

DOCUMENTS = ("/usr/share/common-licenses/GPL-3", "/usr/share/common-licenses/Apache-2.0")


class SharedPrefill(SpeculativeGenerator):
    """A generator whose prompt cache is computed once per prompt length (into `saved`) and copied afterwards."""

    def __init__(self, *args, saved: dict, **kwargs):
        super().__init__(*args, **kwargs)
        self.saved = saved

    def _prefill(self, cache, token_ids, on_prefill, model_inputs=None):
        entries = self.saved.get(len(token_ids))
        if entries is None:
            super()._prefill(cache, token_ids, on_prefill, model_inputs)
            self.saved[len(token_ids)] = [(k.clone(), v.clone()) for k, v in cache.layer_entries()]
            return
        for layer, (keys, values) in enumerate(entries):
            cache.hf.update(keys.clone(), values.clone(), layer)


def variant(text: str) -> dict:
    call = ast.parse(f"f({text})", mode="eval").body
    return {keyword.arg: ast.literal_eval(keyword.value) for keyword in call.keywords}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="+")
    parser.add_argument("--model", default="qwen2.5-coder-1.5b-instruct")
    parser.add_argument("--tokens", type=int, default=8000, help="document tokens")
    parser.add_argument("--new-tokens", type=int, default=96)
    args = parser.parse_args()
    target = sd.load_model(args.model)
    text = "\n\n".join(Path(p).read_text() for p in DOCUMENTS if Path(p).exists())
    document = target.tokenizer.decode(target.tokenizer.encode(text)[: args.tokens])
    prompt = [{"role": "user", "content": document + "\n\nSummarize the document above in a few paragraphs."}]
    reference, base, saved = None, None, {}
    for spec in ["plain", *args.variants]:
        options = {} if spec == "plain" else variant(spec)
        cost_model = options.pop("cost_model", "auto")
        name = options.pop("name", None)
        drafter = None if spec == "plain" else make_drafter(name, target) if name else SelfDrafter(target, **options)
        generator = SharedPrefill(target, drafter, cost_model=cost_model, saved=saved)
        out = generator.generate(prompt, args.new_tokens, speculative=drafter is not None)
        stats = out.stats
        decode = stats.new_tokens / stats.decode_s
        reference, base = reference or out.token_ids, base or decode
        print(f"{spec:50s} decode {decode:5.2f} tok/s ({decode / base:.2f}x)  tau {stats.mean_accepted:.2f}  "
              f"acceptance {stats.acceptance_rate:.2f}  drafted {stats.drafted_tokens:3d}  draft {stats.draft_s:5.1f} s  "
              f"verify {stats.verify_s:5.1f} s  same {out.token_ids == reference}", flush=True)


if __name__ == "__main__":
    main()
