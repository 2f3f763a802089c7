"""SDPA for forwards of several tokens without copying the keys and values per query head.

transformers' SDPA attention handles grouped-query attention (several query heads sharing one key/value
head) three ways on a CPU. For several tokens with a mask it repeats every key and value once per query
head (`repeat_kv`), a copy of the whole cache per layer and forward; for one token without a mask it
passes `enable_gqa`; only one token with a mask gets the stacked rows used here. Measured side by side in
one run (2-core AMD EPYC, Qwen2.5-0.5B's shapes: 7 query heads per key/value head, fp32, 8192 cached
entries, each layer its own tensors): 4 tokens under a mask 7.0 ms per layer repeated vs 2.0 stacked; one
token 1.10 ms with enable_gqa vs 0.86 stacked. The whole 0.5B drafter over an 8k-token cache, alternating
both in one process (scripts/grouped_attention_ab.py): one token 51.1 vs 46.4 ms a forward, four tokens
192.5 vs 73.7 ms. An fp32 Qwen2.5-1.5B target on 4k-token documents (scripts/target_grouped_ab.py): plain
decoding 2.33 vs 2.52 tokens/s, speculative decoding with the 0.5B drafter 3.20 vs 5.01.

`grouped_attention` stacks the query heads of each key/value head as rows for any number of tokens,
with the mask's rows (if any) repeated to match: one call per layer, keys and values read where they are. A
prompt's prefill (no mask: causal) keeps transformers' own path, whose causal kernel needs no mask at all.
models.load switches every SDPA model to it (drafters and targets, text or a VLM's language part) except an
exact target, which attends row-wise instead (cpu/rowwise_attention.py): a one-token step and a
verification then differ only by rounding, as they did under transformers' SDPA.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .layers import switch_attention

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
    """Switch a drafter running transformers' SDPA to `grouped_attention` (a VLM's language part only)."""
    switch_attention(model, GROUPED, grouped_attention)
