"""A lean decoder forward for the steps after the prompt: transformers' ops, without its per-call machinery.

Once a CPU target's products are cheap (w8a8: ~24 ms of int8 products per Qwen2.5-1.5B token), the rest
of a transformers forward is a large share of a step: output capturing, mask building, keyword plumbing,
the attention-interface lookup and ~450 module calls, ~10 ms a step on an AVX-512 EPYC (2 threads).
`LeanForward` runs a Llama-family decoder (Llama, Qwen2, Mistral: RMSNorm, rotary q/k, one attention
and one gated MLP per layer) through the model's own modules (its norms, projections, whatever
quantized or fused layers replaced them, its rotary embedding and activation) in transformers' order
of operations, with the attention function transformers would call (the row-wise attention of exact
targets, or its own SDPA function), so its results are those of the model's own forward bit for bit.
That is checked, not assumed: `lean_forward(model)` runs both forwards on a few tokens (a prefix, a
one-token step, a two-token chain, a two-token tree) and returns None (keep transformers' forward)
unless every output is equal. CPU models only: on a GPU the check would hold, but the gain there is
unmeasured (no GPU here), so GPU models keep transformers' forward. Measured side by side in one process, one-token steps of
Qwen2.5-Coder-1.5B w8a8 after 400 tokens: 31.6 vs 34.5 ms.

Prompts keep transformers' forward: a prefill is one batched forward per generation, its overhead small.
"""

from __future__ import annotations

import torch

from .cache import KVCache
from .fusion import products_of
from .rowwise_attention import ROWWISE, rowwise_attention

ATTENTION = ("sdpa", ROWWISE)  # the attention implementations a lean forward calls as transformers would


def _supported_layers() -> tuple[type, ...]:
    """The decoder layer classes whose forward LeanForward repeats (same structure, same op order)."""
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer
    from transformers.models.mistral.modeling_mistral import MistralDecoderLayer
    from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer

    return LlamaDecoderLayer, Qwen2DecoderLayer, MistralDecoderLayer


class LeanForward:
    """Decode and verification forwards of one Llama-family model (attention: sdpa or row-wise)."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.body = model.base_model  # embed_tokens, layers, norm, rotary_emb
        self.rowwise = model.config._attn_implementation == ROWWISE
        if self.rowwise:
            self.attend = rowwise_attention  # None = causal, aligned to the last key
        else:
            from transformers.integrations.sdpa_attention import sdpa_attention_forward

            self.attend = sdpa_attention_forward  # None = no mask for one token, SDPA's is_causal for more
        self.qkv = [products_of([layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj])
                    for layer in self.body.layers]  # per layer: x -> (query, key, value) states
        self.gate_up = [products_of([layer.mlp.gate_proj, layer.mlp.up_proj]) for layer in self.body.layers]

    @staticmethod
    def fits(model: torch.nn.Module) -> bool:
        """Whether the model has the structure this forward repeats (checked again, bit for bit, by
        lean_forward) and no hooks on the modules whose calls it skips (a hook may have side effects)."""
        body = getattr(model, "base_model", None)
        layers = getattr(body, "layers", None)
        if body is model or not layers or model.config._attn_implementation not in ATTENTION:
            return False
        if model.device.type != "cpu":
            return False
        if not all(hasattr(body, name) for name in ("embed_tokens", "norm", "rotary_emb")):
            return False
        if "sliding_attention" in (getattr(model.config, "layer_types", None) or ()):
            return False
        supported = _supported_layers()
        if not (all(type(layer) in supported for layer in layers) and hasattr(model, "lm_head")):
            return False
        bypassed = [model, body, *layers, *(layer.self_attn for layer in layers), *(layer.mlp for layer in layers)]
        return not any(module._forward_hooks or module._forward_pre_hooks for module in bypassed)  # their calls skipped

    def __call__(self, cache: KVCache, input_ids: torch.Tensor, positions: torch.Tensor,
                 attention_mask: torch.Tensor | None = None, logits_to_keep: int = 0,
                 hidden: bool = False) -> torch.Tensor:
        """input_ids, positions [q]; attention_mask [1, 1, q, past + q] bool (True = may attend) or None
        for causal. Returns logits [q or logits_to_keep, vocab] or, with hidden=True, the final hidden
        states [q, hidden_size]. The cache grows by q entries, as with the model's own forward."""
        body, q = self.body, input_ids.shape[-1]
        if attention_mask is None and q > 1 and not self.rowwise:  # SDPA's is_causal ignores the cache
            past = cache.length
            attention_mask = torch.ones(q, past + q, dtype=torch.bool, device=input_ids.device).tril(past)[None, None]
        states = body.embed_tokens(input_ids[None])  # [1, q, hidden]
        cos, sin = body.rotary_emb(states, positions[None])  # each [1, q, head_dim]
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # [1, 1, q, head_dim]
        for index, layer in enumerate(body.layers):
            residual = states
            query, key, value = self.qkv[index](layer.input_layernorm(states))  # [1, q, heads * d] ...
            states = residual + self._attention(layer.self_attn, query, key, value, cos, sin,
                                                cache.hf.layers[index], attention_mask)
            residual = states
            gate, up = self.gate_up[index](layer.post_attention_layernorm(states))  # [1, q, intermediate] each
            states = residual + layer.mlp.down_proj(layer.mlp.act_fn(gate) * up)
        states = body.norm(states)  # [1, q, hidden]
        if hidden:
            return states[0]
        kept = states if not logits_to_keep else states[:, -logits_to_keep:]
        return self.model.lm_head(kept)[0]  # [q or logits_to_keep, vocab]

    def _attention(self, attention: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                   cos: torch.Tensor, sin: torch.Tensor, cache_layer,
                   attention_mask: torch.Tensor | None) -> torch.Tensor:
        """The projected query, key, value states [1, q, (kv_)heads * d] -> the attention block's output
        [1, q, hidden] (o_proj applied)."""
        shape = (*query.shape[:-1], -1, attention.head_dim)  # [1, q, heads, head_dim]
        query = query.view(shape).transpose(1, 2)  # [1, heads, q, d]
        key = key.view(shape).transpose(1, 2)  # [1, kv_heads, q, d]
        value = value.view(shape).transpose(1, 2)  # [1, kv_heads, q, d]
        query, key = _rotate(query, cos, sin), _rotate(key, cos, sin)
        keys, values = cache_layer.update(key, value)  # [1, kv_heads, past + q, d] each
        out, _ = self.attend(attention, query, keys, values, attention_mask, dropout=0.0,
                             scaling=attention.scaling)  # [1, q, heads, d]
        return attention.o_proj(out.reshape(*shape[:-2], -1).contiguous())  # [1, q, hidden]


