"""RetrievalDrafter (context + passages + corpus suffix index, frequency trie) and MixtureDrafter:
the data structures on hand-made tokens, greedy exactness on tiny models, sampling in distribution."""

# cost_model=None: these tests verify every draft the drafters make; the cost model (test_costs.py)
# would rightly skip drafts of drafters as slow as these small targets.

from __future__ import annotations

import pytest
from tiny import (RandomDrafter, first_token_total_variation, hf_greedy, loaded, random_prompt, repetitive_prompt,
                  tiny_model)

from specdecode import SpeculativeGenerator
from specdecode.drafters import LookupDrafter, MixtureDrafter, ModelDrafter, RetrievalDrafter, SuffixIndex
from specdecode.drafters.suffix import frequency_tree
from specdecode.drafters.base import Drafter
from specdecode.errors import SpecDecodeError
from specdecode.tree import DraftTree

NEW_TOKENS = 40


# ----------------------------------------------------------------------------- data structures
def test_suffix_index_finds_every_occurrence_and_stops_at_sequence_ends():
    index = SuffixIndex([[5, 6, 7, 5, 6, 8], [9, 5, 6]], key_tokens=4)
    assert sorted(index.positions([5, 6]).tolist()) == [0, 3, 8]
    assert sorted(index.positions([5, 6, 7]).tolist()) == [0]
    assert index.positions([6, 9]).tolist() == []  # never across the separator
    assert sorted(index.continuations([5, 6], depth=3)) == [[7, 5, 6], [8]]  # [9, 5, 6] ends: no continuation
    assert index.positions([1, 2, 3, 4, 5]).tolist() == []  # longer than the key
    assert SuffixIndex([]).continuations([1], 2) == []


def test_frequency_tree_takes_the_heaviest_nodes_parents_first():
    weighted = [([1, 2, 3], 1.0), ([1, 2, 4], 1.0), ([1, 5], 0.5), ([7], 0.2)]
    tree = frequency_tree(weighted, max_nodes=4)
    assert tree.token_list == [1, 2, 3, 4]  # 1 (2.5), 2 (2.0), then 3 and 4 (1.0 each) beat 5 (0.5)
    assert tree.parent_list == [-1, 0, 1, 1]
    assert frequency_tree(weighted, max_nodes=10).token_list == [1, 2, 3, 4, 5, 7]
    assert len(frequency_tree([], 5)) == 0


def test_retrieval_drafter_prefers_the_longest_match_and_weights_sources():
    drafter = RetrievalDrafter(passages=[[1, 2, 3, 40, 41], [9, 3, 50]], max_ngram=3, min_ngram=1, k=2)
    drafter.begin([0])
    # the context ends with 2, 3: only the first passage continues "2 3" (the 1-gram "3" would also match [50])
    tree = drafter.propose([7, 2, 3], budget=8)
    assert tree.token_list == [40, 41]
    corpus = SuffixIndex([[2, 3, 60, 61]] * 5, key_tokens=4)
    mixed = RetrievalDrafter(corpus, passages=[[2, 3, 40, 41]], max_ngram=2, min_ngram=2, k=2, max_nodes=2)
    mixed.begin([0])
    assert mixed.propose([2, 3], budget=8).token_list == [60, 61]  # five corpus matches outweigh one passage
    with pytest.raises(SpecDecodeError, match="max_ngram"):
        RetrievalDrafter(SuffixIndex([[1]], key_tokens=2), max_ngram=4)


# ----------------------------------------------------------------------------- exactness
@pytest.fixture(scope="module", params=["llama", "qwen2"])
def models(request):
    return loaded(tiny_model(request.param, seed=0)), loaded(tiny_model(request.param, seed=1))


PROMPTS = [random_prompt(1), repetitive_prompt(3), random_prompt(2, length=30)]


def retrieval_drafters(target, other, reference):
    """Drafters whose passages hold the right continuation, garbage, or a corpus of both."""
    right = [reference[i : i + 12] for i in range(0, len(reference), 6)]
    garbage = [random_prompt(s, length=20) for s in range(10, 14)]
    corpus = SuffixIndex(garbage + right + [p for p in PROMPTS], key_tokens=8)
    yield "passages-right", RetrievalDrafter(passages=right)
    yield "passages-garbage", RetrievalDrafter(passages=garbage, min_ngram=1)
    yield "corpus", RetrievalDrafter(corpus, max_ngram=6, min_ngram=1, max_nodes=20)
    yield "context-only-k3", RetrievalDrafter(k=3, min_ngram=1)
    yield "mixture-retrieval-model", MixtureDrafter([RetrievalDrafter(passages=right),
                                                      ModelDrafter(other, k=3, confidence=0)])
    yield "mixture-lookup-random", MixtureDrafter([LookupDrafter(), RandomDrafter(5)])


def test_retrieval_and_mixture_drafters_are_lossless(models):
    target, other = models
    for prompt in PROMPTS:
        reference = hf_greedy(target.model, prompt, NEW_TOKENS)
        for name, drafter in retrieval_drafters(target, other, reference):
            for budget in (64, 3) if name.startswith("mixture") else (64,):  # 3: the mixture ranks and cuts
                gen = SpeculativeGenerator(target, drafter=drafter, cost_model=None, max_draft_tokens=budget)
                out = gen.generate(prompt, max_new_tokens=NEW_TOKENS)
                assert out.token_ids == reference, f"{name} (budget {budget}) changed the output for {prompt}"


