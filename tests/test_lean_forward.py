"""The lean decode forward: the model's own results bit for bit, or not used at all."""

from __future__ import annotations

import pytest
import torch
from tiny import cpu_model, random_prompt
from transformers import GPT2Config, GPT2LMHeadModel

from specdecode.runtime.runner import SDPABackend
from specdecode.runtime.cache import KVCache
from specdecode.runtime.lean_forward import fits, matches_own_forward
from specdecode.runtime.cpu.quantize import quantize_model
from specdecode.runtime.cpu.rowwise_attention import use_rowwise_attention


def variant(arch: str, kind: str) -> torch.nn.Module:
    model = cpu_model(arch, seed=3)
    if kind == "w8a8":
        quantize_model(model, "w8a8")  # fused, int8, row-wise attention
    elif kind == "bf16-rowwise":
        model = model.to(torch.bfloat16)
        use_rowwise_attention(model)
    return model


def steps(backend: SDPABackend, model: torch.nn.Module) -> list[torch.Tensor]:
    """A prefill, one-token steps, a chain, a tree, hidden states and kept logits: every output."""
    cache, outputs = KVCache(model), []
    prompt = torch.tensor(random_prompt(5, length=10))
    backend.forward(model, cache, prompt, torch.arange(10), prefill=True)
    for token in (7, 11):
        outputs.append(backend.forward(model, cache, torch.tensor([token]), torch.tensor([cache.length])))
    outputs.append(backend.forward(model, cache, torch.tensor([3, 4, 5]), torch.arange(12, 15)))
    tree_mask = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 1, 1]], dtype=torch.bool)  # [4, 4]
    outputs.append(backend.forward(model, cache, torch.tensor([8, 9, 10, 12]), torch.tensor([15, 16, 16, 17]),
                                   tree_mask))
    cache.keep(15, [0, 2, 3])
    outputs.append(backend.forward(model, cache, torch.tensor([1, 2]), torch.arange(18, 20), hidden=True))
    outputs.append(backend.forward(model, cache, torch.tensor([6, 7]), torch.arange(20, 22), logits_to_keep=1))
    return outputs


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("kind", ["fp32", "w8a8", "bf16-rowwise"])
def test_lean_steps_equal_the_models_own_bit_for_bit(arch, kind):
    model = variant(arch, kind)
    with torch.inference_mode():
        assert matches_own_forward(model)
        lean, own = SDPABackend(), SDPABackend(lean=False)
        lean_outputs, own_outputs = steps(lean, model), steps(own, model)
    assert lean.runs_lean(model) and not own.runs_lean(model)
    assert [tuple(o.shape) for o in lean_outputs] == [(1, 96), (1, 96), (3, 96), (4, 96), (2, 64), (1, 96)]
    for mine, theirs in zip(lean_outputs, own_outputs):
        assert torch.equal(mine, theirs)


def test_a_model_whose_forward_differs_keeps_its_own():
    """A hook on a decoder layer runs in the model's own forward only: such a model keeps that forward."""
    model = cpu_model("llama", seed=4)
    assert matches_own_forward(model)
    model.model.layers[1].register_forward_hook(lambda module, args, output: output * 1.5)
    assert not fits(model) and not matches_own_forward(model)
    layer = model.model.layers[1]
    layer._forward_hooks.clear()
    own_forward = layer.forward
    layer.forward = lambda *args, **kwargs: own_forward(*args, **kwargs) * 1.5  # not a hook: the probe must see it
    assert fits(model) and not matches_own_forward(model)
    backend = SDPABackend()
    with torch.inference_mode():
        cache = KVCache(model)
        backend.forward(model, cache, torch.tensor(random_prompt(6)), torch.arange(12), prefill=True)
        step = backend.forward(model, cache, torch.tensor([5]), torch.tensor([12]))
        cache.crop(12)
        own = SDPABackend(lean=False).forward(model, cache, torch.tensor([5]), torch.tensor([12]))
    assert torch.equal(step, own)  # the hook's effect is kept: transformers' forward ran


def test_a_first_forward_without_prefill_runs_the_models_own():
    """The lean forward serves steps after a prompt; a first forward on an empty cache goes to transformers."""
    model = cpu_model("llama", seed=6)
    backend = SDPABackend()
    with torch.inference_mode():
        first = backend.forward(model, KVCache(model), torch.tensor([1, 2, 3]), torch.arange(3))
        own = SDPABackend(lean=False).forward(model, KVCache(model), torch.tensor([1, 2, 3]), torch.arange(3))
    assert torch.equal(first, own) and model not in backend._lean_models


def test_other_models_and_attentions_keep_their_own():
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=96, n_embd=32, n_layer=1, n_head=2)).eval()
    eager = cpu_model("qwen2", seed=5)
    eager.config._attn_implementation = "eager"
    assert not matches_own_forward(gpt2) and not matches_own_forward(eager)


def test_a_model_changed_after_its_probe_runs_what_it_has_now():
    """Modules are looked up on every call: a model quantized after its first steps is run as quantized."""
    model = cpu_model("qwen2", seed=7)
    lean = SDPABackend()
    with torch.inference_mode():
        steps(lean, model)
        assert lean.runs_lean(model)
        quantize_model(model, "w8a8")  # new layers, fused products, row-wise attention
        assert all(torch.equal(a, b) for a, b in zip(steps(lean, model), steps(SDPABackend(lean=False), model)))


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "qwen2_5_vl", "idefics3", "smolvlm"])
def test_a_vision_language_models_text_steps_run_lean(family):
    """A VLM's language model is a Llama-family decoder (Qwen-VL's under M-RoPE's composed rotary embedding):
    its text steps run lean, bit for bit as its own forward (the image tests decode through it and match
    transformers' generate)."""
    from tiny import tiny_idefics3, tiny_llava, tiny_qwen2_vl

    model = {"llava": tiny_llava, "qwen2_vl": tiny_qwen2_vl, "idefics3": tiny_idefics3,
             "qwen2_5_vl": lambda: tiny_qwen2_vl(family="qwen2_5_vl"),
             "smolvlm": lambda: tiny_idefics3(family="smolvlm")}[family]()
    assert fits(model) and matches_own_forward(model)
