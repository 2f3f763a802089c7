"""Fused projections (q/k/v, gate/up): the same results as the separate layers, one product per input."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny import cpu_model, random_prompt

from specdecode.runtime.cpu.fusion import FusedProjection, ProjectionPart, fuse_projections
from specdecode.runtime.cpu.quantize import Int8Linear, RowInt8Linear, quantize_model
from specdecode.runtime.cpu.rowwise_attention import use_rowwise_attention


def logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(ids[None]).logits[0]  # [q, vocab]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_a_fused_model_computes_what_it_did(arch):
    model = cpu_model(arch, seed=1)
    ids = torch.tensor(random_prompt(3))
    expected = logits(model, ids)
    assert fuse_projections(model) == 2 * 2  # two decoder layers, q/k/v and gate/up each
    attention, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    assert isinstance(attention.qkv_proj, FusedProjection) and isinstance(mlp.gate_up_proj, FusedProjection)
    assert all(type(getattr(attention, name)) is ProjectionPart for name in ("q_proj", "k_proj", "v_proj"))
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in cpu_model(arch, seed=1).parameters())
    torch.testing.assert_close(logits(model, ids), expected, atol=1e-5, rtol=1e-5)
    assert fuse_projections(model) == 0  # nothing left to fuse


def test_w8a8_fusion_moves_no_bit():
    """Per-channel weight scales and a scale per row: a fused w8a8 product is the separate ones side by side."""
    model = cpu_model("qwen2", seed=2)
    separate = copy.deepcopy(model)
    quantize_model(model, "w8a8")  # fuses, then quantizes
    assert isinstance(model.model.layers[0].self_attn.qkv_proj.fused, RowInt8Linear)
    for name, module in list(separate.named_modules()):
        if type(module) is torch.nn.Linear:
            parent, _, child = name.rpartition(".")
            setattr(separate.get_submodule(parent), child, RowInt8Linear(module.weight, module.bias))
    use_rowwise_attention(separate)  # as quantize_model does for a w8a8 model
    ids = torch.tensor(random_prompt(4))
    assert torch.equal(logits(model, ids), logits(separate, ids))


def test_one_product_per_input_and_a_new_one_for_another():
    torch.manual_seed(0)
    layers = [torch.nn.Linear(8, size) for size in (6, 2, 2)]
    group = FusedProjection(layers)
    q, k, v = (ProjectionPart(group, index) for index in range(3))
    products = []
    group.fused.register_forward_hook(lambda module, args, out: products.append(out))
    x, other = torch.randn(3, 8), torch.randn(3, 8)
    with torch.no_grad():
        parts = q(x), k(x), v(x)
        assert len(products) == 1
        for part, layer in zip(parts, layers):
            torch.testing.assert_close(part, layer(x))
        torch.testing.assert_close(k(other), layers[1](other))  # another input: its own product
        torch.testing.assert_close(k(other), layers[1](other))  # a part taken twice: computed again
        x.mul_(2)  # the same tensor changed in place: not the product held
        for part, layer in zip((q(x), k(x), v(x)), layers):
            torch.testing.assert_close(part, layer(x))
    assert len(products) == 4
    assert group._held.parts == () and group._held.input is None  # every part taken: nothing held


def test_groups_of_another_kind_are_left_alone():
    model = cpu_model("llama", seed=0)
    attention = model.model.layers[0].self_attn
    attention.k_proj = Int8Linear(attention.k_proj.weight, None, torch.float32)  # quantized already
    mlp = model.model.layers[1].mlp
    mlp.up_proj = torch.nn.Linear(32, mlp.up_proj.out_features)  # reads another width
    assert fuse_projections(model) == 2  # layer 0's gate/up and layer 1's q/k/v
    assert not hasattr(attention, "qkv_proj") and not hasattr(mlp, "gate_up_proj")
    assert isinstance(model.model.layers[0].mlp.gate_up_proj, FusedProjection)
    assert isinstance(model.model.layers[1].self_attn.qkv_proj, FusedProjection)
