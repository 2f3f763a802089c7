"""Node prices: a drafter with probabilities drafts the nodes its own top probabilities pay for, priced at the
generation's decoding rate; the engine hands prices only to drafters that price their nodes; every draft made this
way is lossless, greedy and sampled."""

from __future__ import annotations

import pytest
import torch
from tiny import OracleDrafter, assert_frequencies_match, hf_greedy, loaded, random_prompt, tiny_model

from specdecode import SpeculativeGenerator
from specdecode.drafters import ModelDrafter
from specdecode.outputs import Step
from specdecode.policy import DraftSizer, ForwardCosts, NodePrices, SizerSettings

SHALLOW = ForwardCosts((1, 64), (1.0, 1.0 + 63 * 0.02))  # each verified node costs 2% of a step


class StoppedClock:
    """A clock that never moves: the rate stays plain decoding's (1 / verify(1)) and drafting costs nothing."""

    def __call__(self) -> float:
        return 0.0


def test_prices_follow_the_decoding_rate_and_the_costs():
    sizer = DraftSizer(ForwardCosts((1, 2, 8), (1.0, 1.2, 2.4)))
    before = sizer.prices()
    assert before.rate == pytest.approx(1.0)  # before any step: plain decoding's tokens per second
    assert before.keep(0) == pytest.approx(0.2) and before.keep(1) == pytest.approx(0.2)  # one more verified row
    assert before.expand(0) == pytest.approx(0.2)  # no drafting measured yet
    sizer.observe(Step(drafted=3, depth=3, accepted=3, recovered=False, rows=4, draft_s=0.3, verify_s=1.7))
    after = sizer.prices()
    assert after.rate == pytest.approx(4 / 2.0) and after.draft_per_node == pytest.approx(0.1)
    assert after.expand(0) == pytest.approx(2.0 * 0.1 + 2.0 * 0.2)  # a drafter forward and a row, at 2 tok/s


def top_probabilities(model, context: list[int], count: int) -> list[float]:
    """The model's top probability after context[:len(context) - count + i] for i in 0..count (teacher forced)."""
    with torch.no_grad():
        probs = model(torch.tensor([context])).logits[0].float().softmax(-1)  # [len, vocab]
    return probs.max(-1).values[len(context) - count - 1:].tolist()


@pytest.mark.parametrize("prices", [NodePrices(1.0, SHALLOW, 0.05), NodePrices(3.0, SHALLOW, 0.0),
                                    NodePrices(0.0, SHALLOW, 0.0)])
def test_a_priced_chain_stops_where_its_next_node_would_not_pay(prices):
    draft = loaded(tiny_model("llama", seed=1))
    drafter = ModelDrafter(draft, confidence=0, max_k=8)
    prompt = random_prompt(5)
    with torch.inference_mode():
        drafter.begin(prompt)
        chain = drafter.propose(prompt, 8, prices=prices).token_list
    tops = top_probabilities(draft.model, prompt + chain, len(chain))  # [len(chain) + 1]
    expected, chance = 0, 1.0  # the rule, step by step: keep a node that pays its row, draft on while a child would
    for level in range(8):
        if level > 0 and chance * tops[level] < prices.keep(level):
            break
        expected, chance = expected + 1, chance * tops[level]
        if chance * tops[level] < prices.expand(level + 1):
            break
    assert len(chain) == expected
    if prices.rate == 0:
        assert len(chain) == 8  # free nodes: as deep as allowed


class PricedOracle(OracleDrafter):
    """An oracle that records the tokens generated, the budget and the prices at each proposal."""

    prices_nodes = True

    def __init__(self, prompt, *args, **kwargs):
        super().__init__(prompt, *args, **kwargs)
        self.prompt_length, self.calls = len(prompt), []

    def propose(self, context_ids, budget, prices=None):
        self.calls.append((len(context_ids) - self.prompt_length, budget, prices))
        return super().propose(context_ids, budget)


