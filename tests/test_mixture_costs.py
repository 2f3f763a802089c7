"""MixtureDrafter's cost-aware skipping, on hand-made drafters and a fake clock: a costly drafter runs
only where its draft is worth its seconds, its catching-up is not counted as its cost, sampling ignores
timing, and greedy output never changes."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from tiny import hf_greedy, loaded, random_prompt, tiny_model

from specdecode import SpeculativeGenerator
from specdecode.policy import ForwardCosts
from specdecode.drafters import LookupDrafter, MixtureDrafter
from specdecode.drafters import mixture as mixture_module
from specdecode.drafters.mixture import VerifyTimes
from specdecode.drafters.base import Drafter
from specdecode.errors import SpecDecodeError
from specdecode.sampling import SamplingParams
from specdecode.tree import DraftTree

TEXT = list(range(100, 400))


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(mixture_module, "time", fake)
    return fake


class TimedDrafter(Drafter):
    """Proposes the next `depth` tokens of TEXT, right for the first `right` of them and wrong after; each
    proposal costs `seconds` on the clock, plus `catch_up` per step it was not asked to propose (what a
    model drafter pays to feed the tokens committed meanwhile)."""

    def __init__(self, name: str, clock: FakeClock, depth: int, right: int, seconds: float, catch_up: float = 0.0,
                 right_until: int = len(TEXT)):
        self.name, self.clock, self.depth, self.right, self.right_until = name, clock, depth, right, right_until
        self.seconds, self.catch_up = seconds, catch_up
        self.calls, self.catch_ups, self.steps_since_proposal = 0, 0, 0

    def propose(self, context_ids, budget):
        self.calls += 1
        self.catch_ups += self.steps_since_proposal > 1
        self.clock.now += self.seconds + self.catch_up * max(0, self.steps_since_proposal - 1)
        self.steps_since_proposal = 0
        start = len(context_ids)
        right = self.right if start < self.right_until else 0  # past right_until: wrong from the first token
        tokens = TEXT[start : start + right] + [1] * (self.depth - right)
        return DraftTree.chain(tokens[: min(self.depth, budget)])

    def accept(self, token_ids):
        self.steps_since_proposal += 1


def run_steps(mixture: MixtureDrafter, clock: FakeClock, steps: int, budget: int = 8,
              verify_s: float | Callable[[int], float] = 0.1, sampling: SamplingParams | None = None) -> None:
    """Propose, verify (verify_s on the clock, or verify_s(rows fed); the target commits TEXT's next
    tokens), accept."""
    context = TEXT[:10]
    mixture.begin(context, **({"sampling": sampling} if sampling else {}))
    for _ in range(steps):
        tree = mixture.propose(context, budget)
        clock.now += verify_s(1 + len(tree)) if callable(verify_s) else verify_s
        committed = TEXT[len(context) : len(context) + tree.matched_depth(TEXT[len(context):]) + 1]
        mixture.accept(committed)
        context = context + committed


def test_a_costly_drafter_is_skipped_where_a_cheap_one_drafts_as_well(clock):
    cheap = TimedDrafter("cheap", clock, depth=8, right=6, seconds=0.001)
    costly = TimedDrafter("costly", clock, depth=4, right=3, seconds=0.2)  # 2x a verification
    mixture = MixtureDrafter([costly, cheap])
    run_steps(mixture, clock, steps=30)
    report = mixture.report()
    assert report["costly"]["skipped_for_cost"] > 20 and costly.calls < 10
    assert report["costly"]["ms_per_level"] == pytest.approx(200.0 / 4)
    assert report["cheap"]["skipped_for_cost"] == 0


def test_a_costly_drafter_runs_where_its_draft_is_worth_its_seconds(clock):
    weak = TimedDrafter("weak", clock, depth=2, right=0, seconds=0.001)
    model = TimedDrafter("model", clock, depth=4, right=4, seconds=0.05, catch_up=1.0)
    mixture = MixtureDrafter([weak, model])
    run_steps(mixture, clock, steps=30)
    assert mixture.report()["model"]["skipped_steps"] == 0 and model.calls == 30


def test_a_drafter_whose_bigger_tree_costs_more_to_verify_than_it_gains_is_skipped(clock):
    # verifying 3 rows costs 0.11 s, 7 rows 0.23 s; the model's 4 levels (2 right) cost 0.12 s more: with it a
    # step commits 3 tokens in 0.35 s (8.6 tokens/s), without it 1 token in 0.11 s (9.1 tokens/s)
    weak = TimedDrafter("weak", clock, depth=2, right=0, seconds=0.001)
    model = TimedDrafter("model", clock, depth=4, right=2, seconds=0.12)
    mixture = MixtureDrafter([weak, model])
    mixture.set_verify_costs(lambda rows: 0.01 + 0.015 * rows)  # the engine's measured curve: half the times seen
    run_steps(mixture, clock, steps=60, verify_s=lambda rows: 0.02 + 0.03 * rows)
    assert mixture.report()["model"]["skipped_for_cost"] > 40
    assert mixture.verify.seconds(7) == pytest.approx(0.23) and mixture.verify.seconds(3) == pytest.approx(0.11)

    blind = MixtureDrafter([TimedDrafter("weak", clock, 2, 0, 0.001), TimedDrafter("model", clock, 4, 2, 0.12)])
    run_steps(blind, clock, steps=60, verify_s=lambda rows: 0.02 + 0.03 * rows)  # no curve, always 7 rows seen:
    assert blind.report()["model"]["skipped_for_cost"] == 0  # it cannot tell what a smaller tree would cost


def test_the_engine_hands_its_measured_forward_costs_to_the_mixture():
    target = loaded(tiny_model("llama", seed=0))
    costs = ForwardCosts(sizes=(1, 4, 16), seconds=(0.01, 0.012, 0.03))
    mixture = MixtureDrafter([LookupDrafter(), MixtureDrafter([LookupDrafter()])])
    SpeculativeGenerator(target, drafter=mixture, cost_model=costs).generate(random_prompt(3), 8)
    assert mixture.verify.curve is costs and mixture.drafters[1].verify.curve is costs
    SpeculativeGenerator(target, drafter=mixture, cost_model=None).generate(random_prompt(3), 8)
    assert mixture.verify.curve is None


def test_verification_times_fit_a_line_once_the_rows_vary():
    times = VerifyTimes(decay=1.0)
    times.add(4, 0.2)
    times.add(4, 0.3)
    assert times.seconds(1) == times.seconds(9) == pytest.approx(0.25)  # one size seen: its mean
    for rows in (2, 6, 3, 8):
        times.add(rows, 0.05 + 0.01 * rows)
    assert times.seconds(10) > times.seconds(2) > 0  # never a negative slope nor a negative time
    times = VerifyTimes()
    for rows in range(1, 9):
        times.add(rows, 0.05 + 0.01 * rows)
    assert times.seconds(12) == pytest.approx(0.17)


class WideDrafter(Drafter):
    """Eight guesses for the next token (the right one every third step), each with a wrong follower: a
    wide tree of weak copies, like a frequency trie over passages the answer rephrases."""

    name = "wide"

    def __init__(self):
        self.calls = 0

    def propose(self, context_ids, budget):
        self.calls += 1
        start = len(context_ids)
        firsts = [TEXT[start] if self.calls % 3 == 0 and n == 0 else 1000 + n for n in range(8)]
        tokens = firsts + [2000 + n for n in range(8)]
        return DraftTree(tokens, [-1] * 8 + list(range(8))).truncated(budget)  # 8 roots, a child each


def test_a_wide_tree_of_weak_guesses_does_not_crowd_out_a_right_chain(clock):
    wide = WideDrafter()
    model = TimedDrafter("model", clock, depth=4, right=4, seconds=0.05)
    mixture = MixtureDrafter([wide, model])
    run_steps(mixture, clock, steps=30, budget=16)
    assert mixture.report()["model"]["skipped_for_cost"] == 0 and model.calls == 30


def test_catching_up_after_a_skip_is_not_counted_as_a_drafters_cost(clock):
    cheap = TimedDrafter("cheap", clock, depth=8, right=8, seconds=0.001, right_until=80)  # then always wrong
    model = TimedDrafter("model", clock, depth=4, right=4, seconds=0.03, catch_up=0.5)
    mixture = MixtureDrafter([model, cheap])
    run_steps(mixture, clock, steps=40)
    assert mixture.report()["model"]["skipped_for_cost"] > 0  # while the cheap drafter was as right and deeper
    assert model.catch_ups > 0  # then it ran again, first feeding what was committed meanwhile
    assert mixture.report()["model"]["ms_per_level"] == pytest.approx(30.0 / 4)  # catch-ups (>= 0.5 s) left out


def test_under_sampling_timing_never_decides(clock):
    cheap = TimedDrafter("cheap", clock, depth=8, right=6, seconds=0.001)
    costly = TimedDrafter("costly", clock, depth=4, right=3, seconds=0.2)
    mixture = MixtureDrafter([costly, cheap])
    run_steps(mixture, clock, steps=20, sampling=SamplingParams(temperature=0.8))
    assert mixture.report()["costly"]["skipped_for_cost"] == 0
    off = MixtureDrafter([TimedDrafter("costly", clock, 4, 3, 0.2), TimedDrafter("cheap", clock, 8, 6, 0.001)],
                         cost_aware=False)
    run_steps(off, clock, steps=20)
    assert off.report()["costly"]["skipped_for_cost"] == 0


def test_a_skipped_drafter_is_probed_and_found_again_when_the_text_turns_its_way(clock):
    weak = TimedDrafter("weak", clock, depth=2, right=0, seconds=0.001)
    model = TimedDrafter("model", clock, depth=4, right=4, seconds=0.2, right_until=0)  # wrong ...
    mixture = MixtureDrafter([weak, model], probe_gap=8)
    run_steps(mixture, clock, steps=40)  # ... so it is skipped for cost (and its estimate decays to the prior)
    skipped, calls = mixture.report()["model"]["skipped_for_cost"], model.calls
    assert skipped > 20
    model.right_until = len(TEXT)  # the text turns its way; a generation starts from the prior again
    run_steps(mixture, clock, steps=40)
    assert mixture.report()["model"]["probes"] >= 1
    assert model.calls - calls > 25  # found by a probe, then run on its merits

    model_without = TimedDrafter("model", clock, depth=4, right=4, seconds=0.2, right_until=0)
    without = MixtureDrafter([TimedDrafter("weak", clock, depth=2, right=0, seconds=0.001), model_without])
    # without probes (the default) it stays skipped
    run_steps(without, clock, steps=40)
    model_without.right_until, calls = len(TEXT), model_without.calls
    run_steps(without, clock, steps=40)
    assert model_without.calls - calls <= 2


def test_probes_back_off_when_a_drafter_never_pays(clock):
    weak = TimedDrafter("weak", clock, depth=2, right=0, seconds=0.001)
    model = TimedDrafter("model", clock, depth=4, right=0, seconds=0.2)  # costly and always wrong
    mixture = MixtureDrafter([weak, model], probe_gap=8)
    run_steps(mixture, clock, steps=250)
    probes = mixture.report()["model"]["probes"]
    assert 2 <= probes <= 6  # gaps 8, 16, 32, 64, 128: a handful per generation, not one every 8 steps
    assert model.calls <= probes + 3


def test_a_new_generation_does_not_charge_feeding_the_prompt_to_its_first_step(clock):
    """Catching up after a skip is charged to the step that pays it; feeding a new generation's prompt is
    not (one step's gain could never repay it, and the drafter would never run in that generation)."""
    weak = TimedDrafter("weak", clock, depth=2, right=0, seconds=0.001)
    model = TimedDrafter("model", clock, depth=4, right=4, seconds=0.02)  # pays even at the prior's 50%
    mixture = MixtureDrafter([weak, model])
    run_steps(mixture, clock, steps=10, budget=4)
    assert model.calls == 10
    mixture.catch_up_s[1] = 0.5  # as timed on a catch-up after a skip: the 10-token prompt would cost 5 s
    run_steps(mixture, clock, steps=10, budget=4)  # a second generation
    assert model.calls == 20 and mixture.report()["model"]["skipped_for_cost"] == 0


def test_a_probe_waits_while_catching_up_would_cost_more_than_a_share_of_the_time_skipped(clock):
    def probes(catch_up: float) -> int:
        weak = TimedDrafter("weak", clock, depth=2, right=0, seconds=0.001)
        model = TimedDrafter("model", clock, depth=4, right=0, seconds=0.2, catch_up=catch_up)
        mixture = MixtureDrafter([weak, model], probe_gap=8)
        run_steps(mixture, clock, steps=120)
        return mixture.report()["model"]["probes"]

    assert probes(catch_up=0.001) >= 3  # cheap to bring up to date: probed at gaps 8, 16, 32, ...
    assert probes(catch_up=0.5) == 1  # the first probe shows feeding 8 tokens costs 4 s: no more in 12 s


@pytest.mark.parametrize("gap", [0, -3, 2.5, "8", True])
def test_a_probe_gap_that_is_not_a_whole_number_of_steps_is_refused(gap):
    with pytest.raises(SpecDecodeError, match="probe_gap"):
        MixtureDrafter([LookupDrafter()], probe_gap=gap)


class SlowGarbage(Drafter):
    """Wrong tokens, slowly (on the fake clock)."""

    name = "garbage"

    def __init__(self, clock: FakeClock):
        self.clock = clock

    def propose(self, context_ids, budget):
        self.clock.now += 1.0
        return DraftTree.chain([(t * 7 + 3) % 90 for t in context_ids[-min(budget, 4):]])


def test_greedy_output_is_plain_decodings_whatever_the_mixture_skips(clock):
    target = loaded(tiny_model("llama", seed=0))
    prompt = random_prompt(7)
    reference = hf_greedy(target.model, prompt, 30)
    mixture = MixtureDrafter([SlowGarbage(clock), LookupDrafter()])
    out = SpeculativeGenerator(target, drafter=mixture, cost_model=None).generate(prompt, 30)
    assert out.token_ids == reference
