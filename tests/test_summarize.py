"""SummarizePipeline and `specdecode summarize` on a tiny random model: reading text, Markdown and HTML
files, one clear error per bad input, paragraph-boundary splitting, map-reduce over parts whose every
stage is token for token plain decoding, streaming, and the CLI's --compare."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest
from tiny import RandomDrafter, invoke_cli, tiny_model, tiny_model_folder, tiny_tokenizer

from specdecode.errors import SpecDecodeError
from specdecode.models.load import LoadedModel
from specdecode.pipelines import SummarizePipeline, html_to_text, read_source, split_text
from specdecode.pipelines.summarize import auto_drafter
from specdecode.runtime.calibrate import Calibration

LIMIT = 100  # max_prompt_tokens of the module's pipeline: the long document needs three parts


def words(count: int, rng: random.Random) -> str:
    """Words of the tiny tokenizer (one token each), so the tiny model reads the text token for token."""
    return " ".join(f"w{rng.randrange(5, 96)}" for _ in range(count))


def paragraphs(count: int, size: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    return "\n\n".join(words(size, rng) for _ in range(count))


@pytest.fixture(scope="module")
def target() -> LoadedModel:
    model = tiny_model("llama", seed=0)
    model.generation_config.eos_token_id = 1
    # one calibration for the module (in its folder), shared by every pipeline built on this target
    return LoadedModel(model=model, tokenizer=tiny_tokenizer(), name="tiny", dtype=model.dtype, device=model.device,
                       calibration=Calibration.for_model(model))


@pytest.fixture(scope="module")
def pipeline(target) -> SummarizePipeline:
    # no cost model: the drafter drafts at every step, so the exactness checks below verify real drafts
    return SummarizePipeline(target, drafter="lookup", max_new_tokens=20, max_prompt_tokens=LIMIT, progress=False,
                             cost_model=None)


@pytest.fixture(scope="module")
def long_document() -> str:
    return paragraphs(6, 30)  # 180 tokens: two paragraphs to a part


@pytest.fixture(scope="module")
def summary(pipeline, long_document):
    return pipeline(long_document)


def test_reads_text_markdown_and_html(tmp_path):
    (tmp_path / "notes.txt").write_text("w5 w6\n\nw7\n")
    (tmp_path / "README").write_text("w8 w9")  # text by its content, whatever its name
    (tmp_path / "guide.md").write_text("# w10\n\n- w11\n- w12\n")
    page = ("<!DOCTYPE html><html><head><title>w20</title><style>p { color: red }</style>"
            "<script>var x = '<p>w66</p>';</script></head><body><h1>w21</h1><p>w22\n   w23 &amp; w24<br>w25</p>"
            "<div>w26</div><script>w67()</script></body></html>")
    (tmp_path / "page.html").write_text(page)
    (tmp_path / "saved.txt").write_text("\n  " + page)  # HTML by its first tag
    assert read_source(tmp_path / "notes.txt") == ("w5 w6\n\nw7", [str(tmp_path / "notes.txt")])
    assert read_source(str(tmp_path / "README"))[0] == "w8 w9"  # a string naming a file is read
    assert read_source(tmp_path / "guide.md")[0] == "# w10\n\n- w11\n- w12"
    stripped = "w20\n\nw21\n\nw22 w23 & w24\n\nw25\n\nw26"
    assert html_to_text(page) == stripped
    assert read_source(tmp_path / "page.html")[0] == stripped
    assert read_source(str(tmp_path / "saved.txt"))[0] == stripped
    text, names = read_source([tmp_path / "notes.txt", tmp_path / "page.html"])
    assert text == f"# notes.txt\n\nw5 w6\n\nw7\n\n# page.html\n\n{stripped}"
    assert names == [str(tmp_path / "notes.txt"), str(tmp_path / "page.html")]
    assert read_source("w30 w31\n\nw32") == ("w30 w31\n\nw32", [])  # text, not a path


@pytest.mark.parametrize(("make", "message"), [
    (lambda d: _write(d / "blob.bin", b"w5\x00\x01\x02"), r"cannot summarize .*blob\.bin: binary, not text \(NUL "
                                                            r"bytes\); pass a text, Markdown or HTML file"),
    (lambda d: _write(d / "latin.txt", "caf\xe9".encode("latin-1")), r"latin\.txt: binary or not UTF-8 text"),
    (lambda d: _write(d / "empty.md", b" \n\n"), r"empty\.md is empty; pass a file with some text"),
    (lambda d: _write(d / "blank.html", b"<html><script>w5</script></html>"), r"blank\.html has no text once"),
    (lambda d: d / "missing.txt", r"missing\.txt does not exist"),
    (lambda d: str(d / "missing.md"), r"missing\.md looks like a file name but does not exist"),
    (lambda d: d, r"is a folder; pass the files in it"),
    (lambda d: "   \n", r"the text to summarize is empty"),
    (lambda d: [], r"the list of documents is empty"),
    (lambda d: 42, r"cannot summarize a int; pass text, a file path"),
])
def test_bad_input_is_one_clear_error(pipeline, tmp_path, make, message):
    source = make(tmp_path)
    with pytest.raises(SpecDecodeError, match=message):
        read_source(source)
    with pytest.raises(SpecDecodeError, match=message):
        pipeline(source)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_bad_settings_are_refused(target):
    with pytest.raises(SpecDecodeError, match=r"needs both \{document\} and \{instruction\}"):
        SummarizePipeline(target, drafter=None, template="{document}")
    with pytest.raises(SpecDecodeError, match="a placeholder other than"):
        SummarizePipeline(target, drafter=None, template="{document} {instruction} {style}")
    with pytest.raises(SpecDecodeError, match="instruction is empty"):
        SummarizePipeline(target, drafter=None, instruction=" ")
    with pytest.raises(SpecDecodeError, match="max_prompt_tokens must be a whole number >= 1"):
        SummarizePipeline(target, drafter=None, max_prompt_tokens=0)


def test_prompt_is_a_chat_message_or_text_ending_in_summary(target):
    chat = SummarizePipeline(target, drafter=None, instruction="In one line.")
    assert chat.prompt(" w5 w6 \n") == [{"role": "user", "content": "w5 w6\n\nIn one line."}]
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = None
    base = LoadedModel(model=target.model, tokenizer=tokenizer, name="tiny-base", dtype=target.dtype,
                       device=target.device, calibration=target.calibration)
    plain_text = SummarizePipeline(base, drafter=None, template="Text:\n{document}\n\nTask: {instruction}")
    assert plain_text.prompt("w5 w6", "Be brief.") == "Text:\nw5 w6\n\nTask: Be brief.\nSummary:"


def test_split_text_keeps_paragraphs_then_cuts_lines_then_words():
    rng = random.Random(1)
    first, second = words(10, rng), words(10, rng)
    lines = [words(12, rng) for _ in range(3)] + [words(30, rng)]  # the last line is longer than a part
    text = f"{first}\n\n{second}\n\n" + "\n".join(lines)

    def count(piece: str) -> int:
        return len(piece.split())

    parts = split_text(text, 25, count)
    assert parts[0] == f"{first}\n\n{second}"  # whole paragraphs while they fit
    assert parts[1] == f"{lines[0]}\n{lines[1]}"  # a long paragraph on its lines
    assert parts[2].startswith(lines[2] + "\n")  # the longest line on its words
    assert all(count(part) <= 25 for part in parts) and len(parts) == 5
    assert " ".join(parts).split() == text.split()  # every word once, in order
    halves = split_text("x" * 100, 30, len)  # a "word" longer than a part: halves
    assert "".join(halves) == "x" * 100 and all(len(h) <= 30 for h in halves)


def test_map_reduce_stages_equal_plain_decoding(pipeline, summary, long_document, target):
    assert summary.parts == 3
    assert [s.name for s in summary.stages] == ["part 1/3", "part 2/3", "part 3/3", "reduce"]
    assert all(s.prompt_tokens <= LIMIT and s.stats.new_tokens > 0 for s in summary.stages)
    assert (summary.text, summary.token_ids, summary.stats) == (summary.stages[-1].text,
                                                                summary.stages[-1].token_ids,
                                                                summary.stages[-1].stats)
    assert "summarized in 3 parts" in summary.notes[0] and f"more than the {LIMIT} allowed" in summary.notes[0]
    decode = target.tokenizer.decode
    first_prompt = decode(summary.stages[0].output.prompt_ids)
    assert long_document.split("\n\n")[0] in first_prompt and long_document.split("\n\n")[2] not in first_prompt
    reduce_prompt = decode(summary.stages[-1].output.prompt_ids)
    assert all(s.text.strip() in reduce_prompt for s in summary.stages[:-1])  # the part summaries, reduced
    plain = pipeline(long_document, speculative=False)
    assert [s.name for s in plain.stages] == [s.name for s in summary.stages]
    for ours, reference in zip(summary.stages, plain.stages):
        assert ours.token_ids == reference.token_ids and ours.text == reference.text
        assert reference.stats.drafted_tokens == 0


def test_map_reduce_stays_exact_under_garbage_drafts(target, summary, long_document):
    """Lookup finds few n-grams in a random model's output; drafts of random trees at every step check
    that every stage keeps the target's own tokens whatever is drafted."""
    garbage = SummarizePipeline(target, drafter=RandomDrafter(seed=0), max_new_tokens=20, max_prompt_tokens=LIMIT,
                                progress=False, cost_model=None)
    result = garbage(long_document)
    assert [s.token_ids for s in result.stages] == [s.token_ids for s in summary.stages]
    assert all(s.stats.drafted_tokens > 0 for s in result.stages)


