"""`specdecode bench`: Spec-Bench protocol, arithmetic, output schema, resume, exactness flags and bad
input, on tiny models (no timed assertions)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny import tiny_model, tiny_tokenizer
from typer.testing import CliRunner

from specdecode.bench import BenchConfig, TurnResult, read_questions, run_benchmark, select_questions, summarize
from specdecode.bench import runner as bench_runner
from specdecode.bench.metrics import OVERALL
from specdecode.cli.main import app
from specdecode.errors import SpecDecodeError
from specdecode.runtime.cpu.quantize import fbgemm_available
from specdecode.models.load import LoadedModel
from specdecode.prompts import encode_prompt

SPEC_BENCH = Path(__file__).resolve().parents[2] / "shared" / "data" / "spec_bench" / "question.jsonl"
QUESTIONS = [
    {"question_id": 1, "category": "copy", "turns": ["w5 w6 w7 w8 w5 w6 w7 w8 w5 w6"]},
    {"question_id": 2, "category": "chat", "turns": ["w9 w10 w11 w9 w10", "w12 w13 w12 w13"]},
    {"question_id": 3, "category": "copy", "turns": ["w20 w21 w22 w20 w21 w22"]},
]


def tiny_loaded(seed: int, name: str) -> LoadedModel:
    model = tiny_model("llama", seed=seed)
    model.generation_config.eos_token_id = 1  # "<eos>" of the tiny tokenizer
    return LoadedModel(model=model, tokenizer=tiny_tokenizer(), name=name, dtype=model.dtype, device=model.device)


@pytest.fixture(scope="module")
def target():
    return tiny_loaded(0, "tiny-target")


@pytest.fixture(scope="module")
def zoo(target):
    """What `load` returns by name in these tests: the target itself and an independent drafter."""
    return {"tiny-target": target, "tiny-draft": tiny_loaded(1, "tiny-draft")}


@pytest.fixture
def questions_file(tmp_path):
    path = tmp_path / "question.jsonl"
    path.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    return path


def config(questions_file, out, **changes) -> BenchConfig:
    return BenchConfig(**{"questions": questions_file, "model": "tiny-target", "out": out, "max_new_tokens": 10,
                          **changes})


def run(cfg: BenchConfig, zoo: dict):
    return run_benchmark(cfg, target=zoo[cfg.model], load=lambda spec, **_: zoo[spec])


def results(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------- real methods end to end
def test_every_method_on_a_tiny_model_writes_identical_results_and_reports(questions_file, tmp_path, zoo, monkeypatch):
    out = tmp_path / "out"
    probed = "w8a8" if fbgemm_available() else None  # what the weights probe answers here (fixed: it is a timing)
    monkeypatch.setattr(bench_runner, "draft_quantization", lambda device: probed)
    methods = "lookup,model:tiny-draft,model:tiny-target,hf-plain,hf-static,hf-lookup,hf-assisted:tiny-draft"
    bench = run(config(questions_file, out, methods=methods, cost_model=False), zoo)  # every drafter drafts
    assert bench.measured == 3 * 8 and not bench.interrupted
    records = results(out)
    assert [r["method"] for r in records[:8]] == ["plain", *methods.split(",")]  # plain first, then in order
    for r in records:
        assert set(r) >= {"question_id", "category", "method", "turns", "new_tokens", "wall_s", "target_forwards",
                          "accept_histogram", "ids_hash", "token_ids", "identical", "divergence"}
        assert r["identical"] is True, r  # fp32: every method, the peers included, equals our plain decoding
        assert r["new_tokens"] == sum(len(t) for t in r["token_ids"]) > 0
        assert r["turns"] == (2 if r["question_id"] == "2" else 1)
        assert r["target_forwards"] >= 1
    by_method = {r["method"]: r for r in records if r["question_id"] == "1"}
    assert by_method["plain"]["target_forwards"] == by_method["plain"]["new_tokens"]  # tau 1
    settings = json.loads((out / "run.json").read_text())["settings"]  # "auto" drafter weights, as resolved
    assert settings.get("drafter_quantize") == probed
    assert by_method["model:tiny-target"]["target_forwards"] < by_method["plain"]["target_forwards"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["methods"][0] == "plain" and set(summary["summary"]) == {OVERALL, "copy", "chat"}
    assert summary["summary"][OVERALL][0]["speedup"] == pytest.approx(1.0)
    report = (out / "report.md").read_text()
    assert "## copy" in report and "| model:tiny-target |" in report and "torch" in report
    for plot in ("speedup.png", "acceptance.png"):
        assert (out / plot).read_bytes()[:4] == b"\x89PNG"


def test_our_methods_run_on_the_attention_backend_asked_for(questions_file, tmp_path, zoo, monkeypatch):
    from specdecode.runtime.cuda import static_steps

    steps, run_step = [], static_steps.StaticSteps.run
    monkeypatch.setattr(static_steps.StaticSteps, "run", lambda *args, **kw: steps.append(1) or run_step(*args, **kw))
    out = tmp_path / "out"
    run(config(questions_file, out, methods="lookup,model:tiny-draft", attention="graphs", cost_model=False), zoo)
    assert all(r["identical"] for r in results(out)) and steps
    assert json.loads((out / "run.json").read_text())["settings"]["attention"] == "graphs"


def test_store_asks_each_turn_over_the_datastore_and_hands_passages_to_retrieval(tmp_path, zoo, monkeypatch):
    from specdecode.drafters import RetrievalDrafter
    from specdecode.retrieval import Datastore

    docs = ["w40 w41 w42 w43 w44 w45 w46 w47 w48 w49 w50 w51", "w60 w61 w62 w63 w64 w65 w66 w67 w68 w69"]
    Datastore.build(docs, chunk_tokens=32, overlap=0).save(tmp_path / "store")
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"question_id": 7, "category": "docs", "turns": ["w40 w41 w42", "w60 w61"]}) + "\n")
    handed = []
    original = RetrievalDrafter.set_passages
    monkeypatch.setattr(RetrievalDrafter, "set_passages",
                        lambda self, passages: (handed.append([list(p) for p in passages]), original(self, passages)))
    out = tmp_path / "out"
    run(config(questions, out, methods="retrieval,retrieval+model:tiny-draft,hf-plain", store=tmp_path / "store",
               rag_k=1, warmup=0), zoo)
    rows = results(out)
    assert [r["method"] for r in rows] == ["plain", "retrieval", "retrieval+model:tiny-draft", "hf-plain"]
    assert all(r["identical"] for r in rows) and all(r["turns"] == 2 for r in rows)
    tokenizer = zoo["tiny-target"].tokenizer
    first = tokenizer.encode(docs[0], add_special_tokens=False)
    handed = [h for h in handed if h]  # (drafters start with no passages)
    assert handed[0] == [first] and len(handed) == 4  # 2 methods x 2 turns, each turn its own passages
    mixture = rows[2]["drafters"]  # per drafter, summed over the turns, and its table in the report
    assert len(mixture) == 2 and "retrieval" in mixture and rows[1]["drafters"] is None
    assert all(0 <= counts["accepted"] <= counts["drafted"] for counts in mixture.values())
    assert "| retrieval+model:tiny-draft | retrieval |" in (out / "report.md").read_text()
    settings = json.loads((out / "run.json").read_text())["settings"]
    assert settings["store"].endswith("k=1")
    with pytest.raises(SpecDecodeError, match="other settings"):  # another k is another benchmark
        run(config(questions, out, methods="retrieval", store=tmp_path / "store", rag_k=2), zoo)
    with pytest.raises(SpecDecodeError, match="--rag-k"):
        run(config(questions, tmp_path / "o2", store=tmp_path / "store", rag_k=0), zoo)


# ----------------------------------------------------------------------------- protocol with spy methods
class SpyMethod:
    """Records its calls; answers `answer` (token ids w30.. by default) with made-up timings."""

    def __init__(self, name: str, log: list, tokenizer, answers: dict | None = None, fail_at: int | None = None):
        self.name, self.log, self.tokenizer = name, log, tokenizer
        self.answers = answers or {}
        self.fail_at = fail_at

    def run(self, prompt_ids, max_new_tokens, passages=()):
        self.log.append((self.name, list(prompt_ids), max_new_tokens))
        if self.fail_at is not None and len(self.log) == self.fail_at:
            raise KeyboardInterrupt
        ids = self.answers.get(tuple(prompt_ids), (30, 31, 32))
        return TurnResult(tuple(ids), self.tokenizer.decode(ids), 0.5, 2, (1, 0, 1), (1.0, 0.5, 0.05))


@pytest.fixture
def spy(monkeypatch, zoo):
    state = {"log": [], "answers": {}, "fail_at": None}

    def build(names, target, options, draft_models, *args, **kwargs):
        return [SpyMethod(n.text, state["log"], target.tokenizer, state["answers"].get(n.text), state["fail_at"])
                for n in names]

    monkeypatch.setattr(bench_runner, "build_methods", build)
    return state


def test_warmup_is_not_counted_and_methods_interleave_per_question(questions_file, tmp_path, zoo, spy):
    out = tmp_path / "out"
    run(config(questions_file, out, methods="lookup,hf-plain", warmup=2, max_new_tokens=24), zoo)
    log = spy["log"]
    warmups = [entry for entry in log if entry[2] == bench_runner.WARMUP_TOKENS]
    assert [name for name, _, _ in warmups] == ["plain", "plain", "lookup", "lookup", "hf-plain", "hf-plain"]
    measured = [name for name, _, tokens in log if tokens == 24]
    # question 1 (1 turn), question 2 (2 turns, each method carries its own conversation), question 3
    assert measured == ["plain", "lookup", "hf-plain"] + ["plain"] * 2 + ["lookup"] * 2 + ["hf-plain"] * 2 + \
        ["plain", "lookup", "hf-plain"]
    assert [r["method"] for r in results(out)] == ["plain", "lookup", "hf-plain"] * 3  # warm-ups not recorded


def test_second_turn_carries_the_first_answer(questions_file, tmp_path, zoo, spy):
    run(config(questions_file, tmp_path / "out", methods="lookup", max_new_tokens=24), zoo)
    tokenizer = zoo["tiny-target"].tokenizer
    turn1, turn2 = QUESTIONS[1]["turns"]
    expected = encode_prompt(tokenizer, [{"role": "user", "content": turn1},
                                         {"role": "assistant", "content": "w30 w31 w32"},
                                         {"role": "user", "content": turn2}])
    second_turns = [prompt for name, prompt, tokens in spy["log"] if tokens == 24 and prompt == expected]
    assert len(second_turns) == 2  # plain and lookup


def test_identical_flag_catches_a_planted_mismatch(questions_file, tmp_path, zoo, spy):
    tokenizer = zoo["tiny-target"].tokenizer
    prompt3 = tuple(encode_prompt(tokenizer, [{"role": "user", "content": QUESTIONS[2]["turns"][0]}]))
    spy["answers"]["lookup"] = {prompt3: (30, 31, 40)}  # differs from plain at token 2 of question 3
    out = tmp_path / "out"
    run(config(questions_file, out, methods="lookup"), zoo)
    flags = {(r["question_id"], r["method"]): r for r in results(out)}
    assert flags[("1", "lookup")]["identical"] and flags[("2", "lookup")]["identical"]
    bad = flags[("3", "lookup")]
    assert bad["identical"] is False
    assert bad["divergence"] == {"turn": 0, "position": 2, "plain_token": 32, "token": 40, "plain_margin": 0.05}
    assert "question 3, lookup: turn 1, token 2" in (out / "report.md").read_text()
    overall = {row["method"]: row for row in json.loads((out / "summary.json").read_text())["summary"][OVERALL]}
    assert overall["lookup"]["identical"] == pytest.approx(2 / 3)


def test_interrupted_run_resumes_without_repeating_finished_pairs(questions_file, tmp_path, zoo, spy):
    out = tmp_path / "out"
    spy["fail_at"] = 3 + 3  # 3 warm-ups, then the third measured call: q1 plain and lookup finish
    bench = run(config(questions_file, out, methods="lookup,hf-lookup"), zoo)
    assert bench.interrupted and bench.measured == 2
    assert [(r["question_id"], r["method"]) for r in results(out)] == [("1", "plain"), ("1", "lookup")]
    with (out / "results.jsonl").open("a") as f:
        f.write('{"question_id": "1", "meth')  # a line cut short by a killed process
    spy["fail_at"], spy["log"][:] = None, []
    bench = run(config(questions_file, out, methods="lookup,hf-lookup"), zoo)
    assert bench.measured == 7 and not bench.interrupted
    pairs = [(r["question_id"], r["method"]) for r in results(out)]
    assert len(pairs) == len(set(pairs)) == 9
    assert run(config(questions_file, out, methods="lookup,hf-lookup"), zoo).measured == 0


# ----------------------------------------------------------------------------- arithmetic
def record(qid, method, tokens, seconds, forwards=None, identical=True, category="c"):
    return {"question_id": qid, "category": category, "method": method, "new_tokens": tokens, "wall_s": seconds,
            "target_forwards": forwards, "identical": identical, "accept_histogram": None}


def test_speedup_and_tau_arithmetic_on_hand_made_timings():
    records = [
        record("a", "plain", 100, 10.0, 100), record("a", "fast", 100, 5.0, 40),  # 10 vs 20 tok/s
        record("b", "plain", 50, 10.0, 50), record("b", "fast", 50, 2.5, 10, identical=False),  # 5 vs 20 tok/s
        record("c", "fast", 10, 1.0, 5, identical=None, category="d"),  # no plain run: not paired
    ]
    table = summarize(records, ["plain", "fast"])
    plain, fast = table[OVERALL]
    assert plain.speedup == pytest.approx(1.0) and plain.tau == pytest.approx(1.0)
    assert plain.tokens_per_s == pytest.approx(7.5)
    assert fast.speedup == pytest.approx(20.0 / 7.5)  # mean tok/s 20 over the paired questions / 7.5
    assert fast.median_speedup == pytest.approx(3.0)  # median of 2x and 4x
    assert fast.tau == pytest.approx(160 / 55)
    assert fast.identical == pytest.approx(1 / 2) and fast.questions == 3
    only_d = table["d"]
    assert [row.method for row in only_d] == ["fast"] and only_d[0].speedup is None
    assert fast.decode_speedup is None and fast.prefill_share is None  # no prefill measured apart


def test_decode_speedup_leaves_out_the_shared_prefill():
    records = [record("a", "plain", 100, 12.0, 100), record("a", "fast", 100, 6.0, 40),
               record("b", "plain", 100, 12.0, 100), record("b", "fast", 100, 6.0, 40)]
    for r in records:
        r["prefill_s"] = 2.0  # plain: 100 tokens in 10 s after it, fast: in 4 s
    plain, fast = summarize(records, ["plain", "fast"])[OVERALL]
    assert fast.speedup == pytest.approx(2.0)
    assert fast.decode_speedup == pytest.approx(2.5) and plain.decode_speedup == pytest.approx(1.0)
    assert fast.prefill_share == pytest.approx(4 / 12) and plain.prefill_share == pytest.approx(4 / 24)
    records[0]["prefill_s"] = None  # a peer that does not measure it: no decode speedup for the pair
    assert summarize(records, ["plain", "fast"])[OVERALL][1].decode_speedup is None


# ----------------------------------------------------------------------------- bad input
def test_question_file_errors(tmp_path):
    with pytest.raises(SpecDecodeError, match="does not exist"):
        read_questions(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(QUESTIONS[0]) + "\n{not json\n")
    with pytest.raises(SpecDecodeError, match="line 2 is not valid JSON"):
        read_questions(bad)
    bad.write_text(json.dumps({"question_id": 1, "category": "x"}) + "\n")
    with pytest.raises(SpecDecodeError, match="line 1: the record lacks turns"):
        read_questions(bad)


def test_selection_errors(questions_file):
    questions = read_questions(questions_file)
    with pytest.raises(SpecDecodeError, match="unknown category poetry; this question file has: copy, chat"):
        select_questions(questions, ["poetry"])
    with pytest.raises(SpecDecodeError, match="--limit-per-category must be >= 1"):
        select_questions(questions, None, 0)
    assert [q.key for q in select_questions(questions, ["copy"], 1)] == ["1"]


@pytest.mark.parametrize("methods, message", [
    ("lookup,medusa", "unknown method 'medusa'; valid methods: plain, lookup, retrieval, model:NAME"),
    ("hf-assisted", "hf-assisted needs a model after the colon"),
    ("lookup,lookup", "listed twice"),
])
def test_method_errors(questions_file, tmp_path, zoo, methods, message):
    with pytest.raises(SpecDecodeError, match=message):
        run(config(questions_file, tmp_path / "out", methods=methods), zoo)
    assert not (tmp_path / "out").exists()  # nothing measured, nothing written


def test_out_folder_of_other_settings_is_refused_until_fresh(questions_file, tmp_path, zoo, spy):
    out = tmp_path / "out"
    run(config(questions_file, out), zoo)
    with pytest.raises(SpecDecodeError, match=r"other settings \(max_new_tokens: 10 there, 12 now\).*--fresh"):
        run(config(questions_file, out, max_new_tokens=12), zoo)
    assert len(results(out)) == 6  # untouched
    bench = run(config(questions_file, out, max_new_tokens=12, fresh=True), zoo)
    assert bench.measured == 6 and {len(r["token_ids"][0]) for r in results(out)} == {3}


def test_resuming_with_auto_drafter_weights_keeps_those_the_folder_was_measured_with(
        questions_file, tmp_path, zoo, spy, monkeypatch):
    """"auto" is a timing: re-timed on resume it may choose otherwise, which must not block the resume."""
    out = tmp_path / "out"
    monkeypatch.setattr(bench_runner, "draft_quantization", lambda device: "w8a8")
    run(config(questions_file, out, limit_per_category=1), zoo)
    assert len(results(out)) == 4
    monkeypatch.setattr(bench_runner, "draft_quantization", lambda device: None)
    bench = run(config(questions_file, out), zoo)  # resumes: the third question is pending
    assert bench.measured == 2 and len(results(out)) == 6
    assert json.loads((out / "run.json").read_text())["settings"]["drafter_quantize"] == "w8a8"
    run(config(questions_file, out, fresh=True), zoo)  # starting over measures again
    assert json.loads((out / "run.json").read_text())["settings"].get("drafter_quantize") is None


def test_spec_bench_development_subset_reads():
    if not SPEC_BENCH.exists():
        pytest.skip(f"the Spec-Bench development subset is not beside this checkout ({SPEC_BENCH})")
    questions = read_questions(SPEC_BENCH)
    assert len(questions) == 66
    two_each = select_questions(questions, None, 2)
    assert len(two_each) == 26 and sum(len(q.turns) == 2 for q in two_each) == 16


# ----------------------------------------------------------------------------- CLI
def test_cli_bench_runs_and_reports_bad_input(questions_file, tmp_path):
    folder = tmp_path / "model"
    model = tiny_model("llama", seed=0)
    model.generation_config.eos_token_id = 1
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    out = tmp_path / "out"
    args = ["bench", "--questions", str(questions_file), "--model", str(folder), "--out", str(out),
            "--methods", "lookup,hf-plain", "-n", "6", "--quiet"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "| lookup |" in result.stdout and "report.md" in result.stdout
    assert len(results(out)) == 9
    bad = CliRunner().invoke(app, [*args[:-1], "--categories", "poetry"])
    assert bad.exit_code == 1 and bad.stderr.startswith("error: unknown category poetry")
    assert "Traceback" not in bad.output


def test_llama_cpp_peer_runs_the_gguf_or_says_how_to_install(questions_file, tmp_path, zoo, monkeypatch):
    import sys
    import types

    from tiny import hf_greedy

    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF")
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # not installed
    with pytest.raises(SpecDecodeError, match="pip install llama-cpp-python"):
        run(config(questions_file, tmp_path / "a", methods="llama-cpp", model="tiny-target"), zoo)
    assert not (tmp_path / "a").exists()  # refused before anything was loaded or written

    target = zoo["tiny-target"]
    opened = []

    class FakeLookup:  # llama-cpp-python's prompt-lookup draft model
        pass

    class FakeLlama:  # llama.cpp's greedy decoding of the same model, as llama-cpp-python exposes it
        def __init__(self, model_path, **options):
            opened.append((model_path, options["n_threads"], type(options.get("draft_model")).__name__))

        def generate(self, tokens, **sampling):
            assert sampling["temp"] == 0.0 and sampling["top_k"] == 1
            yield from hf_greedy(target.model, list(tokens), 64)

    fake = types.ModuleType("llama_cpp")
    fake.Llama = FakeLlama
    speculative = types.ModuleType("llama_cpp.llama_speculative")
    speculative.LlamaPromptLookupDecoding = FakeLookup
    monkeypatch.setitem(sys.modules, "llama_cpp", fake)
    monkeypatch.setitem(sys.modules, "llama_cpp.llama_speculative", speculative)
    out = tmp_path / "b"
    run_benchmark(config(questions_file, out, methods="llama-cpp,llama-cpp-lookup", model=str(gguf)), target=target,
                  load=lambda spec, **_: zoo[spec])
    for method in ("llama-cpp", "llama-cpp-lookup"):
        rows = [r for r in results(out) if r["method"] == method]
        assert len(rows) == 3 and all(r["identical"] for r in rows)
    assert all(r["target_forwards"] is None for r in results(out) if r["method"] == "llama-cpp-lookup")  # not counted
    assert [(path, draft) for path, _, draft in opened] == [(str(gguf), "NoneType"), (str(gguf), "FakeLookup")]
    with pytest.raises(SpecDecodeError, match="neither a zoo model nor a .gguf"):
        run(config(questions_file, tmp_path / "c", methods="llama-cpp"), zoo)


def test_run_json_records_the_machine_and_every_commit_that_measured(tmp_path):
    import re

    from specdecode.bench.environment import source_commit
    from specdecode.bench.results import ResultsFolder
    from specdecode.runtime.machine import machine_key

    settings = {"model": "tiny", "machine": machine_key()}
    for commit in ("abc123", "def456", "def456"):  # a resume at another commit, then at the same one
        ResultsFolder.open(tmp_path / "out", settings, commit=commit)
    document = json.loads((tmp_path / "out" / "run.json").read_text())
    assert document["commits"] == ["abc123", "def456"] and "threads" in document["settings"]["machine"]
    assert source_commit() is None or re.fullmatch(r"[0-9a-f]{10}(\+changes)?", source_commit())


def test_drafter_counts_sum_per_member_and_leave_a_single_drafters_own_statistics_out():
    from specdecode.bench.metrics import add_drafter_counts

    reports = [{"kv": "snapkv", "kv_budget": 2048}, {"self": {"drafted": 3, "accepted": 2}},
               {"self": {"drafted": 1, "accepted": 1, "skipped_steps": 2}}, None]
    assert add_drafter_counts(reports) == {"self": {"drafted": 4, "accepted": 3, "skipped_steps": 2}}
    assert add_drafter_counts([{"kv": "snapkv"}]) is None
