"""Attention that gives every fed token exactly what a one-token forward would give it.

Speculative decoding is lossless when verifying a draft computes, for each token, what plain
decoding computes one token at a time. With float weights a batched attention kernel differs from
the one-token kernel only by rounding (~1e-7), which changes a greedy choice only at a near-tie. A
w8a8 model (quantize.py) rounds every activation to a 7-bit grid per token, and a 1e-7 difference
that crosses a grid boundary becomes a whole grid step, then a different token: batched attention
breaks its exactness; a bf16 target's logits tie often enough that its rounding matters too
(linear.exact_one_token_steps).

So every token's attention here is computed the way a one-token step computes it, by construction:
one SDPA call (query heads grouped by their shared key/value head) over its visible keys as one run
from the first, padded with masked keys to a multiple of `KEY_BLOCK`. PyTorch's CPU kernel walks the
keys in blocks of 512, so every token, whatever the cache's length and whichever call it is in, sees
whole blocks only; the masked keys add exact zeros. A verification's tokens may share one call ("fold"):
their keys are read once instead of once per token, which is most of the attention's cost at long
contexts. A token keeps its bits in a shared call only as long as the kernel treats each query row on
its own, which depends on the kernel, the machine and the row count (PyTorch's bf16 kernel switches to
packed products from 64 query rows): `exact_fold_rows` measures the widest fold per model and machine,
once (runtime/calibrate.py keeps it), and `use_rowwise_attention(model, fold_rows)` sets it. The tokens
of a tree's later branch see the cached keys and their ancestors, which are not one run: for their call the
branch's entries (a few per head) are moved right after the keys they share with the first branch, where a
one-token step would have them, and put back after (SDPA's result depends on the values, not on where they
are stored), so a branch folds like a chain instead of copying the whole cache per token.

A prompt's prefill is the same forward in plain and speculative decoding, so it need not match
one-token steps: the attention backend passes `specdecode_batched_prefill=True` (transformers hands
forward keywords down to attention functions) and it runs batched SDPA.

transformers' attention registry is the seam: the function is registered under a name per fold
(`rowwise_name`), with SDPA's mask builder, and the model switched to it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

import torch
import torch.nn.functional as F

from ...errors import SpecDecodeError
from ..cache import KEY_BLOCK
from ..grouped_attention import GROUPED
from ..layers import switch_attention

ROWWISE = "specdecode_rowwise"
BATCHED_PREFILL = "specdecode_batched_prefill"  # a forward keyword: these rows are a prompt, attend them batched
PACKED_FROM_ROWS = {torch.bfloat16: 64, torch.float16: 16}  # PyTorch's CPU kernel packs its products from here


def rowwise_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                      fold_rows: int = 1, visible: tuple[list[int], dict] | None = None,
                      **kwargs) -> tuple[torch.Tensor, None]:
    """query [1, heads, q, d]; key, value [1, kv_heads, kv, d]; attention_mask [1, 1, q, >= kv] (bool,
    True = may attend; or float, 0 = may attend) or None for causal. At most `fold_rows` tokens share an
    SDPA call. visible: `visible_keys(attention_mask, q, kv)` where the caller computed it once for every
    layer (lean_forward), else it is computed here. Returns ([1, q, heads, d], None)."""
    if kwargs.pop(BATCHED_PREFILL, False):
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    if query.shape[0] != 1:
        raise SpecDecodeError(f"row-wise attention (w8a8 and exact bf16 targets) runs one sequence at a time, "
                              f"got a batch of {query.shape[0]}; generate for one prompt per call.")
    _, heads, q_len, head_dim = query.shape
    kv_heads = key.shape[1]
    # a token's query heads grouped by the key/value head they share (GQA): [q, kv_heads, groups, d]
    grouped = query[0].transpose(0, 1).reshape(q_len, kv_heads, heads // kv_heads, head_dim)
    counts, branches = visible if visible is not None else visible_keys(attention_mask, q_len, key.shape[2])
    if not branches and len(_folds(range(q_len), counts, fold_rows)) == 1:  # a chain in one call
        return _attend(grouped, key, value, counts, scaling)[None], None  # [1, q, heads, d]
    out = query.new_empty(q_len, heads, head_dim)  # [q, heads, d]
    for (run, tail), rows in _shared_layouts(branches, counts, q_len).items():
        with _laid_out(key, value, run, tail):
            for fold in _folds(rows, counts, fold_rows):
                out[fold] = _attend(grouped[fold], key, value, [counts[row] for row in fold], scaling)
    return out[None], None  # [1, q, heads, d]


def _folds(rows, counts: list[int], fold_rows: int) -> list[list[int]]:
    """`rows` in order cut into SDPA calls: at most `fold_rows` tokens each, all of one key span."""
    folds: list[list[int]] = []
    for row in rows:
        if folds and len(folds[-1]) < fold_rows and _span(counts[folds[-1][0]]) == _span(counts[row]):
            folds[-1].append(row)
        else:
            folds.append([row])
    return folds


def _shared_layouts(branches: dict[int, tuple[int, list[int]]], counts: list[int], q_len: int
                    ) -> dict[tuple[int, tuple[int, ...]], list[int]]:
    """The fed tokens grouped by one layout of keys each: {(run, tail): rows}. The first branch's tokens see
    their keys as one run from the first as they are stored: (0, ()). A later branch's token sees the first
    `run` keys and a leading part of `tail` (positions after the run, its ancestors and itself), so laying
    `tail` out right after the run gives it its keys as one run; a tree token's ancestors are one another's
    prefixes, so a branch's deepest token lays out the rest of the branch."""
    layouts: dict[tuple[int, tuple[int, ...]], list[int]] = {}
    first = [row for row in range(q_len) if row not in branches]
    if first:
        layouts[(0, ())] = first
    for row in sorted(branches, key=lambda r: -counts[r]):
        run, tail = branches[row]
        layout = next((key for key in layouts if key[0] == run and key[1][:len(tail)] == tuple(tail)),
                      (run, tuple(tail)))
        layouts.setdefault(layout, []).append(row)
    return {layout: sorted(rows) for layout, rows in layouts.items()}


