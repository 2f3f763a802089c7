"""Acceptance rules on hand-built logits: greedy cases exactly, sampling by convergence of sampled
frequencies to the target distribution (vocab 10, 10^5 samples, fixed generators)."""

from __future__ import annotations

import bisect
import itertools
import random

import torch

from specdecode.sampling import SamplingParams, sample_from, warp_probs
from specdecode.tree import DraftTree
from specdecode.verifiers import accept, greedy_accept, sampling_accept

VOCAB = 10
SAMPLES = 100_000
# Total-variation bound for 10^5 samples: the expected TV of an empirical distribution over K
# outcomes is about 0.4 * sqrt(K / N) (0.004 for K = 10, 0.013 for K = 100); we allow ~2.5x that.
TV_BOUND_10 = 0.01
TV_BOUND_100 = 0.03


def one_hot_logits(*argmaxes: int, margin: float = 5.0) -> torch.Tensor:
    """[len(argmaxes), VOCAB] logits whose row r has its maximum at argmaxes[r]."""
    logits = torch.zeros(len(argmaxes), VOCAB)
    for row, token in enumerate(argmaxes):
        logits[row, token] = margin
    return logits


# ------------------------------------------------------------------------------ greedy
def test_greedy_perfect_match_takes_every_token_and_the_bonus():
    tree = DraftTree.chain([3, 4, 5])
    result = greedy_accept(tree, one_hot_logits(3, 4, 5, 6))
    assert result.accepted == [0, 1, 2] and result.next_token == 6


def test_greedy_early_mismatch_stops_with_the_target_token():
    tree = DraftTree.chain([3, 9, 5])
    result = greedy_accept(tree, one_hot_logits(3, 4, 5, 6))
    assert result.accepted == [0] and result.next_token == 4
    result = greedy_accept(tree, one_hot_logits(1, 4, 5, 6))
    assert result.accepted == [] and result.next_token == 1


def test_greedy_empty_draft_is_plain_decoding():
    result = greedy_accept(DraftTree.empty(), one_hot_logits(7))
    assert result.accepted == [] and result.next_token == 7


def test_greedy_two_branches_follows_the_matching_one():
    # node 0 (token 2) and node 2 (token 3) are roots; node 1 (token 5) under 0, node 3 (token 8) under 2
    tree = DraftTree([2, 5, 3, 8], [-1, 0, -1, 2])
    # rows: committed, after node 0, after node 1, after node 2, after node 3
    result = greedy_accept(tree, one_hot_logits(3, 0, 0, 8, 1))
    assert result.accepted == [2, 3] and result.next_token == 1
    result = greedy_accept(tree, one_hot_logits(2, 5, 9, 0, 0))
    assert result.accepted == [0, 1] and result.next_token == 9


def test_greedy_rows_name_the_logits_that_produced_each_token():
    tree = DraftTree([2, 5, 3, 8], [-1, 0, -1, 2])
    result = greedy_accept(tree, one_hot_logits(3, 0, 0, 8, 1))
    assert result.rows == [0, 3, 4]


# ------------------------------------------------------------------------------ sampling helpers
def tv_distance(counts: torch.Tensor, probs: torch.Tensor) -> float:
    return 0.5 * float((counts / counts.sum() - probs).abs().sum())


