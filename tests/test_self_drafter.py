"""SelfDrafter: the target drafting for itself over a compressed copy of its own KV cache.

Greedy output equals plain decoding for every KV policy, budget, weights and tree shape on tiny
Llama/Qwen2 models with contexts of thousands of tokens; sampling follows the target's distribution;
the draft cache at every proposal equals the policy's selection rebuilt from the target's cache."""

# cost_model=None: these tests verify every draft the drafter makes; the cost model would rightly skip
# drafts of a drafter as slow as its own tiny target.

from __future__ import annotations

import pytest
import torch
from tiny import first_token_total_variation, loaded, random_prompt, tiny_model

from specdecode import SpeculativeGenerator
from specdecode.drafters import KVPolicy, LookupDrafter, MixtureDrafter, SelfDrafter
from specdecode.drafters.registry import make_drafter, parse_drafters
from specdecode.errors import IncompatibleDrafterError, SpecDecodeError

CONTEXT = 4096
NEW_TOKENS = 40


def document_prompt(seed: int, length: int) -> list[int]:
    """A long prompt with repeats (as a document has), so drafts are sometimes right."""
    phrases = [random_prompt(seed * 100 + i, 12) for i in range(20)]
    rng = torch.Generator().manual_seed(seed)
    prompt: list[int] = []
    while len(prompt) < length:
        prompt += phrases[int(torch.randint(len(phrases), (1,), generator=rng))]
    return prompt[:length]


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def target(request):
    return loaded(tiny_model(request.param, seed=0, context=CONTEXT), name=f"tiny-{request.param}")


@pytest.fixture(scope="module")
def prompt():
    return document_prompt(1, 2500)


@pytest.fixture(scope="module")
def plain(target, prompt):
    return SpeculativeGenerator(target).generate(prompt, NEW_TOKENS, speculative=False).token_ids


@pytest.mark.parametrize("kv, budget", [("snapkv", 64), ("snapkv", 600), ("streaming", 48), ("full", None)])
@pytest.mark.parametrize("weights, tree_width", [(None, 1), (None, 3), ("int8", 1)])
def test_greedy_self_draft_equals_plain_decoding(target, prompt, plain, kv, budget, weights, tree_width):
    drafter = SelfDrafter(target, kv=kv, kv_budget=budget, weights=weights, tree_width=tree_width)
    out = SpeculativeGenerator(target, drafter, cost_model=None).generate(prompt, NEW_TOKENS)
    assert out.token_ids == plain
    assert out.stats.drafted_tokens > 0


def test_full_kv_with_own_weights_drafts_what_the_target_computes(target, prompt, plain):
    """With every entry and the target's own weights, the draft is the target's own greedy continuation:
    every drafted token is accepted (a check that the copied entries are the target's)."""
    drafter = SelfDrafter(target, kv="full", weights=None, confidence=0.0)
    out = SpeculativeGenerator(target, drafter, cost_model=None).generate(prompt, NEW_TOKENS)
    assert out.token_ids == plain
    assert out.stats.accepted_tokens == out.stats.drafted_tokens > 0


def test_lookup_plus_self_mixture_equals_plain_decoding(target, prompt, plain):
    drafter = make_drafter("lookup+self:streaming:own", target)
    assert isinstance(drafter, MixtureDrafter)
    out = SpeculativeGenerator(target, drafter, cost_model=None).generate(prompt, NEW_TOKENS)
    assert out.token_ids == plain
    assert set(out.stats.drafters) == {"lookup", "self:streaming"}


class CheckedSelfDrafter(SelfDrafter):
    """Compares its draft cache with the policy's selection, rebuilt from the target's cache, at every proposal."""

    checks = 0

    def _catch_up(self, context_ids):
        logits = super()._catch_up(context_ids)
        target = self.target_cache
        prompt_kept = self.prompt_selection(context_ids)  # recomputed from the target's prompt entries
        later = torch.arange(self.prompt_length, target.length)
        rebuilt = target.gathered(self.model, [torch.cat([kept, later.expand(kept.shape[0], -1)], dim=-1)
                                               for kept in prompt_kept], self.model.dtype)
        for (keys, values), (want_keys, want_values) in zip(self.cache.layer_entries(), rebuilt.layer_entries()):
            assert torch.equal(keys[..., : self.kept, :], want_keys)
            assert torch.equal(values[..., : self.kept, :], want_values)
        self.checks += 1
        return logits


@pytest.mark.parametrize("kv, budget", [("snapkv", 100), ("streaming", 100)])
def test_draft_cache_equals_the_selection_over_committed_tokens(target, prompt, plain, kv, budget):
    drafter = CheckedSelfDrafter(target, kv=kv, kv_budget=budget, weights=None, tree_width=2)
    out = SpeculativeGenerator(target, drafter, cost_model=None).generate(prompt, NEW_TOKENS)
    assert out.token_ids == plain
    assert drafter.checks >= out.stats.steps - 1  # the last step may have no room for a draft
    assert drafter.kept - budget == drafter.synced - drafter.prompt_length > 0


