"""The engine on a CUDA GPU with random-weight models of the zoo pair's real shapes (no weights travel).

    python scripts/gpu_check.py --new-tokens 128 --rounds 3 --dtype bf16   (or fp32)

Prints, side by side in one run on the same models and GPU:
1. the target's forward cost vs tokens fed after 512 cached tokens (runtime/calibrate.py);
2. plain decoding: ours vs transformers' `generate` (greedy), rounds interleaved;
3. speculative decoding (lookup, a random 0.5B-shape drafter, the target drafting for itself):
   tokens/s relative to our plain decoding, tau, and whether the tokens equal plain decoding's.
Random weights make acceptance meaningless except at its two ends: the random drafter is the
worst case (almost nothing accepted: pure overhead), self-drafting the best (everything accepted).
"""

from __future__ import annotations

import argparse
import statistics

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from specdecode import SpeculativeGenerator, first_divergence
from specdecode.runtime.calibrate import measure_forward_costs
from specdecode.runtime.grouped_attention import use_grouped_attention
from specdecode.runtime.runner import select_backend
from specdecode.drafters import LookupDrafter, ModelDrafter
from specdecode.models.load import LoadedModel

SHAPES = {  # Qwen2.5-Coder-1.5B / -0.5B (config.json of the zoo's models)
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2),
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2),
}


def random_model(shape: str, seed: int, dtype: torch.dtype) -> LoadedModel:
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=151936, max_position_embeddings=32768, rope_theta=1e6, tie_word_embeddings=True,
                         initializer_range=0.05, **SHAPES[shape])  # wider than 0.02: fewer near-ties in bf16
    model = Qwen2ForCausalLM(config).to(device="cuda", dtype=dtype).eval()
    use_grouped_attention(model)  # as load_model sets a target that is not exact
    model.generation_config.eos_token_id = None
    return LoadedModel(model=model, tokenizer=None, name=f"random-qwen2-{shape}", dtype=model.dtype,
                       device=model.device)


def hf_generate(model, prompt: list[int], new_tokens: int) -> tuple[list[int], float]:
    ids = torch.tensor([prompt], device=model.device)
    torch.cuda.synchronize()
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False,
                         pad_token_id=0, min_new_tokens=new_tokens)
    end.record()
    torch.cuda.synchronize()
    return out[0, len(prompt):].tolist(), begin.elapsed_time(end) / 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    args = parser.parse_args()
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    print(torch.cuda.get_device_name(0), "torch", torch.__version__, args.dtype)
    target, small = random_model("1.5b", 0, dtype), random_model("0.5b", 1, dtype)

    costs = measure_forward_costs(target.model, select_backend(), sizes=(1, 2, 4, 8, 16, 32, 64), context=512, rounds=5)
    print("target forward after 512 tokens, ms:", costs.table_ms())

    generator = torch.Generator().manual_seed(0)
    phrase = torch.randint(151936, (args.prompt_tokens // 4,), generator=generator).tolist()
    prompt = phrase * 4  # repeats, so lookup has something to find
    methods = {
        "plain": (None, False),
        "lookup": (LookupDrafter(), True),
        "model:random-0.5b": (ModelDrafter(small), True),
        "model:self": (ModelDrafter(target, k=4, confidence=0), True),
    }
    gens = {name: SpeculativeGenerator(target, drafter=drafter) for name, (drafter, _) in methods.items()}
    rates: dict[str, list[float]] = {name: [] for name in [*methods, "hf-plain"]}
    taus: dict[str, list[float]] = {name: [] for name in methods}
    identical: dict[str, bool] = {name: True for name in [*methods, "hf-plain"]}
    for round_ in range(args.rounds + 1):  # round 0 warms up (and measures the cost model)
        reference = None
        for name, (_, speculative) in methods.items():
            out = gens[name].generate(prompt, max_new_tokens=args.new_tokens, speculative=speculative)
            if name == "plain":
                reference = out
            elif out.token_ids != reference.token_ids:
                identical[name] = False
                print(f"  {name}: {first_divergence(reference, out).describe()}")
            if round_:
                rates[name].append(out.stats.tokens_per_s)
                taus[name].append(out.stats.mean_accepted)
        tokens, seconds = hf_generate(target.model, prompt, args.new_tokens)
        identical["hf-plain"] &= tokens == reference.token_ids
        if round_:
            rates["hf-plain"].append(len(tokens) / seconds)
    plain = statistics.mean(rates["plain"])
    print(f"{'method':20} {'tok/s':>8} {'vs plain':>9} {'tau':>6} identical")
    for name, values in rates.items():
        tau = f"{statistics.mean(taus[name]):6.2f}" if name in taus else "     -"
        print(f"{name:20} {statistics.mean(values):8.1f} {statistics.mean(values) / plain:8.2f}x {tau} {identical[name]}")


if __name__ == "__main__":
    main()
