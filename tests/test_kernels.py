"""CPU matmul orientation: same results as F.linear, chosen by measurement, lossless under SD; bf16
targets whose verifications compute bit for bit what one-token steps compute."""

# cost_model=None: these tests verify every draft the drafters make; the cost model (test_costs.py)
# would rightly skip drafts of drafters as slow as these small targets.

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from tiny import (RandomDrafter, cpu_model, first_token_total_variation, hf_greedy, loaded, random_prompt,
                  repetitive_prompt, rowwise_linear, stand_in_linear, tiny_model, tiny_tokenizer)

from specdecode import SpecDecodeError, SpeculativeGenerator, load_model
from specdecode.runtime.calibrate import ForwardCosts
from specdecode.runtime.cpu import linear as cpu_linear
from specdecode.drafters import LookupDrafter, ModelDrafter
from specdecode.models import load as load_module
from specdecode.runtime.cpu.linear import (SMALL_ROWS, PaddedRowLinear, PaddedRowWeightFirstLinear, WeightFirstLinear,
                                           exact_one_token_steps, linear_modules, one_row_padding_pays, one_row_rounding,
                                           rows_agree, tune_linear_layers)
from specdecode.runtime.grouped_attention import GROUPED



@pytest.mark.parametrize("rows", [1, 3, 8, SMALL_ROWS, SMALL_ROWS + 1])
@pytest.mark.parametrize("bias", [False, True])
def test_weight_first_linear_matches_f_linear(rows, bias):
    torch.manual_seed(0)
    layer = torch.nn.Linear(48, 80, bias=bias)
    x = torch.randn(2, rows, 48) if rows > 1 else torch.randn(1, 1, 48)
    expected = layer(x)
    layer.__class__ = WeightFirstLinear
    got = layer(x)
    assert got.shape == expected.shape and got.is_contiguous()
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_forced_and_measured_choices():
    model = cpu_model("llama")
    assert tune_linear_layers(model, "weight_first") == "weight_first"
    assert all(type(m) is WeightFirstLinear for m in linear_modules(model))
    assert tune_linear_layers(model, "standard") == "standard"
    assert all(type(m) is torch.nn.Linear for m in linear_modules(model))
    assert tune_linear_layers(model, "auto") in ("weight_first", "standard")
    with pytest.raises(SpecDecodeError, match="unknown cpu_kernels mode"):
        tune_linear_layers(model, "fast")


def test_one_row_padding_where_it_measures_cheaper(monkeypatch, tmp_path):
    """Where a one-row product measures clearly slower than two rows (calibrated once), a CPU target that is
    not exact computes its one-token steps as the row twice, in its orientation; the output is plain decoding's."""
    model = cpu_model("qwen2", seed=0)
    assert tune_linear_layers(model, "weight_first", pad_one_row=True) == "weight_first"
    assert all(type(m) is PaddedRowWeightFirstLinear for m in linear_modules(model))
    tune_linear_layers(model, "standard", pad_one_row=True)
    assert all(type(m) is PaddedRowLinear for m in linear_modules(model))
    assert not one_row_padding_pays(model)  # tiny layers: nothing timed
    monkeypatch.setenv("SPECDECODE_CALIBRATION_DIR", str(tmp_path))
    monkeypatch.setattr(load_module, "one_row_padding_pays", lambda model: True)
    monkeypatch.setattr(load_module, "measured_orientation", lambda model: "weight_first")
    target = load_model(cpu_model("qwen2", seed=0), tokenizer=tiny_tokenizer(), dtype="fp32")
    assert target.linear_kernel == "weight_first, one row padded"
    assert all(type(m) is PaddedRowWeightFirstLinear for m in linear_modules(target.model))
    prompt = random_prompt(11)
    reference = hf_greedy(cpu_model("qwen2", seed=0), prompt, 30)
    for drafter in (None, LookupDrafter(tree_width=2)):
        out = SpeculativeGenerator(target, drafter=drafter, cost_model=None).generate(prompt, max_new_tokens=30)
        assert out.token_ids == reference