def test_stream_yields_the_final_summary_with_a_progress_bar(pipeline, summary, long_document, capsys):
    capsys.readouterr()
    streamed = pipeline.stream(long_document, progress=True)
    pieces = []
    while True:
        try:
            pieces.append(next(streamed))
        except StopIteration as done:
            result = done.value
            break
    assert "".join(pieces) == summary.text and result.token_ids == summary.token_ids
    assert [s.token_ids for s in result.stages] == [s.token_ids for s in summary.stages]
    assert re.search(r"summarizing: 100%.*3/3", capsys.readouterr().err)


def test_a_document_that_fits_is_one_stage_without_a_bar(pipeline, capsys):
    capsys.readouterr()
    short = pipeline("w5 w6 w7 w8\n\nw9 w10", progress=True, instruction="Say it in one line.")
    assert short.parts == 1 and [s.name for s in short.stages] == ["summary"] and short.notes == ()
    asked = pipeline.prompt_tokens("w5 w6 w7 w8\n\nw9 w10", "Say it in one line.")
    assert short.stages[0].prompt_tokens == asked != pipeline.prompt_tokens("w5 w6 w7 w8\n\nw9 w10")
    assert capsys.readouterr().err == ""


def test_too_long_without_split_is_refused(pipeline, long_document):
    length = pipeline.prompt_tokens(long_document)
    with pytest.raises(SpecDecodeError, match=rf"prompt of {length} tokens, more than the {LIMIT} allowed by "
                                              rf"max_prompt_tokens \({LIMIT}\); summarize it in parts \(split=True"):
        pipeline(long_document, split=False)
    whole = SummarizePipeline(pipeline.target, drafter=None, max_new_tokens=20, split=False)
    with pytest.raises(SpecDecodeError, match=r"more than the 492 allowed by the 512 tokens of context minus "
                                              r"max_new_tokens \(20\)"):
        whole(paragraphs(20, 30))