@contextmanager
def _laid_out(key: torch.Tensor, value: torch.Tensor, run: int, tail: tuple[int, ...]) -> Iterator[None]:
    """For the duration, the entries of key, value [1, kv_heads, n, d] at positions `tail` (all >= run) sit
    at run, run + 1, ...: the keys a one-token step of a later branch's token sees, as one run from the first
    (SDPA's result depends on the values, not on where they are stored). Only len(tail) entries per head
    move, however long the cache; they are put back after. No tail: nothing moves."""
    if not tail:
        yield
        return
    moved = slice(run, run + len(tail))
    index = torch.tensor(tail, device=key.device)
    saved = key[:, :, moved].clone(), value[:, :, moved].clone()  # [1, kv_heads, len(tail), d] each
    key[:, :, moved], value[:, :, moved] = key.index_select(2, index), value.index_select(2, index)
    try:
        yield
    finally:
        key[:, :, moved], value[:, :, moved] = saved


def _attend(queries: torch.Tensor, key: torch.Tensor, value: torch.Tensor, counts: list[int],
            scaling: float | None) -> torch.Tensor:
    """One SDPA call for tokens queries [n, kv_heads, groups, d] (their keys of one span), token i seeing
    keys [0, counts[i]) of key, value [1, kv_heads, >= counts[i], d]. Returns [n, heads, d]."""
    n, kv_heads, groups, head_dim = queries.shape
    span = _span(counts[0])
    keys, values = _padded(key, span), _padded(value, span)  # [1, kv_heads, span, d]
    folded = queries.permute(1, 0, 2, 3).reshape(1, kv_heads, n * groups, head_dim)  # [1, kv_heads, n*groups, d]
    limits = torch.tensor(counts, device=keys.device)[:, None]  # [n, 1]
    mask = (torch.arange(span, device=keys.device) < limits).repeat_interleave(groups, 0)  # [n*groups, span]
    out = F.scaled_dot_product_attention(folded, keys, values, attn_mask=mask[None, None], scale=scaling)
    return out[0].reshape(kv_heads, n, groups, head_dim).transpose(0, 1).reshape(n, kv_heads * groups, head_dim)


