"""The engine around the loop: prompts, stopping, streaming, stats, cache invariants, bad input."""

# cost_model=None: these tests verify every draft the drafters make; the cost model (test_costs.py)
# would rightly skip drafts of drafters as slow as these small targets.

from __future__ import annotations

import pytest
import torch
from tiny import (OracleDrafter, first_token_total_variation, hf_greedy, loaded, random_prompt, tiny_model,
                  tiny_tokenizer)

from specdecode import LoadedModel, SpecDecodeError, SpeculativeGenerator
from specdecode.runtime.runner import SDPABackend
from specdecode.runtime.cache import KVCache
from specdecode.drafters import LookupDrafter, ModelDrafter
from specdecode.engine import _Run
from specdecode.errors import IncompatibleDrafterError


@pytest.fixture(scope="module")
def target():
    model = tiny_model("llama", seed=0)
    return LoadedModel(model=model, tokenizer=tiny_tokenizer(), name="tiny", dtype=model.dtype, device=model.device)


@pytest.fixture(scope="module")
def gen(target):
    return SpeculativeGenerator(target, drafter=LookupDrafter(tree_width=2), cost_model=None)


# ------------------------------------------------------------------------------ prompts
def test_text_chat_and_token_id_prompts_agree(target, gen):
    tokenizer = target.tokenizer
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "w9 w10 w11"}], add_generation_prompt=True,
                                        tokenize=True, return_dict=False)
    by_chat = gen.generate([{"role": "user", "content": "w9 w10 w11"}], max_new_tokens=12)
    by_ids = gen.generate(ids, max_new_tokens=12)
    by_tensor = gen.generate(torch.tensor([ids]), max_new_tokens=12)
    by_text = gen.generate(tokenizer.decode(ids), max_new_tokens=12)
    assert by_chat.prompt_ids == by_ids.prompt_ids == by_tensor.prompt_ids == by_text.prompt_ids == ids
    assert by_chat.token_ids == by_ids.token_ids == by_tensor.token_ids == by_text.token_ids
    assert by_chat.text == tokenizer.decode(by_chat.token_ids, skip_special_tokens=True)


# ------------------------------------------------------------------------------ stopping
def test_stop_string_cuts_text_and_matches_plain_decoding(target, gen):
    prompt = "w5 w6 w7 w8"
    plain = gen.generate(prompt, max_new_tokens=30, speculative=False)
    words = plain.text.split()
    stop = f"{words[5]} {words[6]}"  # a two-word stop string that plain decoding produces
    cut_at = plain.text.index(stop)
    for speculative in (False, True):
        out = gen.generate(prompt, max_new_tokens=30, stop=[stop, "never-appears"], speculative=speculative)
        assert out.stop_reason == "stop_string"
        assert out.text == plain.text[:cut_at]
        assert stop in target.tokenizer.decode(out.token_ids)
        assert out.token_ids == plain.token_ids[: len(out.token_ids)]


def test_eos_stops_generation(target):
    prompt = random_prompt(4)
    reference = hf_greedy(target.model, prompt, 30)
    eos = reference[6]
    target.model.generation_config.eos_token_id = eos
    try:
        gen = SpeculativeGenerator(target, drafter=ModelDrafter(target, k=5, confidence=0), cost_model=None)
        out = gen.generate(prompt, max_new_tokens=30)
        assert out.stop_reason == "eos" and out.token_ids[-1] == eos
        assert eos not in out.token_ids[:-1]
    finally:
        target.model.generation_config.eos_token_id = None


# ------------------------------------------------------------------------------ streaming
def test_stream_pieces_add_up_to_generate_text(gen):
    prompt = "w5 w6 w7 w5 w6 w7 w5"
    out = gen.generate(prompt, max_new_tokens=25)
    pieces = list(gen.stream(prompt, max_new_tokens=25))
    assert "".join(pieces) == out.text
    assert len(pieces) > 1


def test_stream_never_shows_a_stop_string(gen):
    prompt = "w5 w6 w7 w8"
    plain = gen.generate(prompt, max_new_tokens=30)
    stop = plain.text.split()[4]
    pieces = list(gen.stream(prompt, max_new_tokens=30, stop=stop))
    assert "".join(pieces) == gen.generate(prompt, max_new_tokens=30, stop=stop).text
    assert all(stop not in "".join(pieces[: i + 1]) for i in range(len(pieces)))


