"""Static steps (runtime/cuda/static_steps.py): the "graphs" backend's steps at static shapes over
preallocated KV buffers. On a CPU they run eagerly through the code a GPU captures as CUDA graphs, so the
logic (slots, spans, masks, buffer sets, padding) is tested here; the capture itself needs CUDA."""

from __future__ import annotations

import pytest
import torch
from tiny import (OracleDrafter, RandomDrafter, cpu_model, first_token_total_variation, hf_greedy, loaded,
                  random_prompt, repetitive_prompt, tiny_model)

from specdecode import SpeculativeGenerator
from specdecode.drafters import LookupDrafter, ModelDrafter
from specdecode.errors import SpecDecodeError
from specdecode.runtime import runner as runner_module
from specdecode.runtime.cache import KVCache
from specdecode.runtime.cuda import static_steps
from specdecode.runtime.runner import SDPABackend, StaticBackend, select_backend


def _counting(monkeypatch) -> list[int]:
    """Record the rows of every static step run."""
    rows, run = [], static_steps.StaticSteps.run
    monkeypatch.setattr(static_steps.StaticSteps, "run",
                        lambda self, *args, **kw: rows.append(args[5]) or run(self, *args, **kw))
    return rows


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_static_steps_decode_and_verify_chains_and_trees_as_plain_decoding(monkeypatch, arch):
    rows = _counting(monkeypatch)
    target = loaded(tiny_model(arch, seed=0))
    prompt = repetitive_prompt(3)
    reference = hf_greedy(target.model, prompt, 40)
    drafters = [None, LookupDrafter(tree_width=3), RandomDrafter(seed=2),
                OracleDrafter(prompt, reference, seed=4),
                ModelDrafter(loaded(tiny_model(arch, seed=1)), k=4, tree_width=2, confidence=0,
                             attention=select_backend("graphs"))]
    stats = []
    for drafter in drafters:
        rows.clear()
        out = SpeculativeGenerator(target, drafter=drafter, attention="graphs", cost_model=None).generate(
            prompt, max_new_tokens=40)
        assert out.token_ids == reference, drafter
        assert rows and set(rows) <= set(static_steps.BUCKETS)  # every step after the prompt was a static one
        stats.append(out.stats)
    assert stats[3].mean_accepted > 2  # the oracle's trees: deep acceptance
    assert stats[4].drafted_tokens > 0  # the model drafter drafted through its own static steps


def test_sampled_tokens_through_static_steps_follow_the_target_distribution():
    """Sampling with a mostly wrong model drafter (chains of 2), both models on static steps: the first token
    follows the target's softmax (vocab 16, 3000 samples)."""
    model = tiny_model("llama", seed=0, vocab=16)
    drafter = ModelDrafter(loaded(tiny_model("llama", seed=3, vocab=16)), k=2, confidence=0,
                           attention=select_backend("graphs"))
    gen = SpeculativeGenerator(loaded(model), drafter=drafter, attention="graphs", cost_model=None)
    assert first_token_total_variation(gen, model, random_prompt(7, vocab=16), samples=3000) < 0.05


def test_buffers_grow_past_their_span_and_steps_are_made_again(monkeypatch):
    """With spans of 16 entries, a 20-token prompt and 60 new tokens cross 32, 64 and 128 entries: the
    buffers are made anew each time, the cache's entries copied in, and the output stays plain decoding's."""
    monkeypatch.setattr(static_steps, "MIN_SPAN", 16)
    target = loaded(tiny_model("qwen2", seed=0))
    prompt = random_prompt(1, length=20)
    backend = StaticBackend()
    out = SpeculativeGenerator(target, drafter=LookupDrafter(), attention=backend, cost_model=None).generate(
        prompt, max_new_tokens=60)
    assert out.token_ids == hf_greedy(target.model, prompt, 60)
    (buffers,) = backend.steps_of(target.model).sets
    assert buffers.capacity == 128
    assert max(shape.span for shape in buffers.steps) == 128
    assert all(step.writers[0].keys is buffers.buffers[0][0] for step in buffers.steps.values())  # none over old ones


