"""The cost model: forward-cost tables (interpolation, padding, cache), the draft-size rule on fake
timings, and the engine with it: sizes follow the costs, the output never changes."""

from __future__ import annotations

import json

import pytest
import torch
from tiny import OracleDrafter, hf_greedy, loaded, random_prompt, tiny_model

from specdecode import SpeculativeGenerator
from specdecode.policy import DraftSizer, ForwardCosts
from specdecode.runtime.calibrate import Calibration, measure_forward_costs
from specdecode.runtime.runner import select_backend
from specdecode.drafters import LookupDrafter, ModelDrafter
from specdecode.errors import SpecDecodeError
from specdecode.outputs import Step

FLAT = ForwardCosts((1, 64), (1.0, 1.0))  # verifying 64 tokens costs what one does
STEEP = ForwardCosts((1, 2, 64), (1.0, 1.6, 1.6 + 62 * 0.6))  # each extra token costs 0.6 of a step
MEDIUM = ForwardCosts((1, 2, 8, 64), (1.0, 1.3, 1.6, 4.0))  # like fp32 on a 2-core AVX2 CPU


def test_forward_costs_interpolate_and_allow_padding():
    costs = ForwardCosts((1, 2, 4, 8), (1.0, 2.0, 1.5, 3.0))
    assert costs.raw(3) == pytest.approx(1.75)
    assert costs(3) == pytest.approx(1.5)  # padding 3 tokens to 4 is cheaper
    assert costs(10) == pytest.approx(3.0 + 2 * 1.5 / 4)  # past the table: the last slope
    assert costs.table_ms() == {1: 1000.0, 2: 2000.0, 4: 1500.0, 8: 3000.0}


@pytest.mark.parametrize("sizes, seconds", [((2, 4), (1.0, 2.0)), ((1, 4, 2), (1, 2, 3)), ((1, 2), (1.0,)),
                                            ((1, 2), (1.0, 0.0))])
def test_bad_cost_tables_are_refused(sizes, seconds):
    with pytest.raises(SpecDecodeError, match="ForwardCosts"):
        ForwardCosts(sizes, seconds)


def step(nodes: int, depth: int, accepted: int, draft_s: float = 0.0) -> Step:
    return Step(drafted=nodes, depth=depth, accepted=accepted, recovered=accepted < depth, rows=1 + nodes,
                draft_s=draft_s, verify_s=0.0)


def sizer_after(verify: ForwardCosts, steps: list[tuple[int, int]], draft_seconds: float = 0.0) -> DraftSizer:
    """A sizer that has seen chain drafts of (depth, accepted) levels, each costing `draft_seconds` per node."""
    sizer = DraftSizer(verify)
    for depth, accepted in steps:
        sizer.observe(step(depth, depth, accepted, draft_seconds * depth))
    return sizer


def test_expensive_verification_gets_shorter_drafts():
    history = [(6, 4), (6, 6), (6, 3), (6, 5)] * 3  # a drafter right about 80% of the time
    flat, steep = sizer_after(FLAT, history), sizer_after(STEEP, history)
    assert 0.6 < flat.alpha < 0.95 and flat.alpha == steep.alpha
    assert flat.budget(32) > steep.budget(32) > 0
    assert flat.budget(32) == 32  # free verification: draft as far as allowed


def test_a_drafter_that_is_never_right_stops_drafting_then_retries():
    sizer = sizer_after(MEDIUM, [(4, 0)] * 10)
    assert sizer.alpha < 0.2 and sizer.budget(16) == 0  # plain steps are cheaper
    for _ in range(40):  # steps without a draft: the evidence fades toward the prior
        sizer.observe(step(0, 0, 0))
    assert sizer.alpha > 0.5 and sizer.budget(16) > 0
    assert sizer.report()["steps_without_draft"] == 1


def test_a_drafter_as_slow_as_the_target_is_not_used():
    history = [(4, 3), (4, 2), (4, 4), (4, 1)] * 3
    assert sizer_after(FLAT, history, draft_seconds=0.0).budget(16) > 0
    assert sizer_after(FLAT, history, draft_seconds=1.0).budget(16) == 0  # each draft token costs a target step


