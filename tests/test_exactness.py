"""Greedy speculative output is token-identical to plain decoding and to transformers' generate,
for every drafter and tree shape, on tiny random Llama and Qwen2 models in fp32."""

# cost_model=None: these tests verify every draft the drafters make; the cost model (test_costs.py)
# would rightly skip drafts of drafters as slow as these small targets.

from __future__ import annotations

import copy

import pytest
import torch
from tiny import OracleDrafter, RandomDrafter, hf_greedy, loaded, random_prompt, repetitive_prompt, tiny_model

from specdecode import SpeculativeGenerator
from specdecode.drafters import LookupDrafter, ModelDrafter
from specdecode.drafters.prompt_window import PromptWindow
from specdecode.errors import SpecDecodeError
from specdecode.runtime.runner import _full_mask, _padded

NEW_TOKENS = 40
ARCHS = ["llama", "qwen2"]


@pytest.fixture(scope="module", params=ARCHS)
def arch(request):
    return request.param


@pytest.fixture(scope="module")
def target(arch):
    return loaded(tiny_model(arch, seed=0), name=f"tiny-{arch}")


@pytest.fixture(scope="module")
def other(arch):
    """An independent random model of the same vocabulary: a drafter that is mostly wrong."""
    return loaded(tiny_model(arch, seed=1), name=f"tiny-{arch}-other")


PROMPTS = [random_prompt(1), random_prompt(2, length=30), repetitive_prompt(3), [7]]


@pytest.fixture(scope="module")
def references(target):
    return {tuple(p): hf_greedy(target.model, p, NEW_TOKENS) for p in PROMPTS}


def drafters(target, other):
    yield "self-chain-k4", ModelDrafter(target, k=4, confidence=0)
    yield "self-chain-adaptive", ModelDrafter(target, confidence=0)
    yield "self-tree-w3", ModelDrafter(target, k=4, tree_width=3, confidence=0)
    for k in (1, 3, 6):
        yield f"other-chain-k{k}", ModelDrafter(other, k=k, confidence=0)
    yield "other-chain-confident", ModelDrafter(other, k=5, confidence=0.05)
    for width in (2, 4):
        yield f"other-tree-w{width}", ModelDrafter(other, k=3, tree_width=width, max_nodes=10)
    yield "self-pruned-vocab", ModelDrafter(target, k=3, confidence=0, draft_vocab=40)
    yield "other-tree-pruned-vocab", ModelDrafter(other, k=3, tree_width=2, draft_vocab=24)
    yield "lookup-chain", LookupDrafter()
    yield "lookup-k2", LookupDrafter(k=2)
    yield "lookup-tree", LookupDrafter(tree_width=3, min_ngram=1, max_ngram=2)
    for seed in range(3):
        yield f"random-{seed}", RandomDrafter(seed)


def test_plain_decoding_equals_transformers_generate(target, references):
    gen = SpeculativeGenerator(target)
    for prompt in PROMPTS:
        out = gen.generate(prompt, max_new_tokens=NEW_TOKENS)
        assert out.token_ids == references[tuple(prompt)]
        assert out.stats.steps == NEW_TOKENS and out.stats.mean_accepted == 1.0
        assert out.stop_reason == "max_new_tokens"


def test_every_drafter_is_lossless(target, other, references):
    for name, drafter in drafters(target, other):
        gen = SpeculativeGenerator(target, drafter=drafter, cost_model=None)
        for prompt in PROMPTS:
            out = gen.generate(prompt, max_new_tokens=NEW_TOKENS)
            assert out.token_ids == references[tuple(prompt)], f"{name} changed the output for {prompt}"
            plain = gen.generate(prompt, max_new_tokens=NEW_TOKENS, speculative=False)
            assert plain.token_ids == out.token_ids


