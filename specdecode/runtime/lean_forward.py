"""A lean decoder forward for the steps after the prompt: transformers' ops, without its per-call machinery.

Once a CPU target's products are cheap (w8a8 int8 products), the rest of a transformers forward is a
large share of a step: output capturing, mask building, keyword plumbing, the attention-interface lookup
and hundreds of module calls per token.
`lean_forward` runs a Llama-family decoder (Llama, Qwen2, Mistral: RMSNorm, rotary q/k, one attention
and one gated MLP per layer) through the model's own modules (its norms, projections, whatever
quantized or fused layers replaced them, its rotary embedding and activation) in transformers' order
of operations, with the attention function transformers would call (the row-wise attention of exact
targets, or its own SDPA function), so its results are those of the model's own forward bit for bit.
That is checked, not assumed: `matches_own_forward(model)` runs both forwards on a few tokens (a
prefix, a one-token step, a two-token chain, a two-token tree) and says no (keep transformers'
forward) unless every output is equal; the attention backend asks once per model (the probe is a few
small forwards). On a CPU it runs every step where it matches (`fits`); on a GPU only the static steps of
runtime/cuda use it (`fits(model, any_device=True)`): its ops are the ones a CUDA graph captures, with
cache layers that write at given slots. What a step costs on this machine: `specdecode profile`; measured
runs: docs/benchmarks.md.

Prompts keep transformers' forward: a prefill is one batched forward per generation, its overhead small.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from .cache import KVCache
from .cpu.fusion import products_of
from .cpu.rowwise_attention import fold_rows_of, rowwise_attention, runs_sdpa, visible_keys
from .grouped_attention import GROUPED, grouped_attention
from .layers import decoder_of


def _supported_layers() -> tuple[type, ...]:
    """The decoder layer classes whose forward lean_forward repeats (same structure, same op order). Qwen-VL's
    language models are Qwen2's layers under a rotary embedding that composes M-RoPE's sections (for text
    positions, equal on every section)."""
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer
    from transformers.models.mistral.modeling_mistral import MistralDecoderLayer
    from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLDecoderLayer
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLDecoderLayer

    return LlamaDecoderLayer, Qwen2DecoderLayer, MistralDecoderLayer, Qwen2VLDecoderLayer, Qwen2_5_VLDecoderLayer


def fits(model: torch.nn.Module, any_device: bool = False) -> bool:
    """Whether the model has the structure lean_forward repeats (a Llama-family model, or a VLM whose
    language model is one, on sdpa or row-wise attention; on the CPU unless `any_device`) and no hooks on
    the modules whose calls it skips (a hook may have side effects)."""
    body = decoder_of(model)
    layers = getattr(body, "layers", None)
    attention = getattr(body, "config", model.config)._attn_implementation
    if body is model or not layers or not runs_sdpa(attention):
        return False
    if (model.device.type != "cpu" and not any_device) or not hasattr(model, "lm_head"):
        return False
    if not all(hasattr(body, name) for name in ("embed_tokens", "norm", "rotary_emb")):
        return False
    if "sliding_attention" in (getattr(body.config, "layer_types", None) or ()):
        return False
    if not all(type(layer) in _supported_layers() for layer in layers):
        return False
    bypassed = [model, model.base_model, body, *layers, *(layer.self_attn for layer in layers), *(layer.mlp for layer in layers)]
    return not any(module._forward_hooks or module._forward_pre_hooks for module in bypassed)


def lean_forward(model: torch.nn.Module, cache_layers: Sequence, input_ids: torch.Tensor, positions: torch.Tensor,
                 attention_mask: torch.Tensor | None = None, logits_to_keep: int = 0,
                 hidden: bool = False, keywords: dict | None = None) -> torch.Tensor:
    """The model's forward after a prompt (its cache has entries), for a model that `fits`.

    cache_layers: one per decoder layer, `update(key, value)` storing the fed entries and returning the keys
    and values to attend (a KVCache's `hf.layers`, or runtime/cuda's slot writers, which always come with a
    mask); input_ids, positions [q]; attention_mask [1, 1, q, keys] bool (True = may attend) or None for
    causal (after the first layer's `get_seq_length()` entries); keywords: the
    attention function's other keywords (runner.py). Returns logits [q or logits_to_keep, vocab] or, with
    hidden=True, the final hidden states [q, hidden_size]. A KVCache grows by q entries, as with the
    model's own forward. Modules are looked up on every call, so a layer replaced later (quantized, say)
    is the one used."""
    body, q = decoder_of(model), input_ids.shape[-1]
    implementation = body.config._attn_implementation
    fold_rows = fold_rows_of(implementation)  # None: SDPA
    rowwise = fold_rows is not None
    if rowwise:  # every layer attends under the same mask: its keys' layout is worked out once per forward
        visible = visible_keys(attention_mask, q, cache_layers[0].get_seq_length() + q)
        attend = partial(rowwise_attention, fold_rows=fold_rows, visible=visible, **(keywords or {}))
    else:
        attend = partial(grouped_attention if implementation == GROUPED else sdpa_attention_forward,
                         **(keywords or {}))
    if attention_mask is None and q > 1 and not rowwise:  # SDPA's is_causal would ignore the cache
        past = cache_layers[0].get_seq_length()
        attention_mask = torch.ones(q, past + q, dtype=torch.bool, device=input_ids.device).tril(past)[None, None]
    states = body.embed_tokens(input_ids[None])  # [1, q, hidden]
    cos, sin = body.rotary_emb(states, positions[None])  # each [1, q, head_dim]
    rotary = (cos.unsqueeze(1), sin.unsqueeze(1))  # each [1, 1, q, head_dim]
    for index, layer in enumerate(body.layers):
        attention, mlp = layer.self_attn, layer.mlp
        projected = products_of([attention.q_proj, attention.k_proj, attention.v_proj])(
            layer.input_layernorm(states))  # query [1, q, heads * d], key and value [1, q, kv_heads * d]
        states = states + _attention(attention, *projected, rotary, cache_layers[index], attention_mask, attend)
        gate, up = products_of([mlp.gate_proj, mlp.up_proj])(layer.post_attention_layernorm(states))  # [1, q, inter]
        states = states + mlp.down_proj(mlp.act_fn(gate) * up)
    states = body.norm(states)  # [1, q, hidden]
    if hidden:
        return states[0]
    kept = states if not logits_to_keep else states[:, -logits_to_keep:]
    return model.lm_head(kept)[0]  # [q or logits_to_keep, vocab]


def _attention(attention: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               rotary: tuple[torch.Tensor, torch.Tensor], cache_layer, attention_mask: torch.Tensor | None,
               attend: Callable) -> torch.Tensor:
    """The projected query, key, value states [1, q, (kv_)heads * d] -> the attention block's output
    [1, q, hidden] (o_proj applied), with `attend`, the attention function transformers would call (row-wise,
    grouped SDPA or SDPA; for row-wise, attention_mask None = causal, to the last key)."""
    shape = (*query.shape[:-1], -1, attention.head_dim)  # [1, q, heads, head_dim]
    query = _rotate(query.view(shape).transpose(1, 2), *rotary)  # [1, heads, q, d]
    key = _rotate(key.view(shape).transpose(1, 2), *rotary)  # [1, kv_heads, q, d]
    value = value.view(shape).transpose(1, 2)  # [1, kv_heads, q, d]
    keys, values = cache_layer.update(key, value)  # [1, kv_heads, past + q, d] each
    out, _ = attend(attention, query, keys, values, attention_mask, dropout=0.0, scaling=attention.scaling)
    return attention.o_proj(out.reshape(*shape[:-2], -1).contiguous())  # [1, q, hidden]


def _rotate(states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding of states [1, heads, q, d], in transformers' order of operations."""
    half = states.shape[-1] // 2
    rotated = torch.cat((-states[..., half:], states[..., :half]), dim=-1)  # [1, heads, q, d]
    return (states * cos) + (rotated * sin)


def matches_own_forward(model: torch.nn.Module) -> bool:
    """Whether the model `fits` and lean_forward gives its own forward's results bit for bit on a probe
    (a 3-token prefix, then a one-token step, a two-token chain and a two-token tree)."""
    if not fits(model):
        return False
    device = model.device
    ids = torch.tensor([1, 2, 3, 4, 5, 6, 7, 8], device=device) % decoder_of(model).config.vocab_size  # [8]
    tree_mask = torch.tensor([[True] * 6 + [True, False], [True] * 6 + [False, True]], device=device)  # [2, 8]
    steps = [(ids[3:4], torch.arange(3, 4, device=device)),  # one token after a 3-token prefix
             (ids[4:6], torch.arange(4, 6, device=device)),  # a chain of two
             (ids[6:], torch.tensor([6, 6], device=device), tree_mask[None, None])]  # two siblings
    outputs = []
    with torch.inference_mode():
        for lean in (False, True):
            cache = KVCache(model)
            _own_forward(model, cache, ids[:3], torch.arange(3, device=device))
            outputs.append([lean_forward(model, cache.hf.layers, *step) if lean else _own_forward(model, cache, *step)
                            for step in steps])
    own, mine = outputs
    return all(torch.equal(a, b) for a, b in zip(own, mine))


def _own_forward(model: torch.nn.Module, cache: KVCache, input_ids: torch.Tensor, positions: torch.Tensor,
                 attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The model's own forward, as the attention backend calls it: logits [q, vocab]."""
    kwargs = {} if attention_mask is None else {"attention_mask": attention_mask}
    return model(input_ids=input_ids[None], position_ids=positions[None], cache=cache.hf, use_cache=True,
                 **kwargs).logits[0]