def test_tree_shape_counts_nodes_per_level():
    chain, tree = DraftSizer(STEEP), DraftSizer(STEEP)
    for _ in range(10):
        chain.observe(step(4, 4, 3))
        tree.observe(step(12, 4, 3))  # 3 nodes per level
    assert tree.shape == pytest.approx(3.0, rel=0.2) and chain.shape == pytest.approx(1.0)
    assert tree.expected_tokens(12 / tree.shape) < chain.expected_tokens(12)


def test_costs_are_measured_once_then_read_from_the_cache(tmp_path):
    model = tiny_model("llama", seed=0)
    runner = select_backend()
    calls = []

    def measure(m, r):
        calls.append(m)
        return measure_forward_costs(m, r, sizes=(1, 2, 4), rounds=1)

    first = Calibration.for_model(model, folder=tmp_path).forward_costs(model, runner, measure)
    again = Calibration.for_model(model, folder=tmp_path).forward_costs(model, runner, measure)  # a later load
    assert len(calls) == 1 and again == first and first.sizes == (1, 2, 4) and min(first.seconds) > 0
    other = Calibration.for_model(model, quantization="int8", folder=tmp_path)  # another key
    assert other.forward_costs(model, runner, measure) and len(calls) == 2
    for file in tmp_path.iterdir():
        entries = json.loads(file.read_text())["values"]
        assert [entry["sizes"] for entry in entries.values()] == [[1, 2, 4]]
        file.write_text("{not json")
    Calibration.for_model(model, folder=tmp_path).forward_costs(model, runner, measure)
    assert len(calls) == 3  # an unreadable cache file is measured again, not an error


def test_forward_costs_are_timed_with_the_clock_given():
    model = tiny_model("llama", seed=0)
    ticks = iter(range(1000))
    costs = measure_forward_costs(model, select_backend(), sizes=(1, 2), rounds=2, clock=lambda: next(ticks) * 0.5)
    assert costs.seconds == (0.5, 0.5)  # each forward saw the clock advance one tick


@pytest.mark.parametrize("costs", [FLAT, MEDIUM])
def test_engine_sizes_drafts_by_the_cost_model_and_stays_exact(costs):
    target = loaded(tiny_model("llama", seed=0))
    prompt = random_prompt(3)
    truth = hf_greedy(target.model, prompt, 40)
    gen = SpeculativeGenerator(target, drafter=OracleDrafter(prompt, truth, seed=1), cost_model=costs)
    out = gen.generate(prompt, max_new_tokens=40)
    assert out.token_ids == truth
    report = out.stats.cost_model
    assert report["verify_ms"] == costs.table_ms() and 0 < report["acceptance_per_level"] < 1
    assert report["mean_budget"] > (8 if costs is FLAT else 0)


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class SlowStartDrafter(OracleDrafter):
    """An oracle that spends 0.3 s (on the fake clock) feeding its prompt in `begin`, as a model drafter
    does, and a microsecond per node drafting."""

    def __init__(self, *args, clock: FakeClock, **kwargs):
        super().__init__(*args, **kwargs)
        self.clock = clock

    def begin(self, prompt_ids, **options):
        super().begin(prompt_ids, **options)
        self.clock.now += 0.3

    def propose(self, context_ids, budget):
        tree = super().propose(context_ids, budget)
        self.clock.now += 1e-6 * len(tree)
        return tree


def test_a_drafters_feeding_of_its_prompt_counts_as_prefill_not_as_drafting():
    target = loaded(tiny_model("llama", seed=0))
    prompt = random_prompt(3)
    truth = hf_greedy(target.model, prompt, 40)
    clock = FakeClock()
    drafter = SlowStartDrafter(prompt, truth, seed=1, clock=clock)
    out = SpeculativeGenerator(target, drafter=drafter, cost_model=FLAT, clock=clock).generate(prompt, 40)
    assert out.token_ids == truth
    assert out.stats.prefill_s == pytest.approx(0.3)  # the time is spent and reported, not used to size drafts:
    assert out.stats.cost_model["draft_ms_per_node"] == pytest.approx(0.001)  # a microsecond per node
    assert out.stats.draft_s == pytest.approx(out.stats.drafted_tokens * 1e-6)


