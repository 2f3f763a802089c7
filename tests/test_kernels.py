"""CPU matmul orientation: same results as F.linear, chosen by measurement, lossless under SD."""

# cost_model=None: these tests verify every draft the drafters make; the cost model (test_costs.py)
# would rightly skip drafts of drafters as slow as these small targets.

from __future__ import annotations

import pytest
import torch
from tiny import hf_greedy, loaded, random_prompt, tiny_model

from specdecode import SpecDecodeError, SpeculativeGenerator
from specdecode.drafters import LookupDrafter, ModelDrafter
from specdecode.kernels import SMALL_ROWS, WeightFirstLinear, linear_modules, tune_linear_layers


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
    model = tiny_model("llama")
    assert tune_linear_layers(model, "weight_first") == "weight_first"
    assert all(type(m) is WeightFirstLinear for m in linear_modules(model))
    assert tune_linear_layers(model, "standard") == "standard"
    assert all(type(m) is torch.nn.Linear for m in linear_modules(model))
    assert tune_linear_layers(model, "auto") in ("weight_first", "standard")
    with pytest.raises(SpecDecodeError, match="unknown cpu_kernels mode"):
        tune_linear_layers(model, "fast")


def test_speculative_decoding_stays_exact_with_weight_first_layers():
    model = tiny_model("qwen2", seed=0)
    tune_linear_layers(model, "weight_first")
    target = loaded(model)
    prompt = random_prompt(11)
    reference = hf_greedy(model, prompt, 30)
    for drafter in (None, ModelDrafter(target, k=4, confidence=0), LookupDrafter(branches=2)):
        out = SpeculativeGenerator(target, drafter=drafter, cost_model=None).generate(prompt, max_new_tokens=30)
        assert out.token_ids == reference