def test_drafter_equal_to_target_accepts_everything(target, references):
    gen = SpeculativeGenerator(target, drafter=ModelDrafter(target, k=4, confidence=0), cost_model=None)
    out = gen.generate(PROMPTS[0], max_new_tokens=NEW_TOKENS)
    assert out.token_ids == references[tuple(PROMPTS[0])]
    assert out.stats.acceptance_rate == 1.0
    assert out.stats.mean_accepted == 5.0  # 4 drafted + the target's own token, every step
    assert out.stats.accept_histogram == (0, 0, 0, 0, NEW_TOKENS // 5)


def test_independent_drafter_is_mostly_rejected_yet_lossless(target, other, references):
    gen = SpeculativeGenerator(target, drafter=ModelDrafter(other, k=4, confidence=0), cost_model=None)
    out = gen.generate(PROMPTS[1], max_new_tokens=NEW_TOKENS)
    assert out.token_ids == references[tuple(PROMPTS[1])]
    assert out.stats.acceptance_rate < 0.5
    assert out.stats.accept_histogram[0] > 0


@pytest.mark.parametrize("tree_width", [1, 3])
def test_windowed_drafter_sees_the_head_and_the_tail_and_is_lossless(target, tree_width):
    prompt = random_prompt(5, length=90)
    drafter = ModelDrafter(target, k=4, tree_width=tree_width, confidence=0, context_window=48)
    gen = SpeculativeGenerator(target, drafter=drafter, cost_model=None)
    out = gen.generate(prompt, max_new_tokens=NEW_TOKENS)
    assert out.token_ids == hf_greedy(target.model, prompt, NEW_TOKENS)
    seen = prompt[:24] + prompt[-24:]  # the window's first half from the prompt's start, then its last 24 tokens
    assert drafter.cached_ids[: len(seen)] == seen
    assert drafter.cache.length < len(seen) + NEW_TOKENS  # the middle of the prompt was never fed
    assert 0 < out.stats.acceptance_rate < 1  # the target's own weights, not its whole prompt
    short = gen.generate(prompt[:40], max_new_tokens=8)  # within the window: the whole prompt
    assert drafter.cached_ids[:40] == prompt[:40] and short.token_ids == hf_greedy(target.model, prompt[:40], 8)


def test_prompt_window_keeps_its_head_and_refuses_a_head_that_leaves_no_tail():
    window = PromptWindow(48, head=16)
    ids = list(range(100))
    assert window.tail_start(48) is None and window.view(ids[:48], None) == ids[:48]  # fits: whole
    start = window.tail_start(100)
    assert window.view(ids + [500, 501], start) == [*range(16), *range(68, 100), 500, 501]  # generated tokens kept
    assert PromptWindow(48).head == 24
    for size, head in ((48, 40), (48, 8), (32, None)):
        with pytest.raises(SpecDecodeError, match="context_head|context_window"):
            PromptWindow(size, head)


def test_deep_trees_with_decoys_are_lossless(target, references):
    for seed in range(4):
        prompt = PROMPTS[seed % len(PROMPTS)]
        truth = references[tuple(prompt)]
        gen = SpeculativeGenerator(target, drafter=OracleDrafter(prompt, truth, seed=seed), max_draft_tokens=12,
                                   cost_model=None)
        out = gen.generate(prompt, max_new_tokens=NEW_TOKENS)
        assert out.token_ids == truth
        assert max(i for i, n in enumerate(out.stats.accept_histogram) if n) >= 2  # deep paths were accepted


def test_end_of_sequence_inside_an_accepted_draft_stops_there(target, references):
    prompt = PROMPTS[0]
    eos = references[tuple(prompt)][9]  # make the 10th generated token the end-of-sequence token
    expected = hf_greedy(target.model, prompt, NEW_TOKENS, eos=eos)
    target.model.generation_config.eos_token_id = eos
    try:
        for drafter in (None, ModelDrafter(target, k=6, confidence=0), LookupDrafter()):
            gen = SpeculativeGenerator(target, drafter=drafter, cost_model=None)
            out = gen.generate(prompt, max_new_tokens=NEW_TOKENS)
            assert out.token_ids == expected and out.token_ids[-1] == eos
            assert out.stop_reason == "eos"
    finally:
        target.model.generation_config.eos_token_id = None


@pytest.mark.parametrize("max_new_tokens", [1, 2, 7])
def test_token_budget_is_exact_even_mid_draft(target, references, max_new_tokens):
    prompt = PROMPTS[0]
    gen = SpeculativeGenerator(target, drafter=ModelDrafter(target, k=5, confidence=0), cost_model=None)
    out = gen.generate(prompt, max_new_tokens=max_new_tokens)
    assert out.token_ids == references[tuple(prompt)][:max_new_tokens]


def test_bf16_verification_reports_divergence_honestly(monkeypatch):
    """A bf16 target left without exact steps, on a kernel whose one-row path sums in another order (as a
    CPU's matrix-vector path may): speculative decoding leaves plain decoding at near-ties, and the engine
    does not hide it: first_divergence names the position, both tokens and plain decoding's margin there."""
    import torch.nn.functional as F
    from tiny import rowwise_linear

    from specdecode import first_divergence

    original = F.linear

    def one_row_in_two_halves(x, weight, bias=None):  # a lone row: two partial products, each rounded
        if x.numel() != x.shape[-1]:
            return rowwise_linear(x, weight, bias)
        half = x.shape[-1] // 2
        out = original(x[..., :half], weight[:, :half]) + original(x[..., half:], weight[:, half:])
        return out if bias is None else out + bias

    monkeypatch.setattr(F, "linear", one_row_in_two_halves)
    bf16 = loaded(tiny_model("llama", seed=0).to(torch.bfloat16), "tiny-bf16")
    divergences = []
    for prompt in PROMPTS:
        plain = SpeculativeGenerator(bf16).generate(prompt, max_new_tokens=NEW_TOKENS)
        assert len(plain.top2_margins) == NEW_TOKENS
        spec = SpeculativeGenerator(bf16, drafter=ModelDrafter(bf16, k=4, confidence=0), cost_model=None).generate(
            prompt, max_new_tokens=NEW_TOKENS)
        divergence = first_divergence(plain, spec)
        if spec.token_ids != plain.token_ids:
            divergences.append((divergence, plain, spec))
        else:
            assert divergence is None
    assert divergences  # this kernel does make verification round apart from one-token steps
    for divergence, plain, spec in divergences:
        position = divergence.position
        assert plain.token_ids[:position] == spec.token_ids[:position]
        assert (divergence.reference_token, divergence.other_token) == (plain.token_ids[position],
                                                                          spec.token_ids[position])
        assert divergence.reference_margin == plain.top2_margins[position]
        # a near-tie, not a bug: at most two bf16 rounding steps of the logits (docs/exactness.md)
        assert divergence.reference_margin <= 0.25, divergence.describe()


def test_padding_verification_to_cheaper_sizes_is_lossless(target, other, references):
    """Pad every verification to a multiple of 8 tokens (the padding is never attended to)."""
    to_eight = [0, 1] + [max(8, -(-q // 8) * 8) for q in range(2, 80)]
    padding = 0
    for drafter in (ModelDrafter(other, k=3, confidence=0), ModelDrafter(target, k=3, tree_width=2, confidence=0),
                    LookupDrafter(tree_width=3)):
        gen = SpeculativeGenerator(target, drafter=drafter, pad_verification=to_eight, cost_model=None)
        for prompt in PROMPTS:
            out = gen.generate(prompt, max_new_tokens=NEW_TOKENS)
            assert out.token_ids == references[tuple(prompt)]
            padding += out.stats.forward_rows - out.stats.drafted_tokens - out.stats.steps
    assert padding > 0  # padding tokens were really fed


def test_padding_rows_attend_to_the_first_key_only():
    """Pad rows see one key (their attention is next to free at long contexts); real rows see the cache and
    their tree mask (causal without one), never a pad."""
    branched = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 0, 1]], dtype=torch.bool)  # a root and two children
    for tree_mask, real in ((None, torch.ones(3, 3, dtype=torch.bool).tril()), (branched, branched)):
        ids, positions, padded = _padded(torch.tensor([5, 6, 7]), torch.tensor([10, 11, 11]), tree_mask, 5)
        assert ids.tolist() == [5, 6, 7, 7, 7] and positions.tolist() == [10, 11, 11, 11, 11]
        block = padded if tree_mask is not None else torch.ones(5, 5, dtype=torch.bool).tril()  # a chain: causal
        assert (padded is None) == (tree_mask is None)
        assert torch.equal(block[:3, :3], real) and not block[:3, 3:].any()  # no real row sees a pad
        mask = _full_mask(block, 10, 2, torch.device("cpu"))[0, 0]  # [5, 15]
        assert mask[:3, :10].all() and torch.equal(mask[:3, 10:13], real) and not mask[:3, 13:].any()
        assert mask[3:, 0].all() and not mask[3:, 1:].any()
    assert _padded(torch.tensor([5, 6, 7]), torch.tensor([10, 11, 11]), branched, 3)[2] is branched


def test_bf16_drafter_prefilled_by_its_fp32_twin_is_lossless(target):
    """A bf16 drafter on a CPU without native bf16 prefills long prompts through an fp32 twin; its
    cache then holds bf16 entries and drafting goes on in bf16."""
    drafter = ModelDrafter(loaded(copy.deepcopy(target.model).to(torch.bfloat16)), k=3, confidence=0,
                           prefill_twin=True)
    prompt = random_prompt(9, length=48)
    out = SpeculativeGenerator(target, drafter=drafter, cost_model=None).generate(prompt, max_new_tokens=NEW_TOKENS)
    assert out.token_ids == hf_greedy(target.model, prompt, NEW_TOKENS)
    assert next(drafter.twin.parameters()).dtype == torch.float32
    assert drafter.cache.hf.layers[0].keys.dtype == torch.bfloat16
    assert out.stats.acceptance_rate > 0.5  # a bf16 copy of the target drafts well
