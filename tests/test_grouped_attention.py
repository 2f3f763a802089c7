"""Grouped SDPA (runtime/grouped_attention.py) attends like transformers' SDPA, without copying the cache per
query head, in a model's own forward and in lean_forward; split over a tree's prefix ("flash"), too."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny import hf_greedy, loaded, random_prompt, repetitive_prompt, tiny_model
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from specdecode import SpeculativeGenerator
from specdecode.drafters import LookupDrafter, ModelDrafter
from specdecode.runtime.lean_forward import fits
from specdecode.errors import SpecDecodeError
from specdecode.runtime.runner import MEASURED, SDPABackend, select_backend
from specdecode.runtime.split_choice import AttentionShape, SplitCosts, measure_split_costs
from specdecode.runtime import grouped_attention as grouped_module
from specdecode.runtime.grouped_attention import (GROUPED, VISIBLE_PREFIX, grouped_attention, split_attention,
                                                  use_grouped_attention)


class GroupedModule(torch.nn.Module):
    num_key_value_groups = 3
    is_causal = True


def test_grouped_attention_equals_transformers_sdpa_under_any_mask():
    torch.manual_seed(0)
    query = torch.randn(1, 6, 4, 8)  # [b, heads, q, d]: 3 query heads per key/value head
    key, value = torch.randn(1, 2, 11, 8), torch.randn(1, 2, 11, 8)  # [b, kv_heads, kv, d]
    tree = torch.ones(1, 1, 4, 11, dtype=torch.bool)
    tree[0, 0, 2:, 8] = False  # a tree's second branch does not see the first's token
    tree[0, 0, :2, 9:] = False
    additive = torch.zeros(1, 1, 4, 11).masked_fill(~tree, float("-inf"))
    for mask in (tree, additive, None):
        ours, _ = grouped_attention(GroupedModule(), query, key, value, mask, scaling=0.3)
        theirs, _ = sdpa_attention_forward(GroupedModule(), query, key, value, mask, scaling=0.3)
        assert ours.shape == theirs.shape == (1, 4, 6, 8)
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_a_grouped_drafter_drafts_what_an_sdpa_drafter_drafts():
    target = loaded(tiny_model("qwen2", seed=0))
    grouped = copy.deepcopy(tiny_model("qwen2", seed=1))
    use_grouped_attention(grouped)
    assert grouped.config._attn_implementation == GROUPED and fits(grouped)  # lean_forward runs it too
    prompt = random_prompt(7, length=30)
    outputs = []
    for draft in (loaded(tiny_model("qwen2", seed=1)), loaded(grouped)):
        gen = SpeculativeGenerator(target, drafter=ModelDrafter(draft, k=4, tree_width=2, confidence=0), cost_model=None)
        outputs.append(gen.generate(prompt, max_new_tokens=30))
    assert outputs[0].token_ids == outputs[1].token_ids == hf_greedy(target.model, prompt, 30)
    assert outputs[0].stats.accept_histogram == outputs[1].stats.accept_histogram  # the same drafts


def test_split_attention_equals_one_masked_call():
    """The prefix through FlashAttention's kernel (no mask) and the last keys under their mask, merged by
    log-sum-exp: one masked SDPA call's result, for bool and additive masks, in fp32 and bf16."""
    generator = torch.Generator().manual_seed(0)
    for dtype, tolerance in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
        query = torch.randn(1, 2, 15, 16, generator=generator).to(dtype)  # [b, h, rows, d]
        key, value = (torch.randn(1, 2, 700, 16, generator=generator).to(dtype) for _ in range(2))  # [b, h, 700, d]
        tail = torch.rand(15, 10, generator=generator) < 0.5  # the last 10 keys: a tree's earlier levels and its own
        tail[:, -1] = True  # every row sees at least one of them (itself)
        mask = torch.ones(1, 1, 15, 700, dtype=torch.bool)
        mask[0, 0, :, 690:] = tail
        additive = torch.zeros(1, 1, 15, 700, dtype=dtype).masked_fill(~mask, float("-inf"))
        for attention_mask in (mask, additive):
            ours = split_attention(query, key, value, attention_mask, prefix=690, scaling=0.25)
            theirs = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask,
                                                                      scale=0.25)
            assert ours.dtype == dtype and ours.shape == theirs.shape == (1, 2, 15, 16)
            torch.testing.assert_close(ours.float(), theirs.float(), rtol=tolerance, atol=tolerance)


def test_grouped_attention_splits_where_told_the_visible_prefix():
    torch.manual_seed(1)
    query = torch.randn(1, 6, 4, 8)  # [b, heads, q, d]: 3 query heads per key/value head
    key, value = torch.randn(1, 2, 40, 8), torch.randn(1, 2, 40, 8)  # [b, kv_heads, kv, d]
    tree = torch.ones(1, 1, 4, 40, dtype=torch.bool).tril(36)  # a chain of 4 after 36 cached entries
    tree[0, 0, 3, 37] = False  # the last token on another branch
    split, _ = grouped_attention(GroupedModule(), query, key, value, tree, scaling=0.3, **{VISIBLE_PREFIX: 36})
    whole, _ = grouped_attention(GroupedModule(), query, key, value, tree, scaling=0.3)
    torch.testing.assert_close(split, whole, rtol=1e-5, atol=1e-6)


@pytest.fixture
def split_calls(monkeypatch) -> list[int]:
    """One entry per call of split_attention from here on."""
    calls = []
    split = grouped_module.split_attention
    monkeypatch.setattr(grouped_module, "split_attention", lambda *args, **kw: calls.append(1) or split(*args, **kw))
    return calls