def test_speculative_decoding_stays_exact_with_weight_first_layers():
    model = cpu_model("qwen2", seed=0)
    tune_linear_layers(model, "weight_first")
    target = loaded(model)
    prompt = random_prompt(11)
    reference = hf_greedy(model, prompt, 30)
    for drafter in (None, ModelDrafter(target, k=4, confidence=0), LookupDrafter(tree_width=2)):
        out = SpeculativeGenerator(target, drafter=drafter, cost_model=None).generate(prompt, max_new_tokens=30)
        assert out.token_ids == reference


# ----------------------------------------------------------------------------- exact bf16 steps
def test_row_rounding_is_classified_from_what_the_kernel_computes():
    layers = [torch.nn.Linear(32, 48), torch.nn.Linear(48, 32, bias=False)]
    assert one_row_rounding(layers, rowwise_linear) == "stable"

    def one_row_apart(x, weight, bias):  # like oneDNN's bf16 matrix-vector path on an AVX-512 BF16 EPYC
        out = rowwise_linear(x, weight, bias)
        return out + 1e-3 if x.shape[1] == 1 else out

    assert one_row_rounding(layers, one_row_apart) == "batched"

    def by_row_count(x, weight, bias):  # rounding that moves with the batch: no fix possible
        return rowwise_linear(x, weight, bias) + 1e-4 * x.shape[1]

    assert one_row_rounding(layers, by_row_count) == "unstable"
    assert rows_agree(layers, rowwise_linear) and rows_agree(layers, one_row_apart)
    assert not rows_agree(layers, by_row_count)

    def late_row_apart(x, weight, bias):  # only some rows round apart alone (SmolLM2 on that EPYC: 5 of 64)
        out = rowwise_linear(x, weight, bias)
        return out + 1e-3 if x.shape[1] == 1 and bool((x[0, 0] == probe[0, 40]).all()) else out

    probe = torch.randn(1, 64, 32, generator=torch.Generator().manual_seed(1))  # the probe's own first input
    assert one_row_rounding(layers[:1], late_row_apart) == "batched"


@pytest.mark.parametrize("bias", [False, True])
def test_padded_row_linear_feeds_one_row_through_the_batched_product(bias):
    torch.manual_seed(0)
    layer = torch.nn.Linear(48, 80, bias=bias).to(torch.bfloat16)
    x = torch.randn(1, 5, 48).to(torch.bfloat16)
    one, several = layer(x[:, :1]), layer(x)
    layer.__class__ = PaddedRowLinear
    assert torch.equal(layer(x), several)  # several rows: the product as it was
    padded = layer(x[:, :1])
    assert padded.shape == (1, 1, 80)
    assert torch.equal(padded, F.linear(torch.cat([x[:, :1]] * 2, dim=1), layer.weight, layer.bias)[:, :1])
    torch.testing.assert_close(padded, one, atol=0.05, rtol=0.02)  # the same product, up to bf16 rounding


def test_bf16_targets_get_exact_steps_where_the_kernels_allow_and_nothing_else_changes(monkeypatch):
    bf16 = cpu_model("llama", seed=0).to(torch.bfloat16)
    monkeypatch.setattr(cpu_linear, "exact_width", lambda layers: 65)
    assert exact_one_token_steps(bf16) == 65
    assert all(type(m) is PaddedRowLinear for m in linear_modules(bf16))
    assert bf16.config._attn_implementation == "specdecode_rowwise"
    unstable = cpu_model("llama", seed=0).to(torch.bfloat16)
    monkeypatch.setattr(cpu_linear, "exact_width", lambda layers: 0)
    assert exact_one_token_steps(unstable) == 0  # left as it was
    assert unstable.config._attn_implementation == "sdpa"
    assert all(type(m) is torch.nn.Linear for m in linear_modules(unstable))
    monkeypatch.undo()
    fp32 = load_model(cpu_model("llama", seed=0), tokenizer=tiny_tokenizer(), dtype="fp32")
    assert not fp32.exact_steps and fp32.model.config._attn_implementation == GROUPED  # fp32: not needed
    drafter = load_model(cpu_model("llama", seed=0), tokenizer=tiny_tokenizer(), dtype="bf16", drafts_only=True)
    assert not drafter.exact_steps and drafter.linear_kernel != "padded_row"  # a drafter never changes output


