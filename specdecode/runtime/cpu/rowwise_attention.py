"""Attention that gives every fed token exactly what a one-token forward would give it.

Speculative decoding is lossless when verifying a draft computes, for each token, what plain
decoding computes one token at a time. With float weights a batched attention kernel differs from
the one-token kernel only by rounding (~1e-7), which changes a greedy choice only at a near-tie. A
w8a8 model (quantize.py) rounds every activation to a 7-bit grid per token, and a 1e-7 difference
that crosses a grid boundary becomes a whole grid step, then a different token: batched attention
breaks its exactness; a bf16 target's logits tie often enough that its rounding matters too
(linear.exact_one_token_steps). Here each fed token attends on its own (one query) to exactly the keys it may
see (a slice of the cache, or a gathered copy for a tree's ancestors: SDPA's result depends on the
values, not on the strides, which a test checks), through the same SDPA call (query heads grouped by
their shared key/value head) a one-token step makes, so a 16-token verification computes what 16
one-token steps compute, bit for bit. Its cost against batched SDPA grows with the tokens fed: within
noise for a few tokens, a visible share for a 16-token forward (docs/benchmarks.md: EPYC AVX2,
2026-11-26, forward cost by target weights, the `w8a8` rows). A prompt's prefill is the same forward in
plain and speculative decoding, so it need not match one-token steps: the attention backend passes
`specdecode_batched_prefill=True` (transformers hands forward keywords down to attention functions) and
it runs batched SDPA, which is faster over a long prompt than one query at a time.

transformers' attention registry is the seam: `use_rowwise_attention(model)` registers the function
under `ROWWISE` (with SDPA's mask builder) and switches the model to it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...errors import SpecDecodeError

ROWWISE = "specdecode_rowwise"
BATCHED_PREFILL = "specdecode_batched_prefill"  # a forward keyword: these rows are a prompt, attend them batched


def rowwise_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                      **kwargs) -> tuple[torch.Tensor, None]:
    """query [1, heads, q, d]; key, value [1, kv_heads, kv, d]; attention_mask [1, 1, q, >= kv] (bool,
    True = may attend; or float, 0 = may attend) or None for causal. Returns ([1, q, heads, d], None)."""
    if kwargs.pop(BATCHED_PREFILL, False):
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    if query.shape[0] != 1:
        raise SpecDecodeError(f"row-wise attention (w8a8 and exact bf16 targets) runs one sequence at a time, "
                              f"got a batch of {query.shape[0]}; generate for one prompt per call.")
    _, heads, q_len, head_dim = query.shape
    kv_heads = key.shape[1]
    # a token's query heads grouped by the key/value head they share (GQA): [q, 1, kv_heads, groups, d]
    grouped = query[0].transpose(0, 1).reshape(q_len, 1, kv_heads, heads // kv_heads, head_dim)
    rows = []
    for row in range(q_len):
        row_key, row_value = _visible(key, value, attention_mask, row, q_len)  # [1, kv_heads, visible, d]
        out = F.scaled_dot_product_attention(grouped[row], row_key, row_value, scale=scaling)  # [1, kv_heads, groups, d]
        rows.append(out.reshape(heads, head_dim))
    if q_len == 1:  # a one-token step: the same values without stack's copy
        return rows[0].reshape(1, 1, heads, head_dim), None
    return torch.stack(rows)[None], None  # [1, q, heads, d]


def _visible(key: torch.Tensor, value: torch.Tensor, attention_mask: torch.Tensor | None, row: int,
             q_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The keys and values fed token `row` may see: a prefix (causal rows, one-token steps) is a view,
    any other set (a tree's ancestors) gathered; the values are the same either way."""
    kv_len = key.shape[2]
    if attention_mask is None:  # causal: the keys up to this token's own
        count = kv_len - q_len + row + 1
    else:
        allowed = attention_mask[0, 0, row, :kv_len]  # [kv]
        allowed = allowed if allowed.dtype == torch.bool else allowed == 0
        count = int(allowed.sum())
        if not bool(allowed[:count].all()):
            index = allowed.nonzero().squeeze(1)  # [visible]
            return key.index_select(2, index), value.index_select(2, index)
    return key[:, :, :count], value[:, :, :count]


def use_rowwise_attention(model: torch.nn.Module) -> None:
    """Switch a transformers model to row-wise attention (registered once; registering is idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ROWWISE, rowwise_attention)
    AttentionMaskInterface.register(ROWWISE, sdpa_mask)
    try:
        model.set_attn_implementation(ROWWISE)
    except (ValueError, ImportError, AttributeError) as e:
        raise SpecDecodeError(f"{type(model).__name__} cannot switch its attention implementation ({e}); "
                              "w8a8 needs it to stay exact. Use quantize='fp16' for this model.") from e
