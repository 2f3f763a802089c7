"""DraftTree: derived structure, merging, validation."""

from __future__ import annotations

import pytest
import torch

from specdecode import DraftTree, SpecDecodeError


def test_chain_is_a_tree():
    chain = DraftTree.chain([4, 5, 6])
    assert chain.is_chain
    assert chain.parent_list == [-1, 0, 1]
    assert chain.depths.tolist() == [0, 1, 2]
    assert chain.paths() == [[0, 1, 2]]
    ids, mask, offsets = chain.rooted_inputs(9)
    assert ids.tolist() == [9, 4, 5, 6] and mask is None and offsets.tolist() == [0, 1, 2, 3]


def test_tree_structure():
    tree = DraftTree([5, 6, 7, 8, 9], [-1, 0, 0, -1, 2])
    assert not tree.is_chain
    assert tree.depths.tolist() == [0, 1, 1, 0, 2]
    assert tree.children[-1] == [0, 3] and tree.children[0] == [1, 2] and tree.children[2] == [4]
    assert tree.paths() == [[0, 1], [0, 2, 4], [3]]
    assert tree.path_tokens(4) == [5, 7, 9]
    assert tree.ancestor_mask.int().tolist() == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 0, 1, 0, 0],
        [0, 0, 0, 1, 0],
        [1, 0, 1, 0, 1],
    ]
    ids, mask, offsets = tree.rooted_inputs(3)
    assert ids.tolist() == [3, 5, 6, 7, 8, 9]
    assert offsets.tolist() == [0, 1, 2, 2, 1, 3]
    assert mask[:, 0].all() and mask[0, 1:].sum() == 0  # everyone sees the root, the root sees only itself
    assert mask[5].tolist() == [True, True, False, True, False, True]


def test_truncation_keeps_a_valid_tree():
    tree = DraftTree([5, 6, 7, 8], [-1, 0, 0, 1], torch.full((4, 10), 0.1))
    cut = tree.truncated(2)
    assert cut.token_list == [5, 6] and cut.parent_list == [-1, 0] and cut.draft_probs.shape == (2, 10)
    assert tree.truncated(10) is tree


def test_subset_keeps_whole_paths_in_tree_order():
    tree = DraftTree([5, 6, 7, 8], [-1, 0, 0, 1], torch.arange(40.0).reshape(4, 10))
    cut = tree.subset([3, 0, 1])
    assert cut.token_list == [5, 6, 8] and cut.parent_list == [-1, 0, 1]
    assert torch.equal(cut.draft_probs, tree.draft_probs[[0, 1, 3]])
    with pytest.raises(SpecDecodeError, match="drops a parent"):
        tree.subset([0, 3])
    assert tree.subset([3, 2, 1, 0]) is tree


def test_merge_located_maps_each_node_of_each_tree():
    trees = [DraftTree.chain([1, 2, 3]), DraftTree.empty(), DraftTree([1, 9, 4], [-1, -1, 0])]
    merged, located = DraftTree.merge_located(trees)
    assert merged.token_list == [1, 2, 3, 9, 4] and located == [[0, 1, 2], [], [0, 3, 4]]
    for tree, nodes in zip(trees, located):
        assert [merged.path_tokens(n) for n in nodes] == [tree.path_tokens(i) for i in range(len(tree))]


def test_merge_shares_prefixes():
    merged = DraftTree.merge([DraftTree.chain([1, 2, 3]), DraftTree.chain([1, 2, 4]), DraftTree.chain([5])])
    assert merged.token_list == [1, 2, 3, 4, 5]
    assert merged.parent_list == [-1, 0, 1, 1, -1]
    assert sorted(merged.path_tokens(p[-1]) for p in merged.paths()) == [[1, 2, 3], [1, 2, 4], [5]]


def test_merge_keeps_sampled_nodes_with_different_distributions_apart():
    torch.manual_seed(0)
    q1 = torch.softmax(torch.randn(10), -1)
    q2 = torch.softmax(torch.randn(10), -1)
    merged = DraftTree.merge([DraftTree.chain([1], q1[None]), DraftTree.chain([1], q2[None]), DraftTree.chain([1])])
    assert merged.token_list == [1, 1, 1]  # three different distributions: no sharing
    assert torch.equal(merged.draft_probs[2], torch.nn.functional.one_hot(torch.tensor(1), 10).float())
    same = DraftTree.merge([DraftTree.chain([1], q1[None]), DraftTree.chain([1, 2], torch.stack([q1, q2]))])
    assert same.token_list == [1, 2]


def test_empty_and_degenerate_merges():
    assert len(DraftTree.merge([])) == 0
    assert len(DraftTree.merge([DraftTree.empty(), DraftTree.empty()])) == 0
    one = DraftTree.chain([3])
    assert DraftTree.merge([DraftTree.empty(), one]) is one


@pytest.mark.parametrize(
    "tokens, parents, probs, message",
    [
        ([1, 2], [-1], None, "2 tokens but 1 parents"),
        ([1, 2], [-1, 1], None, "topological order"),
        ([1, 2], [-1, -2], None, "topological order"),
        ([1, 2], [-1, 0], torch.zeros(3, 5), "draft_probs must have shape"),
        (torch.tensor([1.0]), [-1], None, "integer"),
    ],
)
def test_invalid_trees_are_refused(tokens, parents, probs, message):
    with pytest.raises(SpecDecodeError, match=message):
        DraftTree(tokens, parents, probs)


def test_matched_depth_follows_one_path():
    tree = DraftTree([5, 6, 7, 8], [-1, 0, 0, 2])  # 5 -> {6, 7 -> 8}
    assert tree.matched_depth([5, 7, 8, 9]) == 3
    assert tree.matched_depth([5, 6, 8]) == 2
    assert tree.matched_depth([4]) == 0
    assert DraftTree.empty().matched_depth([1, 2]) == 0
    assert tree.matched_path([5, 7, 8, 9]) == tree.matched_path([5, 7, 8]) and len(tree.matched_path([5, 7, 8])) == 3
