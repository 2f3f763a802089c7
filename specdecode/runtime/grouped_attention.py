"""SDPA for a drafter's forwards of several tokens, without copying the keys and values per query head.

transformers' SDPA attention handles grouped-query attention (several query heads sharing one key/value
head) three ways on a CPU. For several tokens with a mask it repeats every key and value once per query
head (`repeat_kv`), a copy of the whole cache per layer and forward: at long contexts most of a small
drafter's step (Qwen2.5-0.5B, 7 query heads per key/value head, 4 tokens over 8k cached entries: ~7.6 ms
per layer copying against ~1 ms attending, 2-core CPU). For one token without a mask it passes
`enable_gqa`, which PyTorch's CPU kernel runs at about half the speed of stacked rows (1.0 vs 0.46 ms per
layer there). Only one token with a mask gets the stacked rows.

`grouped_attention` stacks the query heads of each key/value head as rows for any number of tokens,
with the mask's rows (if any) repeated to match: one call per layer, keys and values read where they are. A
prompt's prefill (no mask: causal) keeps transformers' own path, whose causal kernel needs no mask at all.
Drafters only (models.load switches a drafts-only model to it): a target's verification keeps the
attention its exactness was calibrated with (SDPA, or row-wise attention).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

GROUPED = "specdecode_grouped_sdpa"


def grouped_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                      **kwargs) -> tuple[torch.Tensor, None]:
    """query [b, heads, q, d]; key, value [b, kv_heads, kv, d]; attention_mask [b or 1, 1, q, kv] (bool,
    True = may attend; or float, added) or None (causal; one token: every key). Returns ([b, q, heads, d], None)."""
    batch, heads, q_len, head_dim = query.shape
    kv_heads = key.shape[1]
    groups = heads // kv_heads
    if groups == 1 or (attention_mask is None and q_len > 1):  # a causal prompt: SDPA's kernel needs no mask
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    stacked = query.reshape(batch, kv_heads, groups * q_len, head_dim)  # row g * q + i: head kv * groups + g, token i
    mask = None if attention_mask is None else attention_mask[..., : key.shape[2]].repeat(1, 1, groups, 1)
    out = F.scaled_dot_product_attention(stacked, key, value, attn_mask=mask, scale=scaling)  # [b, kv, groups*q, d]
    return out.reshape(batch, heads, q_len, head_dim).transpose(1, 2).contiguous(), None


def use_grouped_attention(model: torch.nn.Module) -> None:
    """Switch a drafter running transformers' SDPA to `grouped_attention` (a vision-language model's language
    part only: its vision tower keeps SDPA). Registering is idempotent."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(GROUPED, grouped_attention)
    AttentionMaskInterface.register(GROUPED, sdpa_mask)
    parts = getattr(model.config, "sub_configs", None) or {}
    implementation: str | dict = GROUPED
    if "text_config" in parts:
        implementation = {"": GROUPED, **{part: GROUPED if part == "text_config" else "sdpa" for part in parts}}
    model.set_attn_implementation(implementation)
