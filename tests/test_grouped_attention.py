"""A drafter's grouped SDPA (runtime/grouped_attention.py) attends like transformers' SDPA, without copying
the cache per query head, in its own forward and in lean_forward."""

from __future__ import annotations

import copy

import torch
from tiny import hf_greedy, loaded, random_prompt, tiny_model
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from specdecode import SpeculativeGenerator
from specdecode.drafters import ModelDrafter
from specdecode.runtime.cpu.lean_forward import fits
from specdecode.runtime.grouped_attention import GROUPED, grouped_attention, use_grouped_attention


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