@pytest.mark.parametrize("node_prices", [True, False])
def test_the_engine_prices_nodes_only_for_drafters_that_price_them(node_prices):
    target = loaded(tiny_model("llama", seed=0))
    prompt = random_prompt(3)
    truth = hf_greedy(target.model, prompt, 30)
    drafter = PricedOracle(prompt, truth, seed=1)
    gen = SpeculativeGenerator(target, drafter=drafter, cost_model=SHALLOW, max_draft_tokens=10,
                               draft_policy=SizerSettings(node_prices=node_prices))
    assert gen.generate(prompt, max_new_tokens=30).token_ids == truth
    assert drafter.calls
    for generated, budget, prices in drafter.calls:
        if node_prices:  # the largest budget the step allows, and what a node must be worth
            assert isinstance(prices, NodePrices) and budget == min(10, 30 - generated - 1)
        else:  # the cost model's size, no prices
            assert prices is None and budget <= min(10, 30 - generated - 1)


@pytest.mark.parametrize("tree_width", [1, 3])
def test_priced_model_drafts_are_lossless(tree_width):
    target = loaded(tiny_model("llama", seed=0))
    prompt = random_prompt(4)
    truth = hf_greedy(target.model, prompt, 40)
    for draft in (target, loaded(tiny_model("llama", seed=1))):  # agreeing (deep drafts) and independent
        drafter = ModelDrafter(draft, tree_width=tree_width, confidence=0)
        out = SpeculativeGenerator(target, drafter=drafter, cost_model=SHALLOW, clock=StoppedClock()).generate(
            prompt, max_new_tokens=40)
        assert out.token_ids == truth
        if draft is target and tree_width == 1:  # its own weights: every node accepted, chains as long as their chance pays
            assert out.stats.accepted_tokens == out.stats.drafted_tokens > 0


def test_sampling_through_priced_chains_follows_the_target_distribution():
    """The first two sampled tokens (vocab 8, 3 new tokens so that a draft may hold both) are distributed
    as the target's p(x0) p(x1 | x0) when priced chains of another model drafted them."""
    vocab = 8
    model = tiny_model("llama", seed=0, vocab=vocab)
    drafter = ModelDrafter(loaded(tiny_model("llama", seed=3, vocab=vocab)), confidence=0)
    gen = SpeculativeGenerator(loaded(model), drafter=drafter, cost_model=SHALLOW, clock=StoppedClock())
    prompt = random_prompt(7, vocab=vocab)
    with torch.no_grad():
        first = model(torch.tensor([prompt])).logits[0, -1].softmax(-1)  # [vocab]
        second = model(torch.tensor([[*prompt, token] for token in range(vocab)])).logits[:, -1].softmax(-1)  # [vocab, vocab]
    counts, deep = torch.zeros(vocab * vocab), 0
    for seed in range(800):
        out = gen.generate(prompt, max_new_tokens=3, temperature=1.0, seed=seed)
        counts[out.token_ids[0] * vocab + out.token_ids[1]] += 1
        deep += sum(out.stats.accept_histogram[2:])  # steps that accepted two drafted tokens
    assert deep > 50  # two-token drafts were made and taken, not only plain steps
    assert_frequencies_match(counts, (first[:, None] * second).flatten())


def test_self_drafts_over_a_compressed_cache_keep_the_sized_budget_and_windowed_drafters_price():
    """A self-draft's probabilities over a compressed cache overstate agreement; a windowed drafter sees the
    prompt's head and tail, and its probabilities predicted acceptance well enough to price (cost-model.md)."""
    from specdecode.drafters import SelfDrafter

    target = loaded(tiny_model("llama", seed=0))
    prompt = random_prompt(6, length=60)
    windowed, whole = ModelDrafter(target, context_window=40), ModelDrafter(target, context_window=None)
    compressed, full = SelfDrafter(target, kv="streaming", kv_budget=24, weights=None), SelfDrafter(target, kv="full",
                                                                                                     weights=None)
    for drafter, priced in ((windowed, True), (whole, True), (compressed, False), (full, True)):
        out = SpeculativeGenerator(target, drafter=drafter, cost_model=SHALLOW).generate(prompt, max_new_tokens=12)
        assert drafter.prices_nodes is priced and (out.stats.cost_model["priced_steps"] > 0) is priced
        assert out.token_ids == hf_greedy(target.model, prompt, 12)
