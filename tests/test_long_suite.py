"""The long-document suite (bench/long_suite.py) and its reports (bench/lengths.py), and HF peers'
prefill timing (methods.FirstForwards): deterministic builds, bucket sizes, the per-length table and plot."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch
from tiny import tiny_model, tiny_tokenizer

from specdecode.bench import BenchConfig, TurnResult, read_questions, run_benchmark, select_questions
from specdecode.bench import runner as bench_runner
from specdecode.bench.lengths import PLOT_FILE
from specdecode.bench.questions import write_questions
from specdecode.bench.long_suite import (INSTRUCTION, LongSuiteConfig, build_long_suite, prompt_token_counter,
                                         pydoc_text, sha256, token_counter, trim)
from specdecode.bench.methods import FirstForwards
from specdecode.errors import SpecDecodeError
from specdecode.models.load import LoadedModel
from specdecode.prompts import encode_prompt

BUCKETS = (1024, 2048)


def tiny_loaded(seed: int, name: str) -> LoadedModel:
    model = tiny_model("llama", seed=seed)
    model.generation_config.eos_token_id = 1
    return LoadedModel(model=model, tokenizer=tiny_tokenizer(), name=name, dtype=model.dtype, device=model.device)


@pytest.fixture(scope="module")
def zoo():
    return {"tiny-target": tiny_loaded(0, "tiny-target"), "tiny-draft": tiny_loaded(1, "tiny-draft")}


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    """A suite sized in the tiny tokenizer's tokens (whitespace-separated words, chat template included)."""
    config = LongSuiteConfig(out=tmp_path_factory.mktemp("suite") / "long.jsonl", tokenizer="tiny",
                             buckets=BUCKETS, per_bucket=3)
    return write_questions(build_long_suite(config, prompt_token_counter(tiny_tokenizer())), config.out)


# ----------------------------------------------------------------------------- the builder
def test_suite_is_deterministic_and_each_bucket_lands_within_tolerance(suite, tmp_path):
    config = LongSuiteConfig(out=tmp_path / "again.jsonl", tokenizer="tiny", buckets=BUCKETS, per_bucket=3)
    again = write_questions(build_long_suite(config, prompt_token_counter(tiny_tokenizer())), config.out)
    assert again.read_bytes() == suite.read_bytes()

    tokenizer = tiny_tokenizer()
    records = [json.loads(line) for line in suite.read_text().splitlines()]
    assert [r["category"] for r in records] == ["long_summarization_1k"] * 3 + ["long_summarization_2k"] * 3
    for r in records:
        (turn,) = r["turns"]
        measured = len(encode_prompt(tokenizer, [{"role": "user", "content": turn}]))  # as the bench feeds it
        assert measured == r["prompt_tokens"]
        assert 0.95 * r["target_tokens"] <= measured <= r["target_tokens"]
        assert turn.startswith(INSTRUCTION) and sha256(turn[len(INSTRUCTION):]) == r["excerpt_sha256"]
        assert len(r["document_sha256"]) == 64 and r["source"]
    # the same documents at every length: the buckets differ in length, not content
    first, second = records[:3], records[3:]
    assert [r["document"] for r in first] == [r["document"] for r in second]
    for short, long in zip(first, second):
        assert short["document_sha256"] == long["document_sha256"]
        assert long["turns"][0].startswith(short["turns"][0])  # a longer prefix of the same text

    questions = read_questions(suite)
    assert len(questions) == 6 and all(len(q.turns) == 1 for q in questions)
    assert [q.key for q in select_questions(questions, ["long_summarization_2k"])] == \
        ["long_summarization_2k_1", "long_summarization_2k_2", "long_summarization_2k_3"]