def test_right_passages_are_accepted_and_the_mixture_reports_per_drafter(models):
    target, other = models
    prompt = PROMPTS[0]
    reference = hf_greedy(target.model, prompt, NEW_TOKENS)
    right = [reference[i : i + 12] for i in range(0, len(reference), 6)]
    gen = SpeculativeGenerator(target, drafter=RetrievalDrafter(passages=right), cost_model=None)
    out = gen.generate(prompt, NEW_TOKENS)
    assert out.stats.mean_accepted > 2.5
    mixture = MixtureDrafter([RetrievalDrafter(passages=right), RandomDrafter(2)])
    out = SpeculativeGenerator(target, drafter=mixture, cost_model=None).generate(prompt, max_new_tokens=NEW_TOKENS)
    report = out.stats.drafters
    assert set(report) == {"retrieval", "random"}
    assert report["retrieval"]["accepted"] > report["random"]["accepted"]
    assert all(r["accepted"] <= r["drafted"] for r in report.values())
    assert sum(r["accepted"] for r in report.values()) >= out.stats.accepted_tokens


def test_sampling_with_retrieval_drafts_keeps_the_target_distribution():
    """First sampled token vs the target's softmax (vocab 16, 4000 samples): the point-mass drafts
    of a retrieval + model mixture must not bias it."""
    model = tiny_model("llama", seed=0, vocab=16)
    prompt = random_prompt(7, vocab=16)
    passages = [prompt[-3:] + [t, (t + 1) % 16] for t in range(0, 16, 3)]  # several candidates after the prompt
    drafter = MixtureDrafter([RetrievalDrafter(passages=passages, min_ngram=1),
                              ModelDrafter(loaded(tiny_model("llama", seed=3, vocab=16)), k=2, confidence=0)])
    gen = SpeculativeGenerator(loaded(model), drafter=drafter, cost_model=None, max_draft_tokens=3)  # cut: ranked
    assert first_token_total_variation(gen, model, prompt) < 0.05  # expected TV ~0.02


def test_each_drafter_in_a_mixture_adapts_to_its_own_acceptance(models):
    target, _ = models
    prompt = PROMPTS[0]
    reference = hf_greedy(target.model, prompt, NEW_TOKENS)
    right = RetrievalDrafter(passages=[prompt[-2:] + reference], initial_k=4)
    noise = [random_prompt(s, length=40) for s in range(20, 30)]  # matches often, continues wrongly
    wrong = RetrievalDrafter(passages=noise, min_ngram=1, initial_k=4)
    gen = SpeculativeGenerator(target, drafter=MixtureDrafter([right, wrong]), cost_model=None)
    out = gen.generate(prompt, NEW_TOKENS)
    assert out.token_ids == reference
    assert right.length.current > wrong.length.current  # the right one grew, the wrong one shrank
    assert wrong.length.current <= 2


class ScriptedDrafter(Drafter):
    """Proposes the next `depth` tokens of `text` (right) or of its shift by one (wrong); counts its calls."""

    def __init__(self, name: str, text: list[int], right: bool, depth: int = 2):
        self.name, self.text, self.right, self.depth, self.calls = name, text, right, depth, 0

    def propose(self, context_ids, budget):
        self.calls += 1
        start = len(context_ids) + (0 if self.right else 1)
        return DraftTree.chain(self.text[start : start + min(self.depth, budget)])


def test_a_mixture_keeps_the_likelier_drafter_first_and_skips_one_that_cannot_make_the_cut():
    text = list(range(100, 160))
    wrong, right = ScriptedDrafter("wrong", text, right=False), ScriptedDrafter("right", text, right=True)
    mixture = MixtureDrafter([wrong, right])  # list order puts the wrong one first; scores alone
    mixture.begin(text[:5])
    context = text[:5]
    first = mixture.propose(context, budget=2)
    assert first.token_list == [text[6], text[5]]  # no evidence yet: each one's first token, in list order
    for _ in range(6):
        tree = mixture.propose(context, budget=2)
        committed = text[len(context) : len(context) + tree.matched_depth(text[len(context):]) + 1]
        mixture.accept(committed)
        context = context + committed
    assert mixture.propose(context, budget=2).token_list == text[len(context) : len(context) + 2]
    calls = wrong.calls
    report = mixture.report()
    assert report["right"]["alpha"] > 0.8 and report["wrong"]["alpha"] < 0.5  # (unrun, it drifts back to the prior)
    assert report["wrong"]["skipped_steps"] > 0 and calls < right.calls  # its best node could not beat right's two
    assert report["right"]["accepted"] > 0 and report["wrong"]["accepted"] == 0
    assert mixture.propose(context, budget=8).token_list[:2] == text[len(context) : len(context) + 2]
    assert wrong.calls == calls + 1  # with room for more nodes the wrong one runs again


def test_drafter_kinds_reads_names_not_substrings():
    from specdecode.drafters.registry import drafter_kinds

    assert drafter_kinds("retrieval+model:qwen") == {"retrieval", "model"}
    assert drafter_kinds("model:my-retrieval-tuned-model") == {"model"}  # a model's name is not a drafter kind
