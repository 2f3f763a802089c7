"""The draft replayer: drafters run through the engine's own loop against a recorded greedy output, the
target's forwards replayed (one-hot logits of the recorded tokens) and charged at its cost table."""

from __future__ import annotations

import dataclasses

import pytest
from tiny import hf_greedy, loaded, random_prompt, tiny_model, tiny_tokenizer

from specdecode import SpeculativeGenerator
from specdecode.bench.questions import Question
from specdecode.bench.replay import Recording, read_recordings, recordings_for, replay
from specdecode.drafters import LookupDrafter, ModelDrafter
from specdecode.errors import SpecDecodeError
from specdecode.policy import ForwardCosts

COSTS = ForwardCosts((1, 64), (1.0, 3.0))  # linear: each row fed beyond the first costs SLOPE
SLOPE = 2.0 / 63


def still_clock() -> float:
    return 0.0


@pytest.mark.parametrize("drafter", ["lookup", "model"])
def test_a_replay_takes_the_steps_of_the_real_run(drafter):
    target = loaded(tiny_model("llama", seed=0))
    prompt = [5, 6, 7, 8, 9] * 4 + random_prompt(2)
    truth = hf_greedy(target.model, prompt, 30)

    def make():
        if drafter == "lookup":
            return LookupDrafter()
        return ModelDrafter(loaded(tiny_model("llama", seed=1)), k=3, confidence=0)

    real = SpeculativeGenerator(target, make(), pad_verification=False, cost_model=COSTS,
                                clock=still_clock).generate(prompt, 30)
    replayed = replay(target, make(), Recording("q", tuple(prompt), tuple(truth)), COSTS, (), clock=still_clock)
    assert real.token_ids == replayed.token_ids == truth
    assert replayed.stats.accept_histogram == real.stats.accept_histogram  # the same steps, the same sizes
    assert replayed.stats.drafted_tokens == real.stats.drafted_tokens > 0
    rows, steps = replayed.stats.forward_rows, replayed.stats.steps  # each verification charged at the table's cost
    assert replayed.stats.decode_s == pytest.approx(steps * COSTS.raw(1) + (rows - steps) * SLOPE)


def test_plain_decoding_is_charged_one_forward_per_token():
    target = loaded(tiny_model("llama", seed=0))
    prompt = random_prompt(3)
    truth = hf_greedy(target.model, prompt, 20)
    out = replay(target, None, Recording("q", tuple(prompt), tuple(truth)), COSTS, (), clock=still_clock)
    assert out.token_ids == truth and out.stats.steps == 20
    assert out.stats.decode_s == pytest.approx(20 * COSTS.raw(1)) and out.stats.prefill_s == 0.0


def test_recordings_are_made_once_then_read_from_the_truth_file(tmp_path):
    target = dataclasses.replace(loaded(tiny_model("llama", seed=0)), tokenizer=tiny_tokenizer())
    questions = [Question(1, "c", ("w5 w6 w7 w8",)), Question(2, "c", ("w9 w10",))]
    truth, calls = tmp_path / "truth.jsonl", []

    def record(prompt_ids):
        calls.append(prompt_ids)
        return hf_greedy(target.model, prompt_ids, 8)

    first = recordings_for(target, questions, 8, truth, record)
    again = recordings_for(target, questions, 8, truth, record)
    assert len(calls) == 2 and again == first and [r.key for r in first] == ["1", "2"]
    assert first[0].output_ids == tuple(hf_greedy(target.model, list(first[0].prompt_ids), 8))
    assert read_recordings(truth, "other-model", 8) == {}  # recordings are per model and length
    with pytest.raises(SpecDecodeError, match="images"):
        recordings_for(target, [Question(3, "c", ("w5",), images=(tmp_path / "a.png",))], 8, truth, record)
    assert len(read_recordings(truth, target.name, 8)) == 2  # a failed call added nothing
    broken = tmp_path / "broken.jsonl"
    broken.write_text(truth.read_text() + "{not json\n")
    with pytest.raises(SpecDecodeError, match="line 3 is not a recording"):
        read_recordings(broken, target.name, 8)