def test_the_command_builds_the_same_file_in_two_processes(tmp_path):
    """pydoc prints object addresses, which differ between processes; the suite must not."""
    files = []
    for name in ("a.jsonl", "b.jsonl"):
        files.append(tmp_path / name)
        done = subprocess.run([sys.executable, "-m", "specdecode.bench.long_suite", "--tokenizer", "chars",
                               "--buckets", "1024,2048", "--per-bucket", "8", "--out", str(files[-1])],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    assert "long_summarization_2k: 8 questions" in done.stdout
    assert files[0].read_bytes() == files[1].read_bytes()
    documents = {json.loads(line)["document"] for line in files[0].read_text().splitlines()}
    assert "configparser (pydoc)" in documents  # its pydoc text holds `<object object at 0x...>` defaults


def test_pydoc_text_drops_addresses_and_the_machines_paths():
    import configparser

    text = pydoc_text("configparser")
    assert "class ConfigParser" in text and "object at 0x..." in text and not re.search(r"at 0x[0-9a-fA-F]", text)
    assert "\nFILE\n" not in text and configparser.__file__ not in text
    assert pydoc_text("no_such_module_here") is None


def test_trim_cuts_at_a_paragraph_end_or_else_a_line_and_refuses_short_documents():
    words = lambda text: len(text.split())  # noqa: E731 - a token per word
    base = words(INSTRUCTION)
    paragraphs = "\n\n".join(" ".join(f"p{p}w{w}" for w in range(10)) for p in range(10))  # 10 x 10 words
    piece = trim(paragraphs, base + 45, words, tolerance=0.25)
    assert piece.cut == "paragraph" and piece.prompt_tokens == base + 40 and piece.text.endswith("p3w9")
    lines = "\n".join(" ".join(f"l{line}w{w}" for w in range(5)) for line in range(40))  # no blank line
    piece = trim(lines, base + 47, words, tolerance=0.1)
    assert piece.cut == "line" and piece.prompt_tokens == base + 45 and piece.lines == 9
    assert trim(lines, base + 500, words, tolerance=0.1) is None  # 200 words cannot reach 450
    whole = trim(lines, base + 205, words, tolerance=0.1)
    assert whole.cut == "end" and whole.prompt_tokens == base + 200


def test_token_counter_loads_a_tokenizer_folder_and_names_what_it_cannot_load(tmp_path):
    tiny_tokenizer().save_pretrained(tmp_path / "tok")
    count = token_counter(str(tmp_path / "tok"))
    assert count("w5 w6 w7") == len(encode_prompt(tiny_tokenizer(), [{"role": "user", "content": "w5 w6 w7"}]))
    assert token_counter("chars")("x" * 9) == 3  # 4 characters a token, rounded up
    with pytest.raises(SpecDecodeError, match="could not load a tokenizer from"):
        token_counter(str(tmp_path / "missing"))


# ----------------------------------------------------------------------------- reports by length
class TimedSpy:
    """Answers three tokens with made-up timings: plain 10 s (2 s prefill), `fast` 6 s (2 s prefill)."""

    def __init__(self, name: str):
        self.name = name

    def run(self, prompt_ids, max_new_tokens, passages=()):
        wall = 10.0 if self.name == "plain" else 6.0
        return TurnResult((30, 31, 32), "w30 w31 w32", wall, 3, None, None, prefill_s=2.0)


def test_length_buckets_get_a_table_and_a_plot(suite, tmp_path, zoo, monkeypatch):
    monkeypatch.setattr(bench_runner, "build_methods", lambda names, *a, **k: [TimedSpy(n.text) for n in names])
    out = tmp_path / "out"
    run_benchmark(BenchConfig(questions=suite, model="tiny-target", out=out, methods="lookup", max_new_tokens=3),
                  target=zoo["tiny-target"], load=lambda spec, **_: zoo[spec])
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    suite_tokens = {r["question_id"]: r["prompt_tokens"] for r in map(json.loads, suite.read_text().splitlines())}
    assert all(r["prompt_tokens"] == [suite_tokens[r["question_id"]]] for r in records)  # the bench's own count

    summary = json.loads((out / "summary.json").read_text())
    buckets = summary["length_buckets"]
    assert [(b["category"], b["nominal_tokens"]) for b in buckets] == [("long_summarization_1k", 1024),
                                                                       ("long_summarization_2k", 2048)]
    first = [t for q, t in suite_tokens.items() if q.startswith("long_summarization_1k")]
    assert buckets[0]["prompt_tokens"] == pytest.approx(sum(first) / 3)
    report = (out / "report.md").read_text()
    assert "## speedup by prompt length" in report
    assert f"| method | long_summarization_1k ({sum(first) / 3:,.0f} tokens) |" in report
    # 3 tokens in 6 s vs 10 s: 1.67x; after the 2 s prefill, 4 s vs 8 s: 2.00x
    assert "| lookup | 1.67x / 2.00x | 1.67x / 2.00x |" in report
    assert "| plain | 1.00x / 1.00x | 1.00x / 1.00x |" in report
    assert "## long_summarization_2k" in report and "| lookup | 3 | 1.67x | 1.67x |" in report
    assert (out / PLOT_FILE).read_bytes()[:4] == b"\x89PNG"

    plain_questions = tmp_path / "q.jsonl"  # categories that are not length buckets: no such table, no plot
    plain_questions.write_text(json.dumps({"question_id": 1, "category": "summarization", "turns": ["w5 w6"]}) + "\n")
    run_benchmark(BenchConfig(questions=plain_questions, model="tiny-target", out=tmp_path / "o2", methods="lookup"),
                  target=zoo["tiny-target"], load=lambda spec, **_: zoo[spec])
    assert not (tmp_path / "o2" / PLOT_FILE).exists()
    assert "speedup by prompt length" not in (tmp_path / "o2" / "report.md").read_text()


# ----------------------------------------------------------------------------- HF peers' prefill
def test_first_forwards_times_only_each_modules_first_forward():
    ticks = iter(range(100))
    first, second = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    timer = FirstForwards([first, second], clock=lambda: float(next(ticks)))
    x = torch.ones(1, 2)
    assert timer.seconds() is None  # nothing ran yet
    first(x)  # ticks 0 -> 1
    assert timer.seconds() is None  # the second module has not run
    second(x), first(x), second(x)  # second: ticks 2 -> 3; later forwards read no clock
    assert timer.seconds() == 2.0 and next(ticks) == 4
    timer.remove()
    first(x)
    assert next(ticks) == 5  # no hook left behind


def test_hf_peers_record_their_prefill_and_get_a_decode_speedup(tmp_path, zoo):
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"question_id": 1, "category": "copy",
                                     "turns": ["w5 w6 w7 w8 w5 w6 w7 w8 w5 w6 w7 w8 w5 w6"]}) + "\n")
    out = tmp_path / "out"
    run_benchmark(BenchConfig(questions=questions, model="tiny-target", out=out, max_new_tokens=8, warmup=0,
                              methods="hf-plain,hf-lookup,hf-assisted:tiny-draft", drafter_quantize=None),
                  target=zoo["tiny-target"], load=lambda spec, **_: zoo[spec])
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["method"] for r in records] == ["plain", "hf-plain", "hf-lookup", "hf-assisted:tiny-draft"]
    for r in records:
        assert r["identical"] and 0 < r["prefill_s"] < r["wall_s"], r
    rows = json.loads((out / "summary.json").read_text())["summary"]["overall"]
    assert all(row["decode_speedup"] is not None and row["prefill_share"] is not None for row in rows)