def _span(count: int) -> int:
    """The keys a token with `count` visible keys attends over: rounded up to whole blocks."""
    return max(1, -(-count // KEY_BLOCK)) * KEY_BLOCK


def _padded(states: torch.Tensor, span: int) -> torch.Tensor:
    """states [1, kv_heads, length, d] as [1, kv_heads, span, d]: cut, or extended over the spare room of the
    cache buffer it views (GrowingLayer keeps it finite: zeros or earlier entries, all masked), or padded
    with zeros where it has none."""
    length = states.shape[2]
    if length >= span:
        return states[:, :, :span]
    shape, stride = (*states.shape[:2], span, states.shape[3]), states.stride()
    last = states.storage_offset() + sum((size - 1) * step for size, step in zip(shape, stride))
    own_rows = states.shape[1] == 1 or span * stride[2] <= stride[1]  # the room is this head's, not the next's
    in_storage = last < states.untyped_storage().nbytes() // states.element_size()
    if own_rows and stride[3] == 1 and stride[2] == shape[3] and in_storage:
        return states.as_strided(shape, stride)
    return F.pad(states, (0, 0, 0, span - length))


def visible_keys(attention_mask: torch.Tensor | None, q_len: int, kv_len: int
                 ) -> tuple[list[int], dict[int, tuple[int, list[int]]]]:
    """(each fed token's count of visible keys, {token: (run, tail)} for the tokens whose visible keys are
    not the first `count`, a tree's later branches: they see the first `run` keys and then those at `tail`)."""
    if attention_mask is None:  # causal: the keys up to each token's own
        return [kv_len - q_len + row + 1 for row in range(q_len)], {}
    allowed = attention_mask[0, 0, :, :kv_len]  # [q, kv]
    allowed = allowed if allowed.dtype == torch.bool else allowed == 0
    visible = allowed.sum(1, keepdim=True)  # [q, 1]
    runs = torch.arange(kv_len, device=allowed.device)[None] < visible  # [q, kv]: the first `visible` keys
    scattered = (allowed != runs).any(1).nonzero().squeeze(1)  # [s]
    hidden = ~allowed[scattered]  # [s, kv]
    first_hidden = hidden.int().argmax(1).tolist()  # each one's run: its first key it does not see
    branches = {row: (run, (allowed[row, run:].nonzero().squeeze(1) + run).tolist())
                for row, run in zip(scattered.tolist(), first_hidden)}
    return visible[:, 0].tolist(), branches


def runs_sdpa(implementation: str | None) -> bool:
    """Whether an attention implementation is SDPA's, grouped SDPA (a drafter's) or row-wise (SDPA per token):
    those the engine runs."""
    return implementation in ("sdpa", GROUPED) or fold_rows_of(implementation) is not None


def rowwise_name(fold_rows: int) -> str:
    """The attention implementation name of row-wise attention with `fold_rows` tokens per call."""
    return ROWWISE if fold_rows == 1 else f"{ROWWISE}_fold{fold_rows}"


def fold_rows_of(implementation: str | None) -> int | None:
    """The fold of a row-wise attention implementation name; None for any other attention."""
    if implementation == ROWWISE:
        return 1
    prefix = f"{ROWWISE}_fold"
    if implementation and implementation.startswith(prefix) and implementation[len(prefix):].isdigit():
        return int(implementation[len(prefix):])
    return None


def use_rowwise_attention(model: torch.nn.Module, fold_rows: int = 1) -> None:
    """Switch a transformers model to row-wise attention with at most `fold_rows` tokens per SDPA call
    (registered once per fold; registering is idempotent)."""
    if fold_rows < 1:
        raise SpecDecodeError(f"fold_rows must be at least 1, got {fold_rows}.")
    try:
        switch_attention(model, rowwise_name(fold_rows), partial(rowwise_attention, fold_rows=fold_rows))
    except (ValueError, ImportError, AttributeError) as e:
        raise SpecDecodeError(f"{type(model).__name__} cannot switch its attention implementation ({e}); "
                              "w8a8 needs it to stay exact. Use quantize='fp16' for this model.") from e


def exact_fold_rows(model: torch.nn.Module, max_rows: int = 65, trials: int = 12) -> int:
    """The most tokens (1 to max_rows) one SDPA call may attend while every token gets the bits it gets
    alone: the widest n such that every fold of 2..n tokens agrees with one call per token on `trials`
    random queries and keys of the model's head shape and dtype, at random contexts (a third of them
    crossing a key block's end). Whether a row keeps its bits depends on the kernel's product for that
    row count, not monotonically, so every count is probed. Capped below the row count from which
    PyTorch's kernel packs its products for this dtype."""
    config = model.config.get_text_config()  # a vision-language model's language model
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    weight = model.get_input_embeddings().weight
    dtype, device, groups = weight.dtype, weight.device, heads // kv_heads
    limit = min(max_rows, (PACKED_FROM_ROWS.get(dtype, 10**9) - 1) // groups)
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for rows in range(2, limit + 1):
            for trial in range(trials):
                block_end = KEY_BLOCK * int(torch.randint(1, 5, (1,), generator=generator)) - rows // 2
                anywhere = int(torch.randint(1, 4 * KEY_BLOCK, (1,), generator=generator))
                context = block_end if trial % 3 == 0 else anywhere
                query = torch.randn(1, heads, rows, head_dim, generator=generator).to(device, dtype)
                key, value = (torch.randn(1, kv_heads, context + rows, head_dim, generator=generator).to(device, dtype)
                              for _ in range(2))
                alone, _ = rowwise_attention(None, query, key, value, None, fold_rows=1)
                folded, _ = rowwise_attention(None, query, key, value, None, fold_rows=rows)
                if not torch.equal(alone, folded):
                    return rows - 1
    return limit
