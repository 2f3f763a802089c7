"""Greedy exactness on a real model from the offline zoo (SmolLM2-135M-Instruct, fp32).

`make test` pulls the model first (`specdecode models pull smollm2-135m-instruct`)."""

# cost_model=None: these tests verify every draft the drafters make; the cost model (test_costs.py)
# would rightly skip drafts of drafters as slow as these small targets.

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch

from specdecode import SpeculativeGenerator, first_divergence, load_model
from specdecode.drafters import LookupDrafter, MixtureDrafter, ModelDrafter

pytestmark = pytest.mark.zoo

NEW_TOKENS = 32
PROMPTS = [
    [{"role": "user", "content": "Write a Python function that returns the n-th Fibonacci number."}],
    [{"role": "user", "content": "Summarize: The cat sat on the mat. The cat was black and the mat was red. "
                                 "Later the cat left the mat and the mat stayed red."}],
]


@pytest.fixture(scope="module")
def target():
    return load_model("smollm2-135m-instruct", dtype="fp32")


@pytest.fixture(scope="module")
def noisy(target):
    """A perturbed copy of the target: a drafter that agrees often, but not always."""
    model = copy.deepcopy(target.model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * param.std() * 0.1)
    return replace(target, model=model, name="smollm2-noisy")


@pytest.fixture(scope="module")
def references(target):
    gen = SpeculativeGenerator(target)
    refs = {}
    for i, prompt in enumerate(PROMPTS):
        ours = gen.generate(prompt, max_new_tokens=NEW_TOKENS)
        ids = torch.tensor([ours.prompt_ids])
        hf = target.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS,
                                   do_sample=False)[0, ids.shape[1]:].tolist()
        assert ours.token_ids == hf, "our plain decoding must equal transformers' generate"
        refs[i] = ours
    return refs


@pytest.mark.parametrize(
    "make_drafter",
    [
        pytest.param(lambda t, n: ModelDrafter(t, k=4, confidence=0), id="model-self"),
        pytest.param(lambda t, n: ModelDrafter(n, k=4, confidence=0), id="model-noisy-chain"),
        pytest.param(lambda t, n: ModelDrafter(n, k=3, tree_width=3), id="model-noisy-tree"),
        pytest.param(lambda t, n: LookupDrafter(), id="lookup"),
        pytest.param(lambda t, n: LookupDrafter(tree_width=3), id="lookup-tree"),
    ],
)
def test_greedy_speculative_equals_plain_on_smollm2(target, noisy, references, make_drafter):
    gen = SpeculativeGenerator(target, drafter=make_drafter(target, noisy), cost_model=None)
    for i, prompt in enumerate(PROMPTS):
        out = gen.generate(prompt, max_new_tokens=NEW_TOKENS)
        divergence = first_divergence(references[i], out)
        assert divergence is None, divergence.describe()
        assert out.text == references[i].text


@pytest.mark.parametrize("tree_width", [1, 3])
def test_drafts_by_node_prices_equal_plain_on_smollm2(target, noisy, references, tree_width):
    """Under the cost model, chains and trees as deep as the drafter's own probabilities pay for (a stopped
    clock: the rate stays plain decoding's and drafting is free, so the prices decide alone)."""
    from specdecode.policy import ForwardCosts

    costs = ForwardCosts((1, 64), (1.0, 1.0 + 63 * 0.02))
    gen = SpeculativeGenerator(target, drafter=ModelDrafter(noisy, tree_width=tree_width), cost_model=costs,
                               clock=lambda: 0.0)
    for i, prompt in enumerate(PROMPTS):
        out = gen.generate(prompt, max_new_tokens=NEW_TOKENS)
        divergence = first_divergence(references[i], out)
        assert divergence is None, divergence.describe()
        assert out.stats.cost_model["priced_steps"] > 0 and out.stats.accepted_tokens > 0


def test_noisy_drafter_is_really_tested(target, noisy, references):
    """The perturbed drafter is neither always right nor always wrong."""
    out = SpeculativeGenerator(target, drafter=ModelDrafter(noisy, k=4, confidence=0), cost_model=None).generate(
        PROMPTS[0], max_new_tokens=NEW_TOKENS)
    assert 0.1 < out.stats.acceptance_rate < 0.95


@pytest.fixture(scope="module")
def long_text_prompt(target):
    """~1500 tokens of a Python standard library module's source (every machine with Python has it)."""
    import argparse
    import inspect

    ids = target.tokenizer.encode(inspect.getsource(argparse))[:1500]
    return [{"role": "user", "content": target.tokenizer.decode(ids) + "\n\nSummarize the code above."}]


@pytest.mark.parametrize("drafter", [
    pytest.param(dict(kv="snapkv", kv_budget=256, weights="int8"), id="snapkv-int8"),
    pytest.param(dict(kv="streaming", kv_budget=256, weights=None, tree_width=2), id="streaming-own-tree"),
])
def test_self_draft_on_a_long_text_equals_plain_on_smollm2(target, long_text_prompt, drafter):
    from specdecode.drafters import SelfDrafter

    plain = SpeculativeGenerator(target).generate(long_text_prompt, max_new_tokens=NEW_TOKENS, speculative=False)
    mixture = MixtureDrafter([LookupDrafter(), SelfDrafter(target, **drafter)])
    out = SpeculativeGenerator(target, drafter=mixture, cost_model=None).generate(long_text_prompt,
                                                                                   max_new_tokens=NEW_TOKENS)
    divergence = first_divergence(plain, out)
    assert divergence is None, divergence.describe()
    assert out.stats.drafters["self:" + drafter["kv"] + (":int8" if drafter["weights"] else "")]["accepted"] > 0