@pytest.fixture
def one_row_apart_kernel(monkeypatch):
    """F.linear replaced, for the test, by a product of the kind that breaks bf16 exactness on an AVX-512 BF16
    EPYC: a lone row rounds apart from the same row among others (tiny.stand_in_linear)."""
    monkeypatch.setattr(F, "linear", stand_in_linear())


def generate_with_every_drafter(target, draft, prompt, tokens: int, cost_model="auto"
                                ) -> tuple[list[int], dict[str, list[int]]]:
    """Plain decoding's token ids (its one-token steps as the cost model pads them), and those of speculative
    decoding with lookup, a model and garbage drafts."""
    plain = SpeculativeGenerator(target, cost_model=cost_model).generate(prompt, max_new_tokens=tokens,
                                                                         speculative=False)
    drafters = (LookupDrafter(tree_width=2), ModelDrafter(draft, k=5, confidence=0), RandomDrafter(7))
    return plain.token_ids, {d.name: SpeculativeGenerator(target, drafter=d, cost_model=None)
                             .generate(prompt, max_new_tokens=tokens).token_ids for d in drafters}


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_bf16_target_with_exact_steps_is_token_exact_where_it_was_not(arch, one_row_apart_kernel):
    prompts = (random_prompt(3), repetitive_prompt(4))
    draft = loaded(cpu_model(arch, seed=5).to(torch.bfloat16))
    as_loaded = loaded(cpu_model(arch, seed=0).to(torch.bfloat16))
    differing = []
    for prompt in prompts:
        plain, outputs = generate_with_every_drafter(as_loaded, draft, prompt, 40)
        differing += [name for name, ids in outputs.items() if ids != plain]
    assert differing  # this kernel does break speculative decoding of a model left as it was

    model = cpu_model(arch, seed=0).to(torch.bfloat16)
    assert exact_one_token_steps(model) == 65
    for prompt in prompts:
        plain, outputs = generate_with_every_drafter(loaded(model), draft, prompt, 40)
        for name, ids in outputs.items():
            assert ids == plain, f"{name} changed a bf16 target's output"


@pytest.mark.zoo
def test_bf16_smollm2_speculative_equals_plain_with_exact_steps(one_row_apart_kernel, monkeypatch):
    """On SmolLM2 in bf16 (it diverged at bf16 ties on an AVX-512 BF16 EPYC before exact steps)."""
    # a CPU where the weight-first orientation times faster: exactness still comes first ...
    monkeypatch.setattr(cpu_linear, "weight_first_gain", lambda *shape: 2.0)
    target = load_model("smollm2-135m-instruct", dtype="bf16")
    assert target.exact_steps and target.linear_kernel == "padded_row"
    # ... unless the user asks for that orientation by name
    assert not load_model("smollm2-135m-instruct", dtype="bf16", cpu_kernels="weight_first").exact_steps
    draft = load_model("smollm2-135m-instruct", dtype="fp32", drafts_only=True)  # another model of it
    prompt = [{"role": "user", "content": "Repeat after me: the quick brown fox jumps over the lazy dog."}]
    plain, outputs = generate_with_every_drafter(target, draft, prompt, 32, cost_model=None)  # (a slow kernel)
    for name, ids in outputs.items():
        assert ids == plain, f"{name} changed the bf16 model's output"


@pytest.mark.zoo
def test_bf16_smollm2_on_this_cpus_own_kernels_is_exact_or_auto_chooses_fp32():
    """On this CPU's own kernels: where calibration finds an exact width, a bf16 target's speculative output
    equals plain decoding's for every drafter; where it finds none, the bf16 model is left as it was and
    says so, and dtype="auto" loads the target in fp32 instead (exactness before speed)."""
    target = load_model("smollm2-135m-instruct", dtype="bf16")
    if not target.exact_steps:
        assert target.model.config._attn_implementation == GROUPED and target.linear_kernel != "padded_row"
        assert load_model("smollm2-135m-instruct").dtype == torch.float32
        return
    draft = load_model("smollm2-135m-instruct", dtype="fp32", drafts_only=True)
    prompts = [[{"role": "user", "content": "Repeat after me: the quick brown fox jumps over the lazy dog."}],
               [{"role": "user", "content": "Write a Python function that returns the n-th Fibonacci number."}]]
    for prompt in prompts:
        plain, outputs = generate_with_every_drafter(target, draft, prompt, 48)
        for name, ids in outputs.items():
            assert ids == plain, f"{name} changed the bf16 model's output"


