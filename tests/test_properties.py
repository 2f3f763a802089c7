"""Property tests (hypothesis): DraftTree.merge keeps every path once, subsets keep whole paths, and
KVCache.keep leaves exactly the prefix and the kept entries, in order."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny import tiny_model

from specdecode.errors import SpecDecodeError
from specdecode.runtime.cache import KVCache
from specdecode.tree import DraftTree

SETTINGS = settings(max_examples=60, deadline=None)


@st.composite
def trees(draw, max_nodes: int = 12, vocab: int = 4) -> DraftTree:
    """A random tree: each node's parent comes before it; a small vocabulary so that paths repeat."""
    n = draw(st.integers(0, max_nodes))
    parents = [draw(st.integers(-1, i - 1)) for i in range(n)]
    tokens = [draw(st.integers(0, vocab - 1)) for _ in range(n)]
    return DraftTree(tokens, parents)


def unique_siblings(tree: DraftTree) -> bool:
    siblings = list(zip(tree.parent_list, tree.token_list))
    return len(siblings) == len(set(siblings))


def path_set(tree: DraftTree) -> set[tuple[int, ...]]:
    return {tuple(tree.path_tokens(node)) for node in range(len(tree))}


@SETTINGS
@given(st.lists(trees(), min_size=1, max_size=4))
def test_merge_holds_every_path_of_its_trees_once(parts):
    merged, located = DraftTree.merge_located(parts)
    assert path_set(merged) == set().union(*(path_set(tree) for tree in parts))
    assert len(merged) <= sum(len(tree) for tree in parts)
    if all(unique_siblings(tree) for tree in parts):  # deterministic drafts: a shared prefix is stored once
        assert unique_siblings(merged)
    for tree, nodes in zip(parts, located):
        assert [merged.path_tokens(m) for m in nodes] == [tree.path_tokens(i) for i in range(len(tree))]
    assert all(parent < node for node, parent in enumerate(merged.parent_list))  # parents come first


@SETTINGS
@given(trees(), st.data())
def test_a_subset_keeps_whole_paths_in_tree_order(tree, data):
    keep = data.draw(st.sets(st.integers(0, max(len(tree) - 1, 0))) if len(tree) else st.just(set()))
    closed = set(keep)
    for node in keep:  # every kept node's ancestors
        while tree.parent_list[node] >= 0:
            node = tree.parent_list[node]
            closed.add(node)
    sub = tree.subset(closed)
    assert len(sub) == len(closed)
    assert sorted(map(tuple, (sub.path_tokens(i) for i in range(len(sub))))) == sorted(
        tuple(tree.path_tokens(node)) for node in closed)
    if closed != set(keep):  # a node whose parent was dropped: refused, naming the fix
        with pytest.raises(SpecDecodeError, match="keep whole paths"):
            tree.subset(keep)


MODEL = tiny_model("qwen2")


@SETTINGS
@given(st.integers(0, 20), st.integers(0, 24), st.data())
def test_keep_leaves_the_prefix_then_the_kept_entries(start, fed, data):
    offsets = sorted(data.draw(st.sets(st.integers(0, max(fed - 1, 0)), max_size=fed)) if fed else [])
    cache = KVCache(MODEL)
    generator = torch.Generator().manual_seed(start * 100 + fed)
    heads, dim = MODEL.config.num_key_value_heads, MODEL.config.hidden_size // MODEL.config.num_attention_heads
    originals = []
    for layer in range(MODEL.config.num_hidden_layers):
        keys = torch.randn(1, heads, start + fed, dim, generator=generator)  # [1, heads, length, dim]
        values = torch.randn(1, heads, start + fed, dim, generator=generator)
        cache.hf.update(keys, values, layer)
        originals.append((keys.clone(), values.clone()))
    cache.keep(start, offsets)
    kept = list(range(start)) + [start + o for o in offsets]
    assert cache.length == len(kept)
    for layer, (keys, values) in zip(cache.hf.layers, originals):
        assert torch.equal(layer.keys, keys[..., kept, :]) and torch.equal(layer.values, values[..., kept, :])