# ------------------------------------------------------------------------------ stats
def test_stats_add_up(target):
    prompt = random_prompt(5)
    out = SpeculativeGenerator(target, drafter=ModelDrafter(target, k=3, confidence=0), cost_model=None).generate(
        prompt, max_new_tokens=20)
    stats = out.stats
    assert stats.new_tokens == len(out.token_ids) == 20
    assert sum(stats.accept_histogram) == stats.steps
    assert sum(a * n for a, n in enumerate(stats.accept_histogram)) == stats.accepted_tokens
    assert stats.mean_accepted == pytest.approx(stats.new_tokens / stats.steps)
    assert stats.wall_s >= stats.prefill_s + stats.draft_s + stats.verify_s - 1e-6
    assert stats.tokens_per_s == pytest.approx(stats.new_tokens / stats.wall_s)
    assert len(out.top2_margins) == 20 and min(out.top2_margins) >= 0


# ------------------------------------------------------------------------------ sampling
def test_same_seed_same_output_and_seeds_differ(target, gen):
    prompt = random_prompt(6)
    runs = [gen.generate(prompt, max_new_tokens=20, temperature=1.0, seed=s).token_ids for s in (0, 0, 1)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_sampled_first_token_follows_the_target_distribution():
    """End to end through the engine: SD sampling with a (mostly wrong) model drafter, its output
    layer pruned to 10 of 16 tokens plus the prompt's, gives the same first-token distribution as the
    target's softmax (vocab 16, 4000 samples)."""
    model = tiny_model("llama", seed=0, vocab=16)
    drafter_model = tiny_model("llama", seed=3, vocab=16)
    prompt = random_prompt(7, vocab=16)
    gen = SpeculativeGenerator(loaded(model), drafter=ModelDrafter(loaded(drafter_model), k=2, confidence=0,
                                                                   draft_vocab=10), cost_model=None)
    assert first_token_total_variation(gen, model, prompt) < 0.05  # expected TV ~0.02


def test_sampled_first_token_with_a_windowed_drafter_follows_the_target_distribution():
    """The target's own weights drafting from only the prompt's head and tail (context_window): a draft
    distribution unlike the target's, which sees the whole prompt; sampling still follows the target."""
    model = tiny_model("llama", seed=0, vocab=16)
    prompt = random_prompt(8, length=48, vocab=16)
    drafter = ModelDrafter(loaded(model), k=2, confidence=0, context_window=36)
    gen = SpeculativeGenerator(loaded(model), drafter=drafter, cost_model=None)
    assert first_token_total_variation(gen, model, prompt, samples=3000) < 0.05
    assert drafter.window_start == 48 - (36 - 18)  # the prompt was windowed: half the window from its start


# ------------------------------------------------------------------------------ cache invariants
def test_cache_equals_a_fresh_prefill_after_every_tree_step():
    target = loaded(tiny_model("llama", seed=0))  # no tokenizer: no end-of-sequence token
    prompt = random_prompt(8)
    truth = hf_greedy(target.model, prompt, 30)
    gen = SpeculativeGenerator(target, drafter=OracleDrafter(prompt, truth, seed=1), max_draft_tokens=10,
                               cost_model=None)
    request = gen._request(prompt, 30)
    run = _Run()
    for _ in gen._decode(request, run):
        committed = prompt + run.generated
        assert run.cache.length == len(committed) - 1
        fresh = KVCache(target.model)
        with torch.inference_mode():
            SDPABackend().forward(target.model, fresh, torch.tensor(committed[:-1]), torch.arange(len(committed) - 1))
        for ours, theirs in zip(run.cache.hf.layers, fresh.hf.layers):
            torch.testing.assert_close(ours.keys, theirs.keys, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(ours.values, theirs.values, atol=1e-5, rtol=1e-4)
    assert run.generated == truth
    assert run.tally.accepted_tokens > 10  # deep tree paths were kept, not just chains


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "prompt, options, message",
    [
        ("", {}, "prompt is empty"),
        ("   ", {}, "prompt is empty"),
        ([], {}, "prompt is empty"),
        ([{"role": "user", "content": ""}], {}, "all empty"),
        ([1.5, 2.0], {}, "token ids"),
        ("w5", {"max_new_tokens": 0}, "max_new_tokens must be a positive"),
        ("w5", {"max_new_tokens": -3}, "max_new_tokens must be a positive"),
        ("w5", {"temperature": -0.1}, "temperature must be >= 0"),
        ("w5", {"temperature": 1.0, "top_p": 0.0}, "top_p must be in (0, 1]"),
        ("w5", {"temperature": 1.0, "top_p": 1.5}, "top_p must be in (0, 1]"),
        ("w5", {"temperature": 1.0, "top_k": -1}, "top_k must be"),
        ("w5", {"stop": [""]}, "stop strings"),
        ("w5", {"verifier": "sampling"}, "does not match temperature"),
        (list(range(2, 90)) * 6, {"max_new_tokens": 10}, "exceeds the model's context of 512"),
    ],
)
def test_bad_input_gets_one_clear_error(gen, prompt, options, message):
    max_new_tokens = options.pop("max_new_tokens", 8)
    with pytest.raises(SpecDecodeError, match=message.replace("(", r"\(").replace("]", r"\]")):
        gen.generate(prompt, max_new_tokens=max_new_tokens, **options)


def test_text_prompt_without_tokenizer_is_a_clear_error():
    gen = SpeculativeGenerator(loaded(tiny_model("llama")))
    with pytest.raises(SpecDecodeError, match="needs a tokenizer"):
        gen.generate("hello", max_new_tokens=4)


def test_drafter_with_another_vocabulary_is_refused_at_construction():
    target = loaded(tiny_model("llama", vocab=96))
    drafter = ModelDrafter(loaded(tiny_model("llama", vocab=80)))
    with pytest.raises(IncompatibleDrafterError, match="vocabulary"):
        SpeculativeGenerator(target, drafter=drafter, cost_model=None)


def test_drafter_proposing_out_of_vocabulary_ids_is_named(target):
    from specdecode.drafters import Drafter
    from specdecode.tree import DraftTree

    class Broken(Drafter):
        name = "broken"

        def propose(self, context_ids, budget):
            return DraftTree.chain([5, 10_000])

    with pytest.raises(SpecDecodeError, match="broken.*outside the target's vocabulary"):
        SpeculativeGenerator(target, drafter=Broken(), cost_model=None).generate([5, 6], max_new_tokens=4)


def test_stream_returns_the_generation_output(gen):
    def consume():
        output = yield from gen.stream("w5 w6 w7", max_new_tokens=10)
        return output

    pieces, runner = [], consume()
    try:
        while True:
            pieces.append(next(runner))
    except StopIteration as finished:
        output = finished.value
    assert output.text == "".join(pieces) and output.stats.new_tokens == len(output.token_ids) == 10


def test_a_duck_typed_drafter_needs_only_the_three_methods(target):
    """A drafter written to the protocol without subclassing Drafter: no name, report, check_target,
    set_verify_costs or prefill_s. It drafts the phrase the prompt repeats; the output is plain decoding's."""
    class PhraseDrafter:
        def __init__(self, phrase):
            self.phrase, self.begun, self.accepted = phrase, 0, []

        def begin(self, prompt_ids, **options):
            self.begun += 1

        def propose(self, context_ids, budget):
            from specdecode.tree import DraftTree

            for cut in range(len(self.phrase) - 1, 0, -1):
                if list(context_ids[-cut:]) == self.phrase[:cut]:
                    return DraftTree.chain(self.phrase[cut:cut + budget])
            return DraftTree.empty()

        def accept(self, token_ids):
            self.accepted += list(token_ids)

    assert [c.__name__ for c in PhraseDrafter.__mro__] == ["PhraseDrafter", "object"]  # nothing inherited
    prompt = [5, 6, 7, 8, 9] * 3 + [5, 6]
    drafter = PhraseDrafter([5, 6, 7, 8, 9])
    for cost_model in (None, "auto"):
        out = SpeculativeGenerator(target, drafter=drafter, cost_model=cost_model).generate(prompt, max_new_tokens=20)
        assert out.token_ids == hf_greedy(target.model, prompt, 20)
        assert drafter.accepted[-len(out.token_ids):] == out.token_ids
        assert out.stats.drafted_tokens > 0 and out.stats.drafters == {}
    assert drafter.begun == 2

    class NoAccept:
        def begin(self, prompt_ids, **options): ...

        def propose(self, context_ids, budget): ...

    with pytest.raises(SpecDecodeError, match="'NoAccept' has no accept method"):
        SpeculativeGenerator(target, drafter=NoAccept())