def test_sampling_from_a_bf16_target_with_exact_steps_keeps_its_distribution(monkeypatch):
    """Exact steps change how a bf16 target's products and attention are computed, not what it samples:
    first sampled token vs the target's own softmax (vocab 16, 2000 seeds, a model drafter)."""
    monkeypatch.setattr(cpu_linear, "exact_width", lambda layers: 65)  # the padded path, on any CPU
    model = cpu_model("llama", seed=0, vocab=16).to(torch.bfloat16)
    assert exact_one_token_steps(model) == 65
    drafter = ModelDrafter(loaded(cpu_model("llama", seed=3, vocab=16)), k=2, confidence=0)
    gen = SpeculativeGenerator(loaded(model), drafter=drafter, cost_model=None)
    assert first_token_total_variation(gen, model, random_prompt(7, vocab=16), samples=2000) < 0.05  # ~0.02-0.03


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: checks that a GPU model is left as it was")
def test_a_gpu_target_keeps_its_own_kernels_and_attention():
    model = tiny_model("llama", seed=0, device=torch.device("cuda")).to(torch.bfloat16)
    assert exact_one_token_steps(model) == 0
    assert model.config._attn_implementation == "sdpa"
    assert all(type(m) is torch.nn.Linear for m in linear_modules(model))
    assert not load_model(model, tokenizer=tiny_tokenizer(), dtype="bf16").exact_steps


def test_an_exact_targets_one_token_steps_take_the_cheapest_measured_width(one_row_apart_kernel):
    """Where a whole forward of 4 rows was measured cheaper than one token's, an exact target feeds its one-token
    steps (plain decoding's) as 4 rows: each row keeps its bits, so tokens and logit margins stay those of
    unpadded steps, even under a kernel that rounds a lone row apart; a target that is not exact never pads them."""
    costs = ForwardCosts((1, 2, 4, 8), (1.0, 1.0, 0.5, 0.9))
    assert costs.cheapest_rows(1) == 4 and costs.cheapest_rows(1, limit=3) == 1 and costs.cheapest_rows(5) == 5
    assert ForwardCosts((1, 4), (1.0, 0.9)).cheapest_rows(1) == 1  # not clearly cheaper
    model = cpu_model("llama", seed=0).to(torch.bfloat16)
    exact = replace(loaded(model), exact_steps=True, max_exact_rows=exact_one_token_steps(model))
    prompt = random_prompt(6)
    unpadded = SpeculativeGenerator(exact, pad_verification=False).generate(prompt, max_new_tokens=20)
    padded = SpeculativeGenerator(exact, cost_model=costs).generate(prompt, max_new_tokens=20, speculative=False)
    assert padded.stats.forward_rows == 4 * padded.stats.steps and unpadded.stats.forward_rows == unpadded.stats.steps
    assert padded.token_ids == unpadded.token_ids and padded.top2_margins == unpadded.top2_margins
    padded_gen = SpeculativeGenerator(exact, cost_model=costs)
    unpadded_gen = SpeculativeGenerator(exact, pad_verification=False)
    for seed in range(8):  # sampling: the same bits, so the same draws seed for seed
        options = dict(max_new_tokens=6, temperature=1.0, seed=seed, speculative=False)
        sampled = padded_gen.generate(prompt, **options)
        assert sampled.stats.forward_rows == 4 * sampled.stats.steps
        assert sampled.token_ids == unpadded_gen.generate(prompt, **options).token_ids
    not_exact = loaded(cpu_model("llama", seed=0).to(torch.bfloat16))
    plain = SpeculativeGenerator(not_exact, cost_model=costs).generate(prompt, max_new_tokens=20, speculative=False)
    assert plain.stats.forward_rows == plain.stats.steps
