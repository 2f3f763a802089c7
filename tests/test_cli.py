"""`specdecode generate` end to end on a tiny model saved to a folder: output modes, exactness
reports, and one clear `error:` line (exit 1, no traceback) for each bad input; `specdecode models`
listing the zoo and refusing an unknown name."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from tiny import tiny_model, tiny_tokenizer
from typer.testing import CliRunner

from specdecode.cli.main import app
from specdecode.drafters.registry import DrafterName
from specdecode.errors import SpecDecodeError

PROMPT = "w5 w6 w7 w5 w6 w7 w5"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama")
    model = tiny_model("llama", seed=0)
    model.generation_config.eos_token_id = 1  # "<eos>" in the tiny tokenizer
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return str(folder)


def generate(*args: str, input: str | None = None):
    result = CliRunner().invoke(app, ["generate", *args], input=input)
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def ok(*args: str, input: str | None = None):
    result = generate(*args, input=input)
    assert result.exit_code == 0, result.output
    return result


# ----------------------------------------------------------------------------- output modes
def test_plain_generation_streams_text_and_prints_stats(model_dir):
    streamed = ok("--model", model_dir, "--max-new-tokens", "12", PROMPT)
    printed = ok("--model", model_dir, "--max-new-tokens", "12", "--no-stream", PROMPT)
    plain = ok("--model", model_dir, "--drafter", "none", "--max-new-tokens", "12", "--no-stream", PROMPT)
    assert streamed.stdout == printed.stdout == plain.stdout
    assert printed.stdout.strip()
    assert "tokens/s" in printed.stderr and "tau" in printed.stderr and "stop:" in printed.stderr
    assert "drafter none" in plain.stderr


def test_stop_string_and_stdin_prompt(model_dir):
    full = ok("--model", model_dir, "-n", "12", "--no-stream", PROMPT).stdout.split()
    stop = full[3]
    cut = ok("--model", model_dir, "-n", "12", "--no-stream", "--stop", stop, "-", input=PROMPT + "\n")
    assert cut.stdout.split() == full[: full.index(stop)]
    assert "stop: stop_string" in cut.stderr


def test_lookup_compare_reports_identical_output(model_dir):
    result = ok("--model", model_dir, "--drafter", "lookup", "--compare", "-n", "24", PROMPT)
    assert "identical token ids: yes" in result.stdout
    for label in ("wall s", "tokens/s", "tau", "speedup:", "accepted per step"):
        assert label in result.stdout


def test_model_drafter_compare_reports_identical_output(model_dir):
    result = ok("--model", model_dir, "--drafter", f"model:{model_dir}", "--k", "3", "--compare", "-n", "16",
                "--no-cost-model", PROMPT)  # the cost model would rightly not use a drafter as slow as the target
    assert "identical token ids: yes" in result.stdout
    assert "3:" in result.stdout  # a drafter equal to the target gets all k=3 draft tokens accepted


def test_static_steps_from_the_command_line_keep_the_output(model_dir):
    result = ok("--model", model_dir, "--drafter", f"model:{model_dir}", "--attention", "graphs", "--compare", "-n",
                "16", "--no-cost-model", PROMPT)
    assert "identical token ids: yes" in result.stdout


def test_json_output_parses(model_dir):
    single = json.loads(ok("--model", model_dir, "-n", "8", "--json", PROMPT).stdout)
    assert set(single) >= {"text", "token_ids", "stop_reason", "stats"}
    assert single["stats"]["new_tokens"] == len(single["token_ids"]) <= 8
    both = json.loads(ok("--model", model_dir, "--tree-width", "2", "-n", "8", "--json", "--compare", PROMPT).stdout)
    assert both["identical"] is True and both["divergence"] is None
    assert both["plain"]["token_ids"] == both["speculative"]["token_ids"]
    assert both["text"] == both["speculative"]["text"] and both["speedup"] > 0


def test_raw_skips_the_chat_template(model_dir):
    chat = json.loads(ok("--model", model_dir, "-n", "2", "--json", "w5 w6").stdout)
    raw = json.loads(ok("--model", model_dir, "-n", "2", "--json", "--raw", "w5 w6").stdout)
    assert raw["prompt_tokens"] == 2
    assert chat["prompt_tokens"] == 5  # "w2 w5 w6 w3 w4" from the tiny chat template


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["   "], "the prompt is empty"),
        (["--max-new-tokens", "0", PROMPT], "--max-new-tokens must be >= 1"),
        (["--temperature", "-1", PROMPT], "temperature must be >= 0"),
        (["--drafter", "foo", PROMPT], "use none, lookup, retrieval, model:NAME"),
        (["--drafter", "model:", PROMPT], "needs a model after the colon"),
        (["--drafter", "none", "--compare", PROMPT], "--compare compares plain decoding with a drafter"),
        (["--k", "0", PROMPT], "--k must be >= 1"),
        (["--dtype", "int3", PROMPT], "unknown dtype"),
        (["--attention", "graphs:5", PROMPT], "--attention 'graphs:5': the width must be one of"),
        (["--attention", "fast", PROMPT], "--attention 'fast' is unknown; available:"),
    ],
)
def test_bad_input_is_one_clear_error(model_dir, args, message):
    result = generate("--model", model_dir, *args)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and message in result.stderr, result.stderr
    assert result.stdout == ""


def test_unknown_zoo_name_is_one_clear_error():
    result = generate("--model", "qwen2.5-coder-1.5b-instuct", PROMPT)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and "did you mean the zoo model" in result.stderr


def test_drafter_spec_parsing():
    assert DrafterName.parse("lookup") == DrafterName("lookup")
    assert DrafterName.parse("model:some/folder") == DrafterName("model", "some/folder")
    assert DrafterName.parse("model:some/folder:4096") == DrafterName("model", "some/folder", 4096)
    assert DrafterName.parse("model:some/folder:all") == DrafterName("model", "some/folder", None)
    assert [str(DrafterName.parse(f"model:x{w}")) for w in ("", ":2048", ":512", ":all")] == \
        ["model:x", "model:x", "model:x:512", "model:x:all"]
    with pytest.raises(SpecDecodeError, match="window .* must be more than 32"):
        DrafterName.parse("model:x:16")
    with pytest.raises(SpecDecodeError, match="needs a model after the colon"):
        DrafterName.parse("model")
    with pytest.raises(SpecDecodeError, match="none, lookup, retrieval, model:NAME"):
        DrafterName.parse("medusa")
    with pytest.raises(SpecDecodeError, match="takes no model"):
        DrafterName.parse("lookup:x")


def test_help_does_not_import_torch():
    code = "import sys, specdecode.cli.main; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_profile_prints_the_calibration_and_a_forward_cost_table(model_dir):
    result = CliRunner().invoke(app, ["profile", "--model", model_dir, "--dtype", "bf16", "--sizes", "1,2,4",
                                      "--context", "8", "--rounds", "1"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "machine: " in out and "threads" in out and "exact steps: " in out and "calibration: " in out
    rows = [line for line in out.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [row.split("|")[1].strip() for row in rows] == ["1", "2", "4"]
    assert rows[0].split("|")[3].strip() == "1.00"  # each size against one token
    bad = CliRunner().invoke(app, ["profile", "--model", model_dir, "--sizes", "2,four"])
    assert bad.exit_code == 1 and "--sizes must be whole numbers" in bad.output
    graphs = CliRunner().invoke(app, ["profile", "--model", model_dir, "--dtype", "fp32", "--sizes", "1,2",
                                      "--context", "8", "--rounds", "1", "--attention", "graphs"])
    assert graphs.exit_code == 0 and "graphs, static steps: eager" in graphs.stdout, graphs.output


def test_cli_pull_unknown_model_prints_message_and_exits_1():
    result = CliRunner().invoke(app, ["models", "pull", "no-such-model"])
    assert result.exit_code == 1
    assert "error: unknown zoo model 'no-such-model'" in result.stderr
    assert "smollm2-135m-instruct" in result.stderr
    assert "Traceback" not in result.output


def test_main_entry_point_prints_message_without_traceback():
    done = subprocess.run([sys.executable, "-m", "specdecode.cli.main", "models", "pull", "no-such-model"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.startswith("error: unknown zoo model 'no-such-model'")
    assert "Traceback" not in done.stderr + done.stdout


def test_cli_models_list_shows_every_zoo_model(tmp_path, monkeypatch):
    home = tmp_path / "home"  # a private zoo cache
    monkeypatch.setenv("SPECDECODE_HOME", str(home))
    result = CliRunner().invoke(app, ["models", "list"])
    assert result.exit_code == 0, result.output
    for name in ("qwen2.5-coder-1.5b-instruct", "qwen2.5-coder-0.5b-instruct", "smollm2-135m-instruct"):
        assert name in result.stdout
    assert str(home) in result.stdout
