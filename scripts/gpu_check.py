"""The engine on a CUDA GPU with random-weight models of the zoo pair's real shapes (no weights travel).

    python scripts/gpu_check.py --new-tokens 128 --rounds 3 --dtype bf16   (or fp32)

Prints, side by side in one run on the same models and GPU:
1. the target's forward cost vs tokens fed after 512 cached tokens (runtime/calibrate.py), per backend:
   "auto" (SDPA, dynamic shapes) and "graphs" (static steps recorded as CUDA graphs);
2. plain decoding: ours per backend vs transformers' `generate` (greedy) with its dynamic cache and with
   its static cache (`cache_implementation="static"`, compiled once in the warm-up round), rounds interleaved;
3. speculative decoding (lookup, a random 0.5B-shape drafter, the target drafting for itself) per backend:
   tokens/s relative to our SDPA plain decoding, tau, and whether the tokens equal plain decoding's on the
   same backend ("graphs:16" feeds every step 16 rows, so that plain and speculative rows share kernels).
Random weights make acceptance meaningless except at its two ends: the random drafter is the
worst case (almost nothing accepted: pure overhead), self-drafting the best (everything accepted).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from specdecode import SpeculativeGenerator, first_divergence
from specdecode.runtime.calibrate import measure_forward_costs
from specdecode.runtime.grouped_attention import use_grouped_attention
from specdecode.runtime.runner import select_backend
from specdecode.drafters import LookupDrafter, ModelDrafter
from specdecode.models.load import LoadedModel

def _shape(arch: str, hidden: int, inter: int, layers: int, heads: int, kv_heads: int, vocab: int = 151936) -> dict:
    return dict(arch=arch, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv_heads, vocab_size=vocab)


SHAPES = {  # random-weight models of real shapes (their config.json); scripts/gpu_predict.py uses them too
    "1.5b": _shape("qwen2", 1536, 8960, 28, 12, 2),  # Qwen2.5-Coder-1.5B, the zoo's target
    "0.5b": _shape("qwen2", 896, 4864, 24, 14, 2),  # Qwen2.5-Coder-0.5B, the zoo's drafter
    "8b": _shape("llama", 4096, 14336, 32, 32, 8, vocab=128256),  # Llama-3-8B
    "vl-3b": _shape("qwen2", 2048, 11008, 36, 16, 2),  # Qwen2.5-VL-3B's language model
    "vl-7b": _shape("qwen2", 3584, 18944, 28, 28, 4, vocab=152064),  # Qwen2.5-VL-7B's language model
    "tiny": _shape("qwen2", 64, 128, 2, 4, 2),  # --tiny: a dry run of a script on a CPU in seconds
}


def random_model(shape: str, seed: int, dtype: torch.dtype, device: str = "cuda") -> LoadedModel:
    torch.manual_seed(seed)
    sizes = dict(SHAPES[shape])
    config_class, model_class = ((LlamaConfig, LlamaForCausalLM) if sizes.pop("arch") == "llama"
                                 else (Qwen2Config, Qwen2ForCausalLM))
    config = config_class(max_position_embeddings=262144, rope_theta=1e6, tie_word_embeddings=True,
                          initializer_range=0.05, **sizes)  # wider than 0.02: fewer near-ties in bf16
    model = model_class(config).to(device=device, dtype=dtype).eval()
    use_grouped_attention(model)  # as load_model sets a target that is not exact
    model.generation_config.eos_token_id = None
    return LoadedModel(model=model, tokenizer=None, name=f"random-{shape}", dtype=model.dtype, device=model.device)


def hf_generate(model, prompt: list[int], new_tokens: int, **options) -> tuple[list[int], float]:
    ids = torch.tensor([prompt], device=model.device)
    synchronize = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)
    synchronize()
    begin = time.perf_counter()
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False,
                         pad_token_id=0, min_new_tokens=new_tokens, **options)
    synchronize()
    return out[0, len(prompt):].tolist(), time.perf_counter() - begin


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--tiny", action="store_true", help="tiny models on the CPU: check the script itself")
    args = parser.parse_args()
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    device = "cpu" if args.tiny else "cuda"
    print("CPU dry run" if args.tiny else torch.cuda.get_device_name(0), "torch", torch.__version__, args.dtype)
    target, small = (random_model("tiny" if args.tiny else shape, seed, dtype, device)
                     for seed, shape in enumerate(("1.5b", "0.5b")))

    for backend in ("auto", "graphs"):
        costs = measure_forward_costs(target.model, select_backend(backend), sizes=(1, 2, 4, 8, 16, 32, 64),
                                      context=512, rounds=5)
        print(f"target forward after 512 tokens, {backend}, ms:", costs.table_ms())

    generator = torch.Generator().manual_seed(0)
    phrase = torch.randint(151936, (args.prompt_tokens // 4,), generator=generator).tolist()
    prompt = phrase * 4  # repeats, so lookup has something to find
    methods = {}  # name -> (drafter, speculative, attention)
    for attention in ("auto", "graphs", "graphs:16"):
        tag = "" if attention == "auto" else f" {attention}"
        methods[f"plain{tag}"] = (None, False, attention)
        methods[f"lookup{tag}"] = (LookupDrafter(), True, attention)
        methods[f"model:random-0.5b{tag}"] = (ModelDrafter(small, attention=select_backend(attention)), True, attention)
        methods[f"model:self{tag}"] = (ModelDrafter(target, k=4, confidence=0, attention=select_backend(attention)),
                                       True, attention)
    gens = {name: SpeculativeGenerator(target, drafter=drafter, attention=attention, reuse_prompt=False,  # as HF
                                       # the self-draft drafts k=4 every step: the overhead, all accepted
                                       cost_model=None if name.startswith("model:self") else "auto")
            for name, (drafter, _, attention) in methods.items()}
    peers = {"hf-plain": {}, "hf-static": {"cache_implementation": "static"}}
    rates: dict[str, list[float]] = {name: [] for name in [*methods, *peers]}
    taus: dict[str, list[float]] = {name: [] for name in methods}
    identical: dict[str, bool] = {name: True for name in [*methods, *peers]}
    for round_ in range(args.rounds + 1):  # round 0 warms up (the cost model, graph captures, HF's compilation)
        references = {}
        for name, (_, speculative, attention) in methods.items():
            out = gens[name].generate(prompt, max_new_tokens=args.new_tokens, speculative=speculative)
            reference = references.setdefault(attention, out)
            if out.token_ids != reference.token_ids:
                identical[name] = False
                print(f"  {name}: {first_divergence(reference, out).describe()}")
            if round_:
                rates[name].append(out.stats.tokens_per_s)
                taus[name].append(out.stats.mean_accepted)
        for peer, options in peers.items():
            tokens, seconds = hf_generate(target.model, prompt, args.new_tokens, **options)
            identical[peer] &= tokens == references["auto"].token_ids
            if round_:
                rates[peer].append(len(tokens) / seconds)
    plain = statistics.mean(rates["plain"])
    print(f"{'method':28} {'tok/s':>8} {'vs plain':>9} {'tau':>6} identical")
    for name, values in rates.items():
        tau = f"{statistics.mean(taus[name]):6.2f}" if name in taus else "     -"
        rate = statistics.mean(values)
        print(f"{name:28} {rate:8.1f} {rate / plain:8.2f}x {tau} {identical[name]}")
    for name, gen in gens.items():
        if name.startswith("plain graphs"):
            capture_s = gen.attention.steps_of(target.model).capture_s
            print(f"{name}: {gen.attention.describe(target.model)}, capture {capture_s:.1f} s")


if __name__ == "__main__":
    main()
