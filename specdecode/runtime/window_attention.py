"""The attention a prompt's last tokens (the observation window) pay to every earlier entry, per layer
and KV head: what SnapKV ranks prefix positions by.

The window's queries are recomputed, never read from a prefill: one forward of the window tokens over
a copy of the cache's earlier entries gives each layer's input hidden states; each layer's query
projection and rotary embedding turn them into queries, scored against the cache's own keys. The cache
itself is never written.
"""

from __future__ import annotations

import torch

from ..errors import IncompatibleDrafterError
from .cache import KVCache
from .layers import decoder_of


def supports_window_attention(model: torch.nn.Module) -> bool:
    """Whether `model` exposes what the recompute needs (Llama-family layers: input_layernorm,
    self_attn.q_proj, a rotary embedding on the base model)."""
    base = decoder_of(model)
    layers = getattr(base, "layers", None)
    return (layers is not None and hasattr(base, "rotary_emb") and len(layers) > 0
            and all(hasattr(layer, "input_layernorm") and hasattr(getattr(layer, "self_attn", None), "q_proj")
                    for layer in layers))


def window_attention(model: torch.nn.Module, cache: KVCache, window_ids: torch.Tensor, length: int
                     ) -> list[torch.Tensor]:
    """Attention weights of the window's queries over the cache's first `length` entries, summed over the
    window and over each KV head's group of query heads: one tensor [kv_heads, length] per layer.

    window_ids [w]: the tokens of entries length - w .. length - 1 (the window ends the scored prefix)."""
    if not supports_window_attention(model):
        raise IncompatibleDrafterError(
            f"{type(model).__name__} does not expose Llama-family attention layers (input_layernorm, "
            "self_attn.q_proj, rotary_emb), which kv='snapkv' recomputes queries with; use kv='streaming'.")
    w = window_ids.shape[-1]
    start = length - w
    device = model.device
    entries = cache.layer_entries()  # [(keys [1, kv, length, d], values)] per layer
    prefix = KVCache(model)
    for layer_index, (keys, values) in enumerate(entries):
        prefix.hf.update(keys[..., :start, :], values[..., :start, :], layer_index)  # update copies
    positions = torch.arange(start, length, device=device)[None] + cache.position_shift  # [1, w]
    base = decoder_of(model)
    hidden = base(input_ids=window_ids.to(device)[None], position_ids=positions, cache=prefix.hf, use_cache=True,
                  output_hidden_states=True).hidden_states  # (embeddings, after layer 1, ...): [1, w, hidden]
    cos, sin = base.rotary_emb(hidden[0], positions)  # [1, w, d]
    visible = torch.arange(length, device=device)[None, :] <= torch.arange(start, length, device=device)[:, None]  # [w, length]
    scores = []
    for layer, layer_input, (keys, _) in zip(base.layers, hidden, entries):
        attention = layer.self_attn
        head_dim = keys.shape[-1]
        query = attention.q_proj(layer.input_layernorm(layer_input)).view(1, w, -1, head_dim)  # [1, w, heads, d]
        if hasattr(attention, "q_norm"):
            query = attention.q_norm(query)
        query = query.transpose(1, 2).float()  # [1, heads, w, d]
        query = query * cos[:, None].float() + _rotate_half(query) * sin[:, None].float()
        kv_heads = keys.shape[1]
        groups = query.shape[1] // kv_heads
        grouped = query[0].reshape(kv_heads, groups * w, head_dim)  # [kv, groups*w, d]
        logits = grouped @ keys[0, :, :length].float().transpose(-1, -2) * getattr(attention, "scaling", head_dim ** -0.5)
        logits = logits.view(kv_heads, groups, w, length).masked_fill(~visible, float("-inf"))
        scores.append(logits.softmax(-1).sum(dim=(1, 2)))  # [kv, length]
    return scores


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)