def test_sampled_first_token_follows_the_target_distribution():
    model = tiny_model("llama", seed=3, context=CONTEXT)
    target = loaded(model)
    prompt = document_prompt(2, 200)
    drafter = SelfDrafter(target, kv="streaming", kv_budget=64, weights="int8", k=2)
    gen = SpeculativeGenerator(target, drafter, cost_model=None)
    assert first_token_total_variation(gen, model, prompt, samples=2000) < 0.07  # expected TV ~0.03


def test_same_seed_same_sampled_tokens(target, prompt):
    drafter = SelfDrafter(target, kv="snapkv", kv_budget=64, weights=None)
    gen = SpeculativeGenerator(target, drafter, cost_model=None)
    first = gen.generate(prompt, 20, temperature=0.8, seed=7).token_ids
    assert gen.generate(prompt, 20, temperature=0.8, seed=7).token_ids == first


def test_streaming_keeps_sinks_and_the_recent_entries():
    kept = KVPolicy("streaming", budget=20, sinks=4).selection(100, kv_heads=2)
    assert kept.shape == (2, 20)
    assert kept[1].tolist() == [0, 1, 2, 3, *range(84, 100)]


def test_snapkv_keeps_the_window_and_each_heads_most_attended_positions():
    scores = torch.zeros(2, 100)  # [kv_heads, length]
    scores[0, 10], scores[1, 50] = 5.0, 5.0
    kept = KVPolicy("snapkv", budget=8, window=4, pool=1).selection(100, 2, scores)
    assert kept.shape == (2, 8)
    assert 10 in kept[0].tolist() and 50 not in kept[0].tolist()
    assert 50 in kept[1].tolist() and 10 not in kept[1].tolist()
    assert kept[:, -4:].tolist() == [[96, 97, 98, 99]] * 2
    assert all(row == sorted(row) for row in kept.tolist())


def test_short_prompt_keeps_everything():
    assert KVPolicy("snapkv", budget=64).selection(10, 2).tolist() == [list(range(10))] * 2


@pytest.mark.parametrize("options, message", [
    (dict(kv_budget=0), "kv_budget must be"),
    (dict(kv_budget=-5), "kv_budget must be"),
    (dict(kv_budget=CONTEXT + 1), "larger than the model's context"),
    (dict(kv="streaming", kv_budget=10), "leaves no room"),
    (dict(kv="sliding"), "unknown kv policy"),
    (dict(weights="int3"), "unknown self-draft weights"),
])
def test_bad_options_get_one_clear_error(target, options, message):
    with pytest.raises(SpecDecodeError, match=message):
        SelfDrafter(target, **{"weights": None, **options})


def test_a_twin_without_a_kernel_on_this_machine_is_a_clear_error(target, monkeypatch):
    import specdecode.runtime.cpu.quantize as quantize

    monkeypatch.setattr(quantize, "fbgemm_available", lambda: False)
    with pytest.raises(SpecDecodeError, match="needs FBGEMM"):
        SelfDrafter(target, weights="w8a8")


def test_another_target_is_refused(target):
    other = loaded(tiny_model("llama", seed=5, context=CONTEXT), name="other")
    with pytest.raises(IncompatibleDrafterError, match="SelfDrafter\\(target\\)"):
        SpeculativeGenerator(other, SelfDrafter(target, weights=None))


def test_used_outside_the_engine_is_a_clear_error(target):
    with pytest.raises(SpecDecodeError, match="read_target_cache"):
        SelfDrafter(target, weights=None).begin([1, 2, 3])


def test_registry_names(target):
    from specdecode.drafters.registry import make_drafter

    parts = parse_drafters("lookup+self:streaming:int8")
    assert [p.kind for p in parts] == ["lookup", "self"]
    with pytest.raises(SpecDecodeError, match="self\\[:KV\\[:WEIGHTS\\[:BUDGET\\]\\]\\]"):
        parse_drafters("self:sliding")
    with pytest.raises(SpecDecodeError, match="WEIGHTS"):
        parse_drafters("self:snapkv:int3")
    for bad in ("self:snapkv:own:0", "self:snapkv:own:many", "self:snapkv:own:64:1"):
        with pytest.raises(SpecDecodeError, match="BUDGET a whole number"):
            parse_drafters(bad)
    drafter = make_drafter("self:streaming:own:96", target)
    assert (drafter.policy.kind, drafter.policy.budget, drafter.weights) == ("streaming", 96, None)


def test_prefill_in_chunks_reports_progress_and_keeps_the_tokens(target, prompt):
    seen = []
    gen = SpeculativeGenerator(target, LookupDrafter(), prefill_chunk=1000, cost_model=None)
    out = gen.generate(prompt, NEW_TOKENS, on_prefill=lambda done, total: seen.append((done, total)))
    total = len(prompt) - 1
    assert seen == [(1000, total), (2000, total), (total, total)]
    assert out.token_ids == gen.generate(prompt, NEW_TOKENS, speculative=False).token_ids
    with pytest.raises(SpecDecodeError, match="prefill_chunk"):
        SpeculativeGenerator(target, prefill_chunk=0)