def exact_length_pipeline(target, budget: int) -> SummarizePipeline:
    """Summaries of exactly max_new_tokens tokens (no end of sequence) and parts of `budget` document tokens."""
    probe = SummarizePipeline(target, drafter="lookup", max_new_tokens=20, progress=False)
    overhead = max(probe.prompt_tokens("", i) for i in (probe.instruction, probe.part_instruction))
    summarize = SummarizePipeline(target, drafter="lookup", max_new_tokens=20, max_prompt_tokens=overhead + budget,
                                  progress=False)
    summarize.generator.eos_ids = frozenset()
    return summarize


def test_summaries_that_do_not_fit_are_reduced_again(target):
    summarize = exact_length_pipeline(target, 50)  # one 40-token paragraph or two 20-token summaries to a part
    result = summarize(paragraphs(4, 40, seed=3))
    assert [s.name for s in result.stages] == ["part 1/4", "part 2/4", "part 3/4", "part 4/4", "round 2 part 1/2",
                                               "round 2 part 2/2", "reduce"]
    assert result.parts == 4 and "(round 2)" in result.notes[1]
    assert all(s.prompt_tokens <= summarize.max_prompt_tokens for s in result.stages)


def test_summaries_that_never_shrink_are_refused(target):
    summarize = exact_length_pipeline(target, 30)  # one summary to a part: the rounds would never end
    with pytest.raises(SpecDecodeError, match=r"the 3 part summaries .* do not shrink into fewer parts"):
        summarize(paragraphs(3, 25, seed=4))