def _grouped_target():
    """A tiny Qwen2 target on grouped attention, a prompt and its 30 greedy tokens by transformers."""
    target = loaded(tiny_model("qwen2", seed=0))
    use_grouped_attention(target.model)
    prompt = repetitive_prompt(5)
    return target, prompt, hf_greedy(target.model, prompt, 30)


@pytest.mark.parametrize("lean", [True, False])
def test_the_flash_backend_verifies_trees_exactly(split_calls, lean):
    """The "flash" backend: every verification splits its tree (or chain) from the cached prefix, through
    lean_forward and through the model's own forward, and greedy output stays plain decoding's."""
    calls = split_calls
    target, prompt, reference = _grouped_target()
    for drafter in (LookupDrafter(tree_width=3), ModelDrafter(loaded(tiny_model("qwen2", seed=1)), k=4, tree_width=2,
                                                             confidence=0)):
        calls.clear()
        flash = select_backend("flash") if lean else SDPABackend(lean=False, split_prefix=True)
        out = SpeculativeGenerator(target, drafter=drafter, attention=flash, cost_model=None).generate(
            prompt, max_new_tokens=30)
        assert out.token_ids == reference
        assert calls and out.stats.drafted_tokens > 0


def _split_costs(split_from: int) -> SplitCosts:
    """A hand-built table: the split twice as fast from `split_from` cached entries on, twice as slow before."""
    contexts, rows = (16, 64, 256), (2, 8)
    masked = tuple((1.0, 2.0) for _ in contexts)
    split = tuple((0.5, 1.0) if context >= split_from else (2.0, 4.0) for context in contexts)
    return SplitCosts(contexts, rows, masked, split)


def test_split_costs_choose_the_faster_at_the_nearest_measured_cell():
    costs = _split_costs(split_from=64)
    assert not costs.splits(20, 4) and not costs.splits(31, 8)  # nearest by ratio: 16
    assert costs.splits(33, 2) and costs.splits(5000, 60)  # 64; past the last measured cell: the last
    mixed = SplitCosts((16,), (2, 8), ((1.0, 1.0),), ((0.5, 3.0),))  # the split wins small steps only
    assert mixed.splits(16, 1) and mixed.splits(16, 2) and not mixed.splits(16, 3) and not mixed.splits(16, 64)
    assert SplitCosts.from_json(costs.to_json()) == costs
    assert costs.table_markdown().splitlines()[2:4] == ["| 16 | 1000.000 / 2000.000 | 2000.000 / 4000.000 |",
                                                        "| 64 | 1000.000 / 500.000 | 2000.000 / 1000.000 |"]
    with pytest.raises(SpecDecodeError, match="positive seconds"):
        SplitCosts((16,), (2,), ((1.0,),), ((0.0,),))
    with pytest.raises(SpecDecodeError, match="ascending"):
        SplitCosts((64, 16), (2,), ((1.0,), (1.0,)), ((1.0,), (1.0,)))
    with pytest.raises(SpecDecodeError, match="split_prefix"):
        SDPABackend(split_prefix="sometimes")


def test_measuring_split_costs_times_each_cell_both_ways_on_the_given_clock():
    ticks = []
    clock = lambda: ticks.append(1) or float(len(ticks))  # noqa: E731 - one second between readings
    shape = AttentionShape(heads=4, kv_heads=2, head_dim=8, dtype="torch.float32")
    costs = measure_split_costs(shape, torch.device("cpu"), contexts=(8, 32), rows=(2, 4), rounds=2, repeats=1,
                                clock=clock)
    assert (costs.contexts, costs.rows) == ((8, 32), (2, 4))
    assert costs.masked == costs.split == ((1.0, 1.0), (1.0, 1.0))  # every call read the clock twice
    assert len(ticks) == 2 * 2 * 2 * 3 * 2  # cells x ways x (warm-up + 2 rounds) x two readings
    assert not costs.splits(32, 4)  # a tie keeps one masked call
    model = tiny_model("qwen2", seed=0)
    assert AttentionShape.of(model).kv_heads == model.config.num_key_value_heads


def test_auto_attention_splits_only_where_measured_faster_and_keeps_plain_decodings_tokens(split_calls):
    """"auto": per step, the split where its measured cost is lower (a hand-built table here; a GPU measures its
    own); on a CPU without a table, never (one masked call, described as "sdpa")."""
    calls = split_calls
    target, prompt, reference = _grouped_target()
    runs = {}
    backends = {"cpu": select_backend("auto"),
                "never": SDPABackend(split_prefix=MEASURED, split_costs=_split_costs(10**6)),
                "always": SDPABackend(split_prefix=MEASURED, split_costs=_split_costs(1))}
    for name, backend in backends.items():
        calls.clear()
        out = SpeculativeGenerator(target, drafter=LookupDrafter(tree_width=2), attention=backend,
                                   cost_model=None).generate(prompt, max_new_tokens=30)
        assert out.token_ids == reference and out.stats.drafted_tokens > 0
        runs[name] = len(calls)
    assert runs["never"] == 0 and runs["always"] > 0
    if target.model.device.type == "cpu":  # a GPU measures its own table (SPECDECODE_TEST_DEVICE=cuda)
        assert runs["cpu"] == 0 and select_backend("auto").split_costs_of(target.model) is None
        assert select_backend("auto").describe(target.model) == select_backend("sdpa").describe(target.model)
