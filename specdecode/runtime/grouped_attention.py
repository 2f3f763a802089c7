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
VISIBLE_PREFIX = "specdecode_visible_prefix"  # a forward keyword: the leading keys every fed token may attend to


def grouped_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                      **kwargs) -> tuple[torch.Tensor, None]:
    """query [b, heads, q, d]; key, value [b, kv_heads, kv, d]; attention_mask [b or 1, 1, q, kv] (bool,
    True = may attend; or float, added) or None (causal; one token: every key). With the forward keyword
    VISIBLE_PREFIX = p > 0 (every fed token may attend to the first p keys), the prefix and the rest are
    attended apart and merged (`split_attention`). Returns ([b, q, heads, d], None)."""
    batch, heads, q_len, head_dim = query.shape
    kv_heads = key.shape[1]
    groups = heads // kv_heads
    prefix = kwargs.pop(VISIBLE_PREFIX, 0) if attention_mask is not None else 0  # the runner sets it with a mask
    if not prefix and (groups == 1 or (attention_mask is None and q_len > 1)):  # a causal prompt: no mask needed
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    stacked = query.reshape(batch, kv_heads, groups * q_len, head_dim)  # row g * q + i: head kv * groups + g, token i
    mask = None if attention_mask is None else attention_mask[..., : key.shape[2]].repeat(1, 1, groups, 1)
    if prefix:
        out = split_attention(stacked, key, value, mask, prefix, scaling)  # [b, kv, groups*q, d]
    else:
        out = F.scaled_dot_product_attention(stacked, key, value, attn_mask=mask, scale=scaling)  # [b, kv, groups*q, d]
    return out.reshape(batch, heads, q_len, head_dim).transpose(1, 2).contiguous(), None


def split_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor, prefix: int,
                    scaling: float | None = None) -> torch.Tensor:
    """query [b, h, r, d] over key, value [b, h, kv, d] under mask [b or 1, 1 or h, r, kv] (bool, True = may
    attend; or float, added), where every row may attend to the first `prefix` keys: the prefix through
    FlashAttention's kernel without a mask (it returns each row's log-sum-exp), the last kv - prefix keys (a
    draft tree) under their mask, merged by log-sum-exp. Equal to one masked SDPA call up to rounding.
    Returns [b, h, r, d] in the query's dtype."""
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    out, lse = _attention_with_lse(query, key[:, :, :prefix], value[:, :, :prefix], scale)  # [b, h, r, d], [b, h, r]
    scores = query.float() @ key[:, :, prefix:].float().transpose(-1, -2) * scale  # [b, h, r, kv - prefix]
    tail = mask[..., prefix:]
    scores = scores.masked_fill(~tail, float("-inf")) if tail.dtype == torch.bool else scores + tail.float()
    tail_lse = torch.logsumexp(scores, dim=-1)  # [b, h, r]: every row sees at least itself
    tail_out = torch.softmax(scores, dim=-1) @ value[:, :, prefix:].float()  # [b, h, r, d]
    top = torch.maximum(lse, tail_lse)
    prefix_weight, tail_weight = (torch.exp(x - top)[..., None] for x in (lse, tail_lse))  # [b, h, r, 1] each
    merged = (out.float() * prefix_weight + tail_out * tail_weight) / (prefix_weight + tail_weight)
    return merged.to(query.dtype)


def _attention_with_lse(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Unmasked attention of query [b, h, r, d] over key, value [b, h, n, d] -> (output [b, h, r, d], each row's
    log-sum-exp of its scaled scores [b, h, r]): PyTorch's FlashAttention kernel (a GPU's for fp16/bf16, else its
    memory-efficient kernel, which also returns it; the CPU's for every dtype)."""
    if query.device.type != "cuda":
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(query, key, value, 0.0, False, scale=scale)
    if query.dtype in (torch.float16, torch.bfloat16):
        return torch.ops.aten._scaled_dot_product_flash_attention(query, key, value, 0.0, False, False, scale=scale)[:2]
    out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(query, key, value, None, True, 0.0, False,
                                                                       scale=scale)[:2]
    return out, lse[..., : query.shape[2]]  # its log-sum-exp is padded to whole blocks of rows


def use_grouped_attention(model: torch.nn.Module) -> None:
    """Switch a model running transformers' SDPA to `grouped_attention` (a VLM's language part only)."""
    switch_attention(model, GROUPED, grouped_attention)