def test_steep_costs_draft_less_than_flat_costs_for_the_same_drafter():
    target = loaded(tiny_model("llama", seed=0))
    prompt = [5, 6, 7, 8, 9] * 6
    drafted = {}
    for name, costs in (("flat", FLAT), ("steep", STEEP)):
        gen = SpeculativeGenerator(target, drafter=LookupDrafter(), cost_model=costs)
        out = gen.generate(prompt, max_new_tokens=30)
        assert out.token_ids == gen.generate(prompt, max_new_tokens=30, speculative=False).token_ids
        drafted[name] = out.stats.cost_model["mean_budget"]
    assert drafted["steep"] < drafted["flat"]


def test_cost_model_option_is_checked():
    with pytest.raises(SpecDecodeError, match="cost_model"):
        SpeculativeGenerator(loaded(tiny_model("llama", seed=0)), cost_model="fast")
    gen = SpeculativeGenerator(loaded(tiny_model("llama", seed=0)), drafter=LookupDrafter(), cost_model=None)
    assert gen.generate([5, 6, 7, 5, 6, 7, 5, 6], max_new_tokens=6).stats.cost_model == {}


def test_measured_cost_model_keeps_every_drafter_lossless(calibration_dir):
    from tiny import RandomDrafter

    from specdecode.drafters import RetrievalDrafter

    target = loaded(tiny_model("llama", seed=0))
    prompt = [5, 6, 7, 8, 9, 10] * 3 + random_prompt(4)
    truth = hf_greedy(target.model, prompt, 30)
    drafters = [LookupDrafter(), RetrievalDrafter(passages=[truth[:15]]), RandomDrafter(2),
                ModelDrafter(loaded(tiny_model("llama", seed=1)), k=3, confidence=0)]
    for drafter in drafters:
        out = SpeculativeGenerator(target, drafter=drafter).generate(prompt, max_new_tokens=30)
        assert out.token_ids == truth, drafter.name
        assert set(out.stats.cost_model["verify_ms"]) == {1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64}
    files = list(calibration_dir.iterdir())  # the measured table is cached here, measured once for the four
    assert len(files) == 1
    assert sum(name.startswith("forward_costs") for name in json.loads(files[0].read_text())["values"]) == 1


def test_a_model_drafter_feeds_its_prompt_in_begin_and_catches_up_only_on_new_tokens():
    drafter = ModelDrafter(loaded(tiny_model("llama", seed=1)), k=3, confidence=0)
    prompt = random_prompt(4, length=30)
    with torch.inference_mode():  # as the engine calls drafters
        drafter.begin(prompt)
        assert drafter.cache.length == len(prompt)  # fed once, in begin
        tree = drafter.propose(prompt, 3)
        assert drafter.cache.length == len(prompt) + 2  # nothing fed again: the chain's first two tokens only
        drafter.accept(tree.token_list[:1] + [7])
        drafter.propose(prompt + tree.token_list[:1] + [7], 3)
        assert drafter.cache.length == len(prompt) + 2 + 2
        drafter.begin(prompt)  # a new generation feeds its prompt again
        assert drafter.cache.length == len(prompt)


def test_the_draft_policy_given_is_the_one_the_cost_model_uses():
    """draft_policy= reaches the sizer (its settings are in the stats) and, like any policy, leaves the tokens."""
    from specdecode.policy import SizerSettings

    target = loaded(tiny_model("llama", seed=0))
    prompt = random_prompt(3)
    truth = hf_greedy(target.model, prompt, 30)
    outs = {prior: SpeculativeGenerator(target, drafter=OracleDrafter(prompt, truth, seed=1), cost_model=FLAT,
                                        draft_policy=SizerSettings(prior=prior)).generate(prompt, max_new_tokens=30)
            for prior in (0.3, 0.9)}
    for prior, out in outs.items():
        assert out.token_ids == truth and out.stats.cost_model["settings"]["prior"] == prior
