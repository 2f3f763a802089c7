"""Calibration: measured once per model and machine, read back on every later load (so two loads make
the same choices and give the same tokens); machine keys that tell CPUs apart by their flags; the widest
exact forward found on kernels that keep each row's bits only up to a row count, and kept to."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
from tiny import (RandomDrafter, cpu_model, random_prompt, repetitive_prompt, rowwise_linear, stand_in_linear,
                  tiny_tokenizer)

import specdecode.models.load
from specdecode import SpeculativeGenerator, load_model
from specdecode.drafters import LookupDrafter
from specdecode.runtime import machine
from specdecode.runtime.calibrate import Calibration
from specdecode.runtime.cpu.linear import exact_width

AVX2 = "model name : AMD EPYC\nflags : fpu sse avx avx2 fma\n"
AVX512_BF16 = "model name : AMD EPYC\nflags : fpu sse avx avx2 fma avx512f avx512_bf16 avx512_vnni\n"


def test_machine_keys_tell_apart_cpus_of_one_name_by_their_flags(monkeypatch):
    keys = []
    for cpuinfo in (AVX2, AVX512_BF16):
        monkeypatch.setattr(machine, "_cpuinfo", lambda text=cpuinfo: text)
        assert machine.cpu_name() == "AMD EPYC"
        keys.append(machine.machine_key())
    assert machine.cpu_flags(AVX2) == ["avx2", "fma"]
    assert machine.cpu_flags(AVX512_BF16) == ["avx2", "avx512f", "avx512_bf16", "avx512_vnni", "fma"]
    assert keys[0] != keys[1] and all(torch.__version__ in key and "threads" in key for key in keys)


def test_values_are_measured_once_saved_and_read_back(tmp_path, monkeypatch):
    model = cpu_model("llama")
    calls = []

    def measure():
        calls.append(1)
        return {"answer": 42}

    first = Calibration.for_model(model, folder=tmp_path)
    assert first.get("probe", measure) == {"answer": 42} and first.get("probe", measure) == {"answer": 42}
    assert Calibration.for_model(model, folder=tmp_path).get("probe", measure) == {"answer": 42}  # a later load
    assert len(calls) == 1
    document = json.loads(first.path.read_text())
    assert document["values"] == {"probe": {"answer": 42}} and "threads" in document["machine"]
    assert [p.name for p in tmp_path.iterdir()] == [first.path.name]  # no temporary file left behind
    Calibration.for_model(model, quantization="int8", folder=tmp_path).get("probe", measure)
    Calibration.for_model(model.to(torch.bfloat16), folder=tmp_path).get("probe", measure)
    assert len(calls) == 3  # another quantization, another dtype: other keys
    first.path.write_text("{damaged")
    assert Calibration.for_model(model.float(), folder=tmp_path).get("probe", measure) == {"answer": 42}
    assert len(calls) == 4  # an unreadable file is measured again, not an error
    other = AVX2 if "avx512f" in machine.cpu_flags() else AVX512_BF16
    monkeypatch.setattr(machine, "_cpuinfo", lambda: other)
    Calibration.for_model(model, folder=tmp_path).get("probe", measure)
    assert len(calls) == 5  # another machine: measured anew


def load(monkeypatch, orientation: str):
    """A tiny fp32 model loaded with cpu_kernels="auto", the orientation's timing forced to `orientation`."""
    monkeypatch.setattr(specdecode.models.load, "measured_orientation", lambda model: orientation)
    return load_model(cpu_model("qwen2", seed=0), tokenizer=tiny_tokenizer())


def test_two_loads_of_a_model_make_the_same_choice_and_give_the_same_tokens(monkeypatch, tmp_path):
    prompt = random_prompt(5)
    first = load(monkeypatch, "weight_first")
    tokens = SpeculativeGenerator(first).generate(prompt, max_new_tokens=24, speculative=False).token_ids
    again = load(monkeypatch, "standard")  # a timing that now says otherwise: the first choice is read back
    assert first.linear_kernel == again.linear_kernel == "weight_first"
    assert SpeculativeGenerator(again).generate(prompt, max_new_tokens=24, speculative=False).token_ids == tokens
    monkeypatch.setenv("SPECDECODE_CALIBRATION_DIR", str(tmp_path))  # calibration cleared: measured anew
    assert load(monkeypatch, "standard").linear_kernel == "standard"