# ----------------------------------------------------------------------------- the command line


invoke = invoke_cli


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_folder(tmp_path_factory.mktemp("tiny-llama"))


def test_cli_summarize_compare(model_dir, long_document, tmp_path):
    (tmp_path / "report.md").write_text(long_document)
    result = invoke("summarize", str(tmp_path / "report.md"), "--model", model_dir, "--drafter", "lookup", "-n", "16",
                    "--max-prompt-tokens", str(LIMIT), "--compare", "--quiet")
    assert result.exit_code == 0, result.output
    summary, _, rest = result.stdout.partition("\n\n[")
    assert summary.strip() and summary.split()[0].startswith("w")
    assert rest.startswith("3 parts + reduce: 4 stages,") and "tokens per target forward]" in rest
    assert "note: the document makes a prompt of" in rest
    assert "identical token ids: yes (all 4 stages)" in rest and "speedup: " in rest


def test_cli_summarize_compare_prefills_one_part_once(model_dir, tmp_path):
    """One part: the speculative run reuses the plain run's prefill, and the report says so."""
    (tmp_path / "note.txt").write_text("The tide came in. The tide went out. The tide came in again at noon.\n")
    result = invoke("summarize", str(tmp_path / "note.txt"), "--model", model_dir, "--drafter", "lookup", "-n", "12",
                    "--compare", "--quiet")
    assert result.exit_code == 0, result.output
    reused = next(line for line in result.stdout.splitlines() if line.startswith("prompt tokens reused"))
    plain_reused, speculative_reused = (int(cell) for cell in reused.split()[-2:])
    assert plain_reused == 0 and speculative_reused > 0
    assert "speedup: " in result.stdout and "x decoding (tokens/s after the prefill)" in result.stdout
    assert f"the speculative run reused {speculative_reused} prompt tokens' prefill" in result.stdout
    assert "identical token ids: yes (all 1 stages)" in result.stdout


def test_cli_bad_input_is_one_clear_error(model_dir, long_document, tmp_path):
    (tmp_path / "blob.pdf").write_bytes(b"%PDF-1.7\x00\x01")
    (tmp_path / "report.md").write_text(long_document)
    for args, message in [
        ([str(tmp_path / "blob.pdf")], "blob.pdf: binary, not text"),
        ([str(tmp_path / "nothing.txt")], "nothing.txt does not exist"),
        ([str(tmp_path / "report.md"), "-n", "0"], "--max-new-tokens must be >= 1"),
        ([str(tmp_path / "report.md"), "--no-split", "--max-prompt-tokens", "50"], "split=True; on the command line"),
    ]:
        result = invoke("summarize", *args, "--model", model_dir, "--drafter", "lookup")
        assert result.exit_code == 1, result.output
        assert result.stderr.startswith("error: ") and message in result.stderr, result.stderr


def test_auto_drafter_is_lookup_plus_self(target, long_document):
    from specdecode.drafters import MixtureDrafter

    assert auto_drafter(target) == "lookup+self"  # no small model of this vocabulary on this machine
    auto = SummarizePipeline(target, max_new_tokens=20, max_prompt_tokens=LIMIT, progress=False, cost_model=None)
    assert isinstance(auto.generator.drafter, MixtureDrafter)
    assert [m.name for m in auto.generator.drafter.members][0] == "lookup"
    spec, plain = auto(long_document), auto(long_document, speculative=False)
    assert [s.token_ids for s in spec.stages] == [s.token_ids for s in plain.stages]


def test_auto_drafter_is_a_small_model_of_the_vocabulary_where_one_is_here(target, tmp_path):
    target.tokenizer.save_pretrained(tmp_path / "same")
    missing = str(tmp_path / "missing")
    assert auto_drafter(target, candidates=(missing, str(tmp_path / "same"))) == f"model:{tmp_path / 'same'}"
    assert auto_drafter(target, candidates=(missing,)) == "lookup+self"


def test_a_long_prefill_shows_its_progress(target, long_document, capsys):
    pipeline = SummarizePipeline(target, drafter="lookup", max_new_tokens=5, progress=True, cost_model=None)
    pipeline.generator.prefill_chunk = 64  # the document's prompt takes several chunks
    summary = pipeline(long_document)
    assert summary.parts == 1
    assert "reading" in capsys.readouterr().err
    assert summary.token_ids == pipeline(long_document, speculative=False, progress=False).token_ids