def test_caches_of_one_model_keep_their_own_entries_when_they_take_turns(monkeypatch):
    """Three caches of one model, stepped in turn with one buffer set between them: each step moves the
    buffers to another cache, which must first give the last one its entries back. Logits equal those of
    three caches on the SDPA backend, step by step."""
    monkeypatch.setattr(static_steps, "BUFFER_SETS_PER_MODEL", 1)
    monkeypatch.setattr(static_steps, "MIN_SPAN", 16)
    model = tiny_model("llama", seed=3)
    static, dynamic = StaticBackend(), SDPABackend(lean=False)
    caches = {backend: [KVCache(model) for _ in range(3)] for backend in (static, dynamic)}
    with torch.inference_mode():
        for backend, own in caches.items():
            for index, cache in enumerate(own):
                prompt = torch.tensor(random_prompt(index, length=5 + index))
                backend.forward(model, cache, prompt, torch.arange(len(prompt)), prefill=True)
        for step in range(6):
            for index in range(3):
                ids = torch.tensor(random_prompt(10 * step + index, length=1 + step % 3))
                outs = []
                for backend, own in caches.items():
                    cache = own[index]
                    outs.append(backend.forward(model, cache, ids, cache.length + torch.arange(len(ids))))
                torch.testing.assert_close(outs[0], outs[1], atol=1e-4, rtol=1e-4)  # rounding; a lost entry: O(1)
    assert [c.length for c in caches[static]] == [c.length for c in caches[dynamic]]


def test_a_fixed_width_gives_each_token_the_bits_of_plain_decoding(monkeypatch):
    """"graphs:16": plain decoding and verification both feed 16 rows, so a token's logits come from the same
    products and attention in both: bit for bit equal here, and greedy output equal too."""
    model = tiny_model("qwen2", seed=5)
    backend = select_backend("graphs:16")
    prompt = torch.tensor(random_prompt(7, length=9))
    chain = torch.tensor(random_prompt(8, length=4))
    with torch.inference_mode():
        one_by_one, together = KVCache(model), KVCache(model)
        for cache in (one_by_one, together):
            backend.forward(model, cache, prompt, torch.arange(9), prefill=True)
        steps = [backend.forward(model, one_by_one, chain[i:i + 1], torch.tensor([9 + i])) for i in range(4)]
        verified = backend.forward(model, together, chain, 9 + torch.arange(4))
    assert torch.equal(torch.cat(steps), verified)
    target = loaded(model)
    ids = random_prompt(9)
    rows = _counting(monkeypatch)
    out = SpeculativeGenerator(target, drafter=LookupDrafter(), attention=backend, cost_model=None).generate(
        ids, max_new_tokens=30)
    assert out.token_ids == hf_greedy(model, ids, 30)
    assert set(rows) == {16}
    rows.clear()  # drafts of up to 12 nodes under a width of 8: cut to fit it
    out = SpeculativeGenerator(target, drafter=RandomDrafter(seed=1), attention="graphs:8", cost_model=None).generate(
        ids, max_new_tokens=30)
    assert out.token_ids == hf_greedy(model, ids, 30) and set(rows) == {8}


def test_a_model_lean_forward_does_not_fit_takes_the_sdpa_path(monkeypatch):
    """A model with a forward hook on a layer (lean_forward would skip it) runs every step through the
    model's own forward: the hook sees each one."""
    rows = _counting(monkeypatch)
    model = tiny_model("llama", seed=0)
    seen = []
    model.model.layers[0].register_forward_hook(lambda *args: seen.append(1))
    prompt = random_prompt(2)
    out = SpeculativeGenerator(loaded(model), drafter=LookupDrafter(), attention="graphs", cost_model=None).generate(
        prompt, max_new_tokens=10)
    assert out.token_ids == hf_greedy(model, prompt, 10)
    assert not rows and len(seen) >= 10
    assert "not taken" in runner_module.StaticBackend().describe(model)


def test_a_step_that_cannot_be_recorded_runs_without_graphs(monkeypatch):
    """Recording a graph fails: one warning, then every step runs eagerly, with the same output."""
    def fail(*args):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(static_steps._Step, "replay", fail)
    target = loaded(tiny_model("llama", seed=0))
    backend = StaticBackend()
    backend.steps_of(target.model).capture = True  # as on a GPU
    prompt = repetitive_prompt(4)
    with pytest.warns(RuntimeWarning, match="could not record a CUDA graph"):
        out = SpeculativeGenerator(target, drafter=LookupDrafter(), attention=backend, cost_model=None).generate(
            prompt, max_new_tokens=20)
    assert out.token_ids == hf_greedy(target.model, prompt, 20)
    assert not backend.steps_of(target.model).capture and "eager" in backend.describe(target.model)


def test_an_exact_cpu_target_keeps_the_sdpa_path():
    """A target on row-wise attention keeps its bits only at calibrated row counts: no static steps for it."""
    from specdecode.runtime.cpu.rowwise_attention import use_rowwise_attention

    model = cpu_model("qwen2", seed=0)
    use_rowwise_attention(model, 4)
    assert StaticBackend().steps_of(model) is None
    assert StaticBackend().steps_of(cpu_model("qwen2", seed=0)) is not None


@pytest.mark.parametrize("name", ["graphs:3", "graphs:x", "graphs:128", "graphs:"])
def test_a_width_that_is_not_a_bucket_is_refused(name):
    with pytest.raises(SpecDecodeError, match="graphs"):
        select_backend(name)
