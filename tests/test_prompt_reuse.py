"""A prompt's prefill reused by the next one (SpeculativeGenerator(reuse_prompt=True), the default): the whole
chunks two prompts share (the whole prompt when it is the same) are not prefilled again, and the cache then
holds bit for bit what a fresh prefill computes, so every output, logit margin included, is a fresh run's."""

from __future__ import annotations

import pytest
import torch
from tiny import loaded, random_prompt, repetitive_prompt, tiny_model

from specdecode import SpeculativeGenerator, load_model
from specdecode.drafters import LookupDrafter, ModelDrafter

CHUNK = 8


def _fresh(target, prompt, **options):
    """What a generator that keeps nothing between calls computes for `prompt`."""
    return SpeculativeGenerator(target, prefill_chunk=CHUNK, reuse_prompt=False, cost_model=None).generate(
        prompt, **options)


def test_shared_whole_chunks_are_reused_and_hold_what_a_fresh_prefill_computes():
    target = loaded(tiny_model("qwen2", seed=0))
    first = random_prompt(1, length=30)
    gen = SpeculativeGenerator(target, prefill_chunk=CHUNK, cost_model=None)
    cases = [  # (prompt, prompt tokens reused): the cache holds all but the last prompt token
        (first, 0),
        (first, 29),  # the same prompt: everything
        (first[:21] + random_prompt(2, length=15), 16),  # 21 shared, cut to whole chunks
        (first[:12], 8),  # a shorter prompt than the one before: its last chunk is prefilled again
        (random_prompt(3, length=20), 0),
    ]
    for prompt, reused in cases:
        out = gen.generate(prompt, max_new_tokens=12)
        fresh = _fresh(target, prompt, max_new_tokens=12)
        assert out.stats.reused_prompt_tokens == reused
        assert out.token_ids == fresh.token_ids and out.top2_margins == fresh.top2_margins  # the same logits
    reference = SpeculativeGenerator(target, prefill_chunk=CHUNK, reuse_prompt=False)
    reference.generate(cases[-1][0], max_new_tokens=1)
    assert reference._prefilled is None  # reuse_prompt=False keeps no cache


def test_the_reused_entries_equal_a_fresh_prefills_bit_for_bit():
    target = loaded(tiny_model("llama", seed=4))
    first = random_prompt(5, length=40)
    second = first[:33] + random_prompt(6, length=9)
    gen = SpeculativeGenerator(target, prefill_chunk=CHUNK)
    gen.generate(first, max_new_tokens=6)
    gen.generate(second, max_new_tokens=6)
    fresh = SpeculativeGenerator(target, prefill_chunk=CHUNK)
    fresh.generate(second, max_new_tokens=6)
    length = len(second) - 1
    for (keys, values), (fresh_keys, fresh_values) in zip(gen._prefilled.cache.layer_entries(),
                                                          fresh._prefilled.cache.layer_entries(), strict=True):
        assert torch.equal(keys[..., :length, :], fresh_keys[..., :length, :])
        assert torch.equal(values[..., :length, :], fresh_values[..., :length, :])


def test_plain_then_speculative_on_one_prompt_prefills_once_and_agrees():
    target = loaded(tiny_model("qwen2", seed=0))
    prompt = repetitive_prompt(5)
    gen = SpeculativeGenerator(target, drafter=ModelDrafter(loaded(tiny_model("qwen2", seed=1)), k=4, tree_width=2,
                                                            confidence=0), prefill_chunk=CHUNK, cost_model=None)
    plain = gen.generate(prompt, max_new_tokens=30, speculative=False)
    speculative = gen.generate(prompt, max_new_tokens=30)
    assert speculative.stats.reused_prompt_tokens == len(prompt) - 1 and speculative.stats.drafted_tokens > 0
    assert speculative.token_ids == plain.token_ids == _fresh(target, prompt, max_new_tokens=30).token_ids


def test_a_prefill_that_fails_leaves_nothing_to_reuse():
    target = loaded(tiny_model("qwen2", seed=0))
    prompt = random_prompt(7, length=30)
    gen = SpeculativeGenerator(target, drafter=LookupDrafter(), prefill_chunk=CHUNK, cost_model=None)
    gen.generate(prompt, max_new_tokens=4)

    def interrupted(done, total):
        if done > 16:
            raise KeyboardInterrupt

    other = prompt[:20] + random_prompt(8, length=10)
    with pytest.raises(KeyboardInterrupt):
        gen.generate(other, max_new_tokens=4, on_prefill=interrupted)
    again = gen.generate(prompt, max_new_tokens=10)
    assert again.stats.reused_prompt_tokens == 0  # the interrupted cache is not trusted
    assert again.token_ids == _fresh(target, prompt, max_new_tokens=10).token_ids


@pytest.mark.zoo
def test_prompt_reuse_keeps_smollm2s_tokens_and_margins():
    target = load_model("smollm2-135m-instruct", dtype="fp32")
    text = "Summarize: the river rose overnight, the bridge closed at dawn and the ferry ran every hour instead."
    prompts = [[{"role": "user", "content": text}], [{"role": "user", "content": text + " Be brief."}]]
    gen = SpeculativeGenerator(target, drafter=LookupDrafter(), prefill_chunk=16, cost_model=None)
    outputs = [gen.generate(prompt, max_new_tokens=12, speculative=speculative)
               for prompt, speculative in ((prompts[0], False), (prompts[0], True), (prompts[1], True))]
    shared = next(i for i, (a, b) in enumerate(zip(outputs[0].prompt_ids, outputs[2].prompt_ids)) if a != b)
    assert [out.stats.reused_prompt_tokens for out in outputs] == [0, len(outputs[0].prompt_ids) - 1,
                                                                   shared - shared % 16]
    assert outputs[2].stats.reused_prompt_tokens >= 16
    fresh = SpeculativeGenerator(target, prefill_chunk=16, reuse_prompt=False)
    for prompt, out in zip((prompts[0], prompts[0], prompts[1]), outputs):
        plain = fresh.generate(prompt, max_new_tokens=12, speculative=False)
        assert out.token_ids == plain.token_ids
    assert outputs[0].top2_margins == fresh.generate(prompts[0], max_new_tokens=12).top2_margins
