"""Linear layers on weights reordered once (runtime/cpu/packed_linear.py): the products F.linear computes, bit
for bit where packing_agrees says so (then load_model may pack), the dense weight on demand, deep copies and
re-wrapping unpacked; a packed target decodes exactly as before, tiny models and SmolLM2 in bf16."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from tiny import cpu_model, loaded, random_prompt, repetitive_prompt, tiny_tokenizer

from specdecode import SpeculativeGenerator, load_model
from specdecode.drafters import LookupDrafter, ModelDrafter
from specdecode.drafters.pruned_head import PrunedHead, head_rows
from specdecode.runtime.cpu.linear import PaddedRowLinear
from specdecode.runtime.cpu.packed_linear import (PackedLinear, PaddedRowPackedLinear, pack_linear_layers,
                                                  packable_layers, packing_agrees, unpack_linear_layers)

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(),
                                reason="needs PyTorch's oneDNN (its CPU builds for x86 and ARM have it)")


def _bf16_model(seed: int = 0) -> torch.nn.Module:
    return cpu_model("llama", seed=seed).to(torch.bfloat16)


def test_a_packed_layer_computes_f_linears_products_and_gives_its_weight_back():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.Linear(96, 32, bias=False)).to(torch.bfloat16)
    model[1].__class__ = PaddedRowLinear
    dense = [layer.weight.detach().clone() for layer in model]
    inputs = [torch.randn(rows, 64, dtype=torch.bfloat16) for rows in (1, 2, 5, 64)]
    with torch.inference_mode():
        expected = [model(x) for x in inputs]
    agrees = packing_agrees(packable_layers(model))
    assert pack_linear_layers(model) == 2 and packable_layers(model) == []
    assert (type(model[0]), type(model[1])) == (PackedLinear, PaddedRowPackedLinear)
    assert [name for name, _ in model.named_parameters()] == ["0.bias"]  # no dense weight is kept
    with torch.inference_mode():
        got = [model(x) for x in inputs]
    assert agrees == all(torch.equal(a, b) for a, b in zip(got, expected))  # (load_model packs only if it does)
    assert torch.equal(model[0].weight, dense[0]) and model[0].weight.shape == (96, 64)
    copied = copy.deepcopy(model)  # e.g. a quantized twin's copy of a target: dense layers again
    assert type(copied[0]) is torch.nn.Linear and torch.equal(copied[0].weight, dense[0])
    assert torch.equal(copied[0].bias, model[0].bias) and copied[0].bias.data_ptr() != model[0].bias.data_ptr()
    assert unpack_linear_layers(model) == 2
    assert (type(model[0]), type(model[1])) == (torch.nn.Linear, PaddedRowLinear)
    assert torch.equal(model[1].weight, dense[1]) and isinstance(model[1].weight, torch.nn.Parameter)


def test_a_packed_bf16_target_decodes_its_tokens_and_margins_unchanged():
    target = loaded(_bf16_model())
    prompt = repetitive_prompt(3)
    drafter = ModelDrafter(loaded(_bf16_model(seed=1)), k=4, tree_width=2, confidence=0)
    before = [SpeculativeGenerator(target, drafter=d, cost_model=None).generate(prompt, max_new_tokens=24)
              for d in (None, drafter, LookupDrafter(tree_width=2))]
    agrees = packing_agrees(packable_layers(target.model))
    assert pack_linear_layers(target.model) > 0
    after = [SpeculativeGenerator(target, drafter=d, cost_model=None).generate(prompt, max_new_tokens=24)
             for d in (None, drafter, LookupDrafter(tree_width=2))]
    assert all(a.token_ids == before[0].token_ids for a in after[1:])  # speculative equals plain, packed
    if agrees:
        assert [a.token_ids for a in after] == [b.token_ids for b in before]
        assert after[0].top2_margins == before[0].top2_margins


def test_a_packed_model_loads_again_unpacked_first():
    """load_model on a model instance it packed before: dense layers again, then its own choice."""
    model = _bf16_model()
    pack_linear_layers(model)
    reloaded = load_model(model, tokenizer=tiny_tokenizer(), dtype="fp32")
    assert reloaded.dtype == torch.float32 and not any(isinstance(m, PackedLinear) for m in reloaded.model.modules())
    out = SpeculativeGenerator(reloaded).generate(random_prompt(2), max_new_tokens=8)
    assert len(out.token_ids) == 8


@pytest.mark.zoo
def test_smollm2_in_bf16_decodes_the_same_tokens_packed_or_not():
    packed = load_model("smollm2-135m-instruct", dtype="bf16")
    standard = load_model("smollm2-135m-instruct", dtype="bf16", cpu_kernels="standard")
    assert "packed" not in standard.linear_kernel
    prompt = [{"role": "user", "content": "List three uses of a paperclip."}]
    plain = {name: SpeculativeGenerator(target, reuse_prompt=False).generate(prompt, max_new_tokens=16,
                                                                          speculative=False)
             for name, target in (("packed", packed), ("standard", standard))}
    speculative = SpeculativeGenerator(packed, drafter=LookupDrafter(), cost_model=None).generate(
        prompt, max_new_tokens=16)
    assert speculative.token_ids == plain["packed"].token_ids
    if "packed" in packed.linear_kernel:  # calibration packed it: same products, same tokens and margins
        assert plain["packed"].token_ids == plain["standard"].token_ids
        assert plain["packed"].top2_margins == plain["standard"].top2_margins


def test_a_packed_output_layer_gives_a_pruned_heads_rows_without_a_dense_copy():
    """A drafter's pruned head (drafters/pruned_head.py) on a packed output layer: the chosen rows' logits, as
    the dense layer's rows give them, from rows reordered once (no dense weight kept)."""
    torch.manual_seed(0)
    head = torch.nn.Linear(32, 500, bias=False).to(torch.bfloat16)
    dense = head.weight.detach().clone()
    model = torch.nn.Sequential(head)
    pack_linear_layers(model)
    hidden = torch.randn(3, 32, dtype=torch.bfloat16)
    for rows in (torch.arange(100), torch.tensor([3, 250, 499])):
        got = head_rows(model[0], rows)(hidden)  # [3, r]
        torch.testing.assert_close(got.float(), F.linear(hidden, dense[rows]).float(), rtol=2e-2, atol=2e-2)
    pruned = PrunedHead(model[0], 100, head_rows(model[0], torch.arange(100)), prompt_ids=[7, 300])
    logits = pruned.logits(hidden, 500)  # [3, 500]
    assert torch.isfinite(logits[:, [7, 300]]).all() and torch.isinf(logits[:, 200]).all()
    assert [name for name, _ in model.named_parameters()] == []