def random_logits(rows: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(rows, VOCAB, generator=generator) * 2.0


class Draw:
    """Fast draws from fixed distributions (the test's own drafter randomness, kept apart from the
    verifier's torch generator)."""

    def __init__(self, probs: torch.Tensor, seed: int):
        self.cumulative = [list(itertools.accumulate(row)) for row in probs.reshape(-1, probs.shape[-1]).tolist()]
        self.rng = random.Random(seed)

    def __call__(self, row: int = 0) -> int:
        cumulative = self.cumulative[row]
        return min(bisect.bisect_right(cumulative, self.rng.random() * cumulative[-1]), len(cumulative) - 1)


def first_token_counts(make_tree, logits: torch.Tensor, params: SamplingParams, seed: int) -> torch.Tensor:
    """Counts of the first committed token over SAMPLES verifications."""
    generator = torch.Generator().manual_seed(seed)
    counts = torch.zeros(VOCAB)
    for _ in range(SAMPLES):
        tree = make_tree()
        result = sampling_accept(tree, logits, params, generator)
        first = tree.token_list[result.accepted[0]] if result.accepted else result.next_token
        counts[first] += 1
    return counts


PARAMS = SamplingParams(temperature=1.0)


def test_chain_with_draft_probabilities_matches_the_target():
    """Leviathan et al.: draft token x ~ q, accepted w.p. min(1, p(x)/q(x))."""
    logits = random_logits(2, seed=0)
    target = warp_probs(logits[0], PARAMS)
    draft = warp_probs(random_logits(1, seed=1)[0], PARAMS)
    assert tv_distance(draft * SAMPLES, target) > 0.2  # the draft alone would be badly wrong

    draw = Draw(draft, seed=20)
    draft_rows = draft[None]

    def make_tree():
        return DraftTree.chain([draw()], draft_rows)

    counts = first_token_counts(make_tree, logits, PARAMS, seed=2)
    assert tv_distance(counts, target) < TV_BOUND_10


def test_deterministic_candidates_without_probabilities_match_the_target():
    """Lookup-style siblings (point masses) tried in turn, with the residual renormalised."""
    logits = random_logits(4, seed=3)
    target = warp_probs(logits[0], PARAMS)
    tree = DraftTree([int(target.argmin()), 4, int(target.argmax())], [-1, -1, -1])
    counts = first_token_counts(lambda: tree, logits, PARAMS, seed=4)
    assert tv_distance(counts, target) < TV_BOUND_10


def test_top_k_and_top_p_are_respected():
    params = SamplingParams(temperature=0.7, top_k=5, top_p=0.8)
    logits = random_logits(2, seed=5)
    target = warp_probs(logits[0], params)
    assert int((target > 0).sum()) < 5  # truncation is active
    tree = DraftTree.chain([int(logits[0].argmin())])  # a candidate the target can never emit
    counts = first_token_counts(lambda: tree, logits, params, seed=6)
    assert counts[target == 0].sum() == 0
    assert tv_distance(counts, target) < TV_BOUND_10


def markov_logits(transition_logits: torch.Tensor, committed: int, tree: DraftTree) -> torch.Tensor:
    """A target whose next-token distribution depends on the previous token only: row 0 follows the
    committed token, row 1 + i follows node i."""
    previous = [committed] + tree.token_list
    return transition_logits[previous]  # [1+n, VOCAB]


def two_token_counts(make_tree, transition_logits: torch.Tensor, seed: int) -> torch.Tensor:
    """Joint counts of the first two generated tokens, continuing with plain sampling when a
    step commits only one token (as the engine's next step would)."""
    generator = torch.Generator().manual_seed(seed)
    continue_plainly = Draw(warp_probs(transition_logits, PARAMS), seed=seed + 1)
    counts = torch.zeros(VOCAB * VOCAB)
    for _ in range(SAMPLES):
        tree = make_tree()
        result = sampling_accept(tree, markov_logits(transition_logits, 0, tree), PARAMS, generator)
        tokens = [tree.token_list[node] for node in result.accepted] + [result.next_token]
        if len(tokens) == 1:
            tokens.append(continue_plainly(tokens[0]))
        counts[tokens[0] * VOCAB + tokens[1]] += 1
    return counts


def joint_target(transition_logits: torch.Tensor) -> torch.Tensor:
    transition = warp_probs(transition_logits, PARAMS)  # [VOCAB, VOCAB]
    return (transition[0][:, None] * transition).reshape(-1)  # P(x1) * P(x2 | x1)


def test_tree_with_sampled_siblings_matches_the_target_jointly():
    """SpecInfer-style recursive rejection: two i.i.d. draft samples at the root, each with a sampled child."""
    transition_logits = random_logits(VOCAB, seed=7)
    draft = warp_probs(random_logits(VOCAB, seed=8), PARAMS)  # the drafter's own Markov chain

    draw = Draw(draft, seed=21)

    def make_tree():
        roots = [draw(0), draw(0)]
        children = [draw(r) for r in roots]
        tokens = [roots[0], children[0], roots[1], children[1]]
        probs = torch.stack([draft[0], draft[roots[0]], draft[0], draft[roots[1]]])
        return DraftTree(tokens, [-1, 0, -1, 2], probs)

    counts = two_token_counts(make_tree, transition_logits, seed=9)
    assert tv_distance(counts, joint_target(transition_logits)) < TV_BOUND_100


def test_deterministic_tree_matches_the_target_jointly():
    transition_logits = random_logits(VOCAB, seed=10)
    tree = DraftTree([1, 2, 3, 4, 5], [-1, 0, 0, -1, 3])
    counts = two_token_counts(lambda: tree, transition_logits, seed=11)
    assert tv_distance(counts, joint_target(transition_logits)) < TV_BOUND_100


def test_merged_tree_of_sampled_and_deterministic_drafts_matches_the_target():
    transition_logits = random_logits(VOCAB, seed=12)
    draft = warp_probs(random_logits(VOCAB, seed=13), PARAMS)
    lookup = DraftTree.chain([6, 7])

    draw = Draw(draft, seed=22)

    def make_tree():
        first = draw(0)
        second = draw(first)
        sampled = DraftTree.chain([first, second], torch.stack([draft[0], draft[first]]))
        return DraftTree.merge([lookup, sampled])

    counts = two_token_counts(make_tree, transition_logits, seed=14)
    assert tv_distance(counts, joint_target(transition_logits)) < TV_BOUND_100


def test_same_seed_gives_the_same_result():
    logits = random_logits(4, seed=15)
    tree = DraftTree([1, 2, 3], [-1, 0, -1])
    runs = [
        [sampling_accept(tree, logits, PARAMS, torch.Generator().manual_seed(s)) for s in range(50)]
        for _ in range(2)
    ]
    assert runs[0] == runs[1]
    assert len({(tuple(r.accepted), r.next_token) for r in runs[0]}) > 1  # the seed really matters


def test_accept_dispatches_on_temperature():
    tree = DraftTree.chain([3])
    logits = one_hot_logits(3, 6, margin=50.0)
    assert accept(tree, logits, SamplingParams()).next_token == 6
    assert accept(tree, logits, SamplingParams(temperature=1.0), torch.Generator().manual_seed(0)).next_token == 6


def test_sample_from_follows_the_probabilities_and_never_draws_zero_mass():
    """The inverse-CDF draw shared by drafters and verifiers: frequencies over seeded uniforms converge
    to the (unnormalised) probabilities, and ids of zero mass (a pruned drafter head) are never drawn."""
    probs = torch.tensor([0.0, 0.2, 0.0, 0.5, 0.3, 0.0]) * 2  # sums to 2: normalised by the draw
    uniforms = torch.rand(20000, generator=torch.Generator().manual_seed(0)).tolist()
    counts = torch.zeros(6)
    for uniform in uniforms:
        counts[sample_from(probs, uniform)] += 1
    assert counts[probs == 0].sum() == 0
    assert 0.5 * float((counts / counts.sum() - probs / probs.sum()).abs().sum()) < 0.02
    assert sample_from(probs, 0.0) == 1 and sample_from(probs, 0.9999999) == 4