# ----------------------------------------------------------------------------- the exact width
def test_the_exact_width_is_the_widest_row_count_that_keeps_every_rows_bits():
    layers = [torch.nn.Linear(32, 48), torch.nn.Linear(48, 32, bias=False)]
    assert exact_width(layers, rowwise_linear) == 65
    assert exact_width(layers, stand_in_linear()) == 65  # a lone row apart: one-token steps are padded
    assert exact_width(layers, stand_in_linear(exact_rows=32)) == 32
    assert exact_width(layers, stand_in_linear(exact_rows=5)) == 5
    # rounding that moves with the row count: a one-token step (two rows) agrees with a one-token draft only
    assert exact_width(layers, lambda x, w, b=None: rowwise_linear(x, w, b) + 1e-4 * x.shape[1]) == 2
    # rounding that depends on the other rows: no width
    assert exact_width(layers, lambda x, w, b=None: rowwise_linear(x, w, b) + 1e-4 * x.sum()) == 0


@pytest.fixture
def kernel_exact_up_to_32_rows(monkeypatch):
    """F.linear replaced by a kernel that keeps bits only up to 32 rows, and whose lone rows round apart (moved
    by several bf16 steps, so that a forward wider than 32 rows visibly changes the output)."""
    monkeypatch.setattr(F, "linear", stand_in_linear(exact_rows=32, apart=2 ** -4))


def test_a_bf16_target_on_kernels_exact_up_to_32_rows_keeps_every_forward_within_them(kernel_exact_up_to_32_rows):
    target = load_model(cpu_model("llama", seed=0), tokenizer=tiny_tokenizer(), dtype="bf16")
    assert target.exact_steps and target.max_exact_rows == 32 and target.linear_kernel == "padded_row"
    assert SpeculativeGenerator(target, max_draft_tokens=64).max_draft_tokens == 31  # 1 pending + 31 nodes
    uncapped = dataclasses.replace(target, max_exact_rows=None)  # what the cap prevents
    differing = 0
    for seed, prompt in enumerate((random_prompt(3), repetitive_prompt(4), random_prompt(8))):
        plain = SpeculativeGenerator(target).generate(prompt, max_new_tokens=40, speculative=False).token_ids
        for drafter in (RandomDrafter(seed, max_nodes=64), LookupDrafter(tree_width=4)):
            ours = SpeculativeGenerator(target, drafter=drafter, cost_model=None).generate(prompt, max_new_tokens=40)
            assert ours.token_ids == plain, drafter.name
        wide = SpeculativeGenerator(uncapped, drafter=RandomDrafter(seed, max_nodes=64), cost_model=None)
        differing += wide.generate(prompt, max_new_tokens=40).token_ids != plain
    assert differing  # forwards wider than 32 rows do change this target's output


def test_dtype_auto_prefers_fp32_where_bf16_can_keep_no_rows_bits(tmp_path, monkeypatch):
    """On a CPU whose bf16 products keep no row's bits at any width, "auto" loads a target in fp32 (it asks
    for exactness before speed); a bf16 asked for by name stays bf16 and says it is not exact."""
    folder = tmp_path / "tiny"
    cpu_model("llama", seed=0).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    monkeypatch.setattr(specdecode.models.load, "cpu_supports_bf16", lambda: True)
    monkeypatch.setattr(specdecode.models.load, "exact_width", lambda layers: 0)
    auto = load_model(folder, device="cpu")
    assert auto.dtype == torch.float32
    named = load_model(folder, device="cpu", dtype="bf16")
    assert named.dtype == torch.bfloat16 and not named.exact_steps
    monkeypatch.setattr(specdecode.models.load, "exact_width", lambda layers: 65)
    monkeypatch.setenv("SPECDECODE_CALIBRATION_DIR", str(tmp_path / "exact-cpu"))
    exact = load_model(folder, device="cpu")
    assert exact.dtype == torch.bfloat16 and exact.exact_steps and exact.max_exact_rows is None