def _rotate(states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding of states [1, heads, q, d], in transformers' order of operations."""
    half = states.shape[-1] // 2
    rotated = torch.cat((-states[..., half:], states[..., :half]), dim=-1)  # [1, heads, q, d]
    return (states * cos) + (rotated * sin)


def lean_forward(model: torch.nn.Module) -> LeanForward | None:
    """A LeanForward for `model` if it has the structure and gives the model's own results bit for bit
    on a probe (a 3-token prefix, a one-token step, a two-token chain, a two-token tree), else None."""
    if not LeanForward.fits(model):
        return None
    lean = LeanForward(model)
    device = model.device
    ids = torch.tensor([1, 2, 3, 4, 5, 6, 7, 8], device=device) % model.config.vocab_size  # [8]
    tree_mask = torch.tensor([[True] * 6 + [True, False], [True] * 6 + [False, True]], device=device)  # [2, 8]
    steps = [(ids[3:4], torch.arange(3, 4, device=device)),  # one token after a 3-token prefix
             (ids[4:6], torch.arange(4, 6, device=device)),  # a chain of two
             (ids[6:], torch.tensor([6, 6], device=device), tree_mask[None, None])]  # two siblings
    outputs = []
    with torch.inference_mode():
        for run_lean in (False, True):
            cache = KVCache(model)
            _own_forward(model, cache, ids[:3], torch.arange(3, device=device))
            outputs.append([lean(cache, *step) if run_lean else _own_forward(model, cache, *step) for step in steps])
    own, mine = outputs
    return lean if all(torch.equal(a, b) for a, b in zip(own, mine)) else None


def _own_forward(model: torch.nn.Module, cache: KVCache, input_ids: torch.Tensor, positions: torch.Tensor,
                 attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The model's own forward, as the attention backend calls it: logits [q, vocab]."""
    kwargs = {} if attention_mask is None else {"attention_mask": attention_mask}
    return model(input_ids=input_ids[None], position_ids=positions[None], cache=cache.hf, use_cache=True,
                 **kwargs).logits[0]
