"""Row-wise attention: every fed token gets, bit for bit, what a one-token step gives it, whether it
attends alone or folded into one SDPA call with other tokens (at most the fold calibrated for the model);
a prompt's prefill, which plain and speculative decoding share, attends batched."""

from __future__ import annotations

import pytest
import torch
from tiny import cpu_model, random_prompt, tiny_tokenizer
from transformers import LlamaConfig, LlamaForCausalLM

import specdecode.runtime.cpu.rowwise_attention as rowwise
from specdecode import SpeculativeGenerator
from specdecode.drafters import LookupDrafter
from specdecode.errors import SpecDecodeError
from specdecode.models.load import load_model
from specdecode.runtime.cache import KEY_BLOCK, KVCache
from specdecode.runtime.cpu.quantize import quantize_model
from specdecode.runtime.cpu.rowwise_attention import (exact_fold_rows, fold_rows_of, rowwise_attention, rowwise_name,
                                                      use_rowwise_attention)
from specdecode.runtime.grouped_attention import GROUPED
from specdecode.runtime.runner import SDPABackend
from specdecode.tree import DraftTree

QWEN_1_5B_HEADS = dict(num_attention_heads=12, num_key_value_heads=2, head_dim=128)  # 6 query heads per KV head


def long_head_model(dtype: torch.dtype = torch.bfloat16, seed: int = 0) -> torch.nn.Module:
    """A tiny Llama with Qwen2.5-1.5B's attention heads (2 KV heads x 6, head_dim 128) and a 2048 context."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=96, hidden_size=96, intermediate_size=128, num_hidden_layers=2,
                         max_position_embeddings=2048, initializer_range=0.3, **QWEN_1_5B_HEADS)
    model = LlamaForCausalLM(config)
    model.config._attn_implementation = "sdpa"
    model.generation_config.eos_token_id = None
    return model.to(dtype).eval()


def random_attention(rows: int, context: int, dtype: torch.dtype, seed: int, heads: int = 12, kv_heads: int = 2,
                     head_dim: int = 128):
    generator = torch.Generator().manual_seed(seed)
    query = torch.randn(1, heads, rows, head_dim, generator=generator).to(dtype)  # [1, heads, rows, d]
    key, value = (torch.randn(1, kv_heads, context + rows, head_dim, generator=generator).to(dtype) for _ in range(2))
    return query, key, value


def tree_mask(parents: list[int], context: int) -> torch.Tensor:
    """[1, 1, rows, context + rows] bool: every token sees the context, its ancestors and itself."""
    rows = len(parents)
    mask = torch.zeros(1, 1, rows, context + rows, dtype=torch.bool)
    mask[..., :context] = True
    for row in range(rows):
        node = row
        while node != -1:
            mask[0, 0, row, context + node] = True
            node = parents[node]
    return mask


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_the_calibrated_fold_gives_every_token_its_own_bits(dtype):
    """Fresh random data (not the probe's), chains and trees, contexts across key-block ends up to 16k."""
    heads = type("Model", (), {"config": LlamaConfig(hidden_size=1536, **QWEN_1_5B_HEADS),
                               "get_input_embeddings": lambda self: torch.nn.Embedding(2, 2).to(dtype)})()
    fold = exact_fold_rows(heads)
    assert 1 <= fold <= 65
    for seed, (rows, context) in enumerate([(fold, 300), (fold + 3, KEY_BLOCK - 2), (2 * fold + 1, 16380),
                                            (fold, 3 * KEY_BLOCK)]):
        query, key, value = random_attention(rows, context, dtype, seed)
        for mask in (None, tree_mask([-1] + [max(0, (r - 1) // 2) for r in range(1, rows)], context)):
            alone, _ = rowwise_attention(None, query, key, value, mask, fold_rows=1)
            folded, _ = rowwise_attention(None, query, key, value, mask, fold_rows=fold)
            assert torch.equal(alone, folded), (rows, context, mask is None)


def one_step_keys(states: torch.Tensor, parents: list[int], row: int, context: int) -> torch.Tensor:
    """states [1, kv_heads, context + rows, d] laid out as plain decoding has them for tree token `row`: the
    context, its ancestors from the root, itself."""
    path = []
    while row != -1:
        path.insert(0, context + row)
        row = parents[row]
    return torch.cat([states[:, :, :context], states[:, :, path]], dim=2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("context, calls_at_fold_4", [(700, [4, 3, 2]),  # one call per branch
                                                      (KEY_BLOCK - 3, [3, 1, 2, 1, 1, 1])])  # split at the block end
def test_later_branches_attend_what_a_one_token_step_attends_and_leave_the_cache_as_it_was(
        monkeypatch, dtype, context, calls_at_fold_4):
    """Branches from the root and from inside the first branch, within a key block or crossing its end:
    every token's bits are those of its one-token step, the keys and values passed in are unchanged after
    the call, and a branch's tokens share calls as a chain's do (tokens of one call see keys of one span)."""
    parents = [-1, 0, 1, 2, 0, 4, 5, 1, 7]  # first branch 0-1-2-3; 0-4-5-6 from the root; 1-7-8 from inside it
    heads = type("Model", (), {"config": LlamaConfig(hidden_size=1536, **QWEN_1_5B_HEADS),
                               "get_input_embeddings": lambda self: torch.nn.Embedding(2, 2).to(dtype)})()
    fold = exact_fold_rows(heads)
    query, key, value = random_attention(len(parents), context, dtype, seed=5)
    key_before, value_before = key.clone(), value.clone()
    calls = []
    real_attend = rowwise._attend
    monkeypatch.setattr(rowwise, "_attend", lambda queries, *a: calls.append(len(queries)) or real_attend(queries, *a))
    tree, _ = rowwise_attention(None, query, key, value, tree_mask(parents, context), fold_rows=fold)
    assert torch.equal(key, key_before) and torch.equal(value, value_before)
    for row in range(len(parents)):
        step, _ = rowwise_attention(None, query[:, :, row:row + 1], one_step_keys(key, parents, row, context),
                                    one_step_keys(value, parents, row, context), None)
        assert torch.equal(tree[:, row:row + 1], step), row
    tree_calls = calls[:len(calls) - len(parents)]  # the one-token steps' calls follow
    assert sum(tree_calls) == len(parents) and max(tree_calls) <= fold
    if fold >= 4:
        assert tree_calls == calls_at_fold_4


class StandIn:
    """An SDPA whose rounding depends on the query rows in a call: apart where `differs(rows)`."""

    def __init__(self, differs):
        self.differs, self.real = differs, torch.nn.functional.scaled_dot_product_attention

    def __call__(self, query, *args, **kwargs):
        out = self.real(query, *args, **kwargs)
        return out + 1e-2 if self.differs(query.shape[2]) else out


@pytest.mark.parametrize("differs, fold", [(lambda m: m > 4 * 6, 4),  # apart from 5 tokens of 6 query heads on
                                           (lambda m: m == 3 * 6, 2),  # apart at 3 tokens only: every count probed
                                           (lambda m: m > 6, 1)])  # any fold apart: none
def test_the_probe_finds_the_widest_fold_where_every_count_keeps_the_bits(monkeypatch, differs, fold):
    monkeypatch.setattr(rowwise.F, "scaled_dot_product_attention", StandIn(differs))
    model = long_head_model(torch.float32)
    assert exact_fold_rows(model, trials=2) == fold


def test_bf16_folds_stop_below_the_kernels_packed_products():
    model = long_head_model(torch.bfloat16)
    assert exact_fold_rows(model, trials=1) <= (rowwise.PACKED_FROM_ROWS[torch.bfloat16] - 1) // 6


def test_keys_are_read_in_whole_blocks_from_the_caches_spare_room():
    model = long_head_model(torch.float32)
    cache = KVCache(model)
    with torch.inference_mode():
        model(input_ids=torch.tensor([random_prompt(1, 600)]), cache=cache.hf, use_cache=True)
    layer = cache.hf.layers[0]
    assert layer.key_buffer.shape[2] % KEY_BLOCK == 0
    assert torch.equal(layer.key_buffer[..., 600:, :], torch.zeros_like(layer.key_buffer[..., 600:, :]))
    extended = rowwise._padded(layer.keys, 1024)  # [1, kv_heads, 1024, d]: a view of the buffer, no copy
    assert extended.data_ptr() == layer.keys.data_ptr() and torch.equal(extended[..., :600, :], layer.keys)
    tight = layer.keys.clone()  # no spare room: padded with zeros
    padded = rowwise._padded(tight, 1024)
    assert torch.equal(padded[..., :600, :], tight) and not padded[..., 600:, :].any()


def test_fold_names_and_a_bad_fold():
    assert fold_rows_of(rowwise_name(1)) == 1 and fold_rows_of(rowwise_name(7)) == 7
    assert fold_rows_of("sdpa") is None and fold_rows_of("specdecode_rowwise_foldx") is None
    with pytest.raises(SpecDecodeError, match="fold_rows"):
        use_rowwise_attention(long_head_model(), 0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_folded_verifications_decode_as_plain(monkeypatch, dtype):
    """A bf16 target gets exact steps where this CPU's products allow them, with the fold calibrated for it on
    this machine (kept in its calibration); an fp32 model is put on row-wise attention with the fold probed
    for it. Lookup over a prompt that crosses key blocks then gives plain decoding's tokens."""
    model = long_head_model(dtype)
    if dtype == torch.float32:
        use_rowwise_attention(model, exact_fold_rows(model))
    target = load_model(model, tokenizer=tiny_tokenizer(), device="cpu")
    fold = fold_rows_of(target.model.config._attn_implementation)
    if dtype == torch.bfloat16:
        assert fold == target.calibration.values().get("attention_fold_rows")  # both None without exact steps
        if not target.exact_steps:  # this CPU keeps no bf16 row's bits among others: SDPA, nothing folds
            assert fold is None and target.model.config._attn_implementation == GROUPED
            return
    calls = []
    real_attend = rowwise._attend
    monkeypatch.setattr(rowwise, "_attend", lambda queries, *a: calls.append(len(queries)) or real_attend(queries, *a))
    phrase = random_prompt(3, 40)
    prompt = (phrase * 30)[:1100]  # repeats: lookup drafts long chains
    plain = SpeculativeGenerator(target).generate(prompt, max_new_tokens=40).token_ids
    calls.clear()
    out = SpeculativeGenerator(target, LookupDrafter()).generate(prompt, max_new_tokens=40)
    assert out.token_ids == plain
    assert max(calls) <= fold
    if fold > 1:
        assert max(calls) > 1  # some verification attended several tokens in one call


@pytest.fixture
def row_calls(monkeypatch) -> list:
    """Grows by one entry each time row-wise attention (not the batched prefill) attends fed tokens."""
    calls, visible = [], rowwise.visible_keys
    monkeypatch.setattr(rowwise, "visible_keys", lambda *a: calls.append(1) or visible(*a))
    return calls


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_a_prefill_on_rowwise_attention_runs_batched_sdpa(arch, row_calls):
    """The prompt's prefill is one forward that plain and speculative decoding share, so an exact model
    attends it batched: its cache and hidden states are those of the same model on SDPA, bit for bit."""
    model = cpu_model(arch, seed=4)
    quantize_model(model, "w8a8")
    backend, prompt = SDPABackend(), torch.tensor(random_prompt(4, length=40))
    with torch.inference_mode():
        batched_cache = KVCache(model)
        batched = backend.forward(model, batched_cache, prompt, torch.arange(40), hidden=True, prefill=True)
        assert not row_calls  # no row attended on its own
        backend.forward(model, KVCache(model), prompt, torch.arange(40), hidden=True)
        assert row_calls  # without prefill=True, the same model attends row by row
        model.set_attn_implementation("sdpa")
        sdpa_cache = KVCache(model)
        sdpa = backend.forward(model, sdpa_cache, prompt, torch.arange(40), hidden=True, prefill=True)
    assert torch.equal(batched, sdpa)
    for ours, theirs in zip(batched_cache.hf.layers, sdpa_cache.hf.layers):
        assert torch.equal(ours.keys[..., :40, :], theirs.keys[..., :40, :])
        assert torch.equal(ours.values[..., :40, :], theirs.values[..., :40, :])


def test_a_prefill_through_a_forward_without_keywords_stays_rowwise(monkeypatch, row_calls):
    """A model whose forward cannot take the prefill keyword (custom code) prefills row by row, no error."""
    model = cpu_model("llama", seed=4)
    quantize_model(model, "w8a8")
    original = model.base_model.forward

    def forward(input_ids=None, position_ids=None, cache=None, use_cache=None):  # no **kwargs
        return original(input_ids=input_ids, position_ids=position_ids, cache=cache, use_cache=use_cache)

    monkeypatch.setattr(model.base_model, "forward", forward)
    prompt = torch.tensor(random_prompt(4, length=20))
    with torch.inference_mode():
        hidden = SDPABackend().forward(model, KVCache(model), prompt, torch.arange(20), hidden=True, prefill=True)
    assert hidden.shape == (20, model.config.hidden_size) and row_calls


def test_sdpa_gives_a_strided_view_what_it_gives_a_contiguous_copy():
    """Row-wise attention hands SDPA slices of the cache (GrowingLayer's views) in one-token steps and
    verification rows alike (a later branch's too, its entries moved next to the run): exact only if strides
    do not matter."""
    generator = torch.Generator().manual_seed(0)
    for visible in (5, 600, 1100):
        query = torch.randn(1, 2, 6, 128, generator=generator)  # Qwen2.5-1.5B's grouping: 2 KV heads x 6
        keys, values = (torch.randn(1, 2, 1400, 128, generator=generator) for _ in range(2))  # a buffer
        strided = torch.nn.functional.scaled_dot_product_attention(
            query, keys[:, :, :visible], values[:, :, :visible])
        copied = torch.nn.functional.scaled_dot_product_attention(
            query, keys[:, :, :visible].contiguous(), values[:, :, :visible].contiguous())
        assert torch.equal(strided, copied)


def test_loading_a_w8a8_instance_keeps_its_rowwise_attention():
    model = cpu_model("llama", seed=2)
    quantize_model(model, "w8a8")
    target = load_model(model, tokenizer=tiny_tokenizer(), device="cpu")  # the loader switches other attentions to SDPA
    assert fold_rows_of(target.model.config._attn_implementation)  # row-wise, however many tokens per call


def test_a_lean_forward_works_out_the_key_layout_once_for_every_layer(monkeypatch):
    """Every layer of a step attends under one mask: lean_forward finds its keys' layout once and hands it to
    each layer's row-wise attention, with the bits of working it out per layer (a two-branch tree, padded)."""
    import specdecode.runtime.lean_forward as lean

    model = cpu_model("qwen2", seed=3)
    quantize_model(model, "w8a8")
    backend, prompt = SDPABackend(), random_prompt(5, length=30)
    tree = DraftTree([7, 8, 9], [-1, -1, 0])  # two branches
    once, per_layer, outputs = [], [], []
    visible = lean.visible_keys
    monkeypatch.setattr(rowwise, "visible_keys", lambda *a: per_layer.append(1) or visible(*a))
    with torch.inference_mode():
        for hoisted in (True, False):
            monkeypatch.setattr(lean, "visible_keys", lambda *a: once.append(1) or visible(*a) if hoisted else None)
            cache = KVCache(model)
            backend.forward(model, cache, torch.tensor(prompt[:-1]), torch.arange(len(prompt) - 1), prefill=True)
            assert backend.runs_lean(model)  # its one-time probe (own forwards too) before counting
            once.clear(), per_layer.clear()
            outputs.append(backend.verify(model, cache, tree, prompt[-1], rows=6))
            assert (len(once), len(per_layer)) == ((1, 0) if hoisted else (0, model.config.num_hidden_layers))
    assert torch.equal(*outputs)
