"""`specdecode index build|info` and `specdecode ask` end to end on a tiny model folder and a small
store (the real offline embedder), including one clear `error:` line for bad input."""

from __future__ import annotations

import random

import pytest
from tiny import invoke_cli, tiny_model_folder



invoke = invoke_cli


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_folder(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("docs")
    rng = random.Random(0)
    for i in range(4):
        (folder / f"doc{i}.txt").write_text(" ".join(f"w{rng.randrange(2, 96)}" for _ in range(80)))
    (folder / "blob.bin").write_bytes(b"\x00\x01")
    return folder


@pytest.fixture(scope="module")
def store(docs):
    out = docs.parent / "store"
    result = invoke("index", "build", str(docs), "--out", str(out), "--chunk-tokens", "48", "--quiet")
    assert result.exit_code == 0, result.output
    assert "indexed" in result.stdout and "from 4 files" in result.stdout
    assert "blob.bin: binary, not text" in result.stdout
    return out


def test_index_info_shows_the_manifest(store):
    result = invoke("index", "info", str(store))
    assert result.exit_code == 0
    assert "embedder: all-MiniLM-L6-v2" in result.stdout and "dimension: 384" in result.stdout
    assert "index file: index-" in result.stdout


def test_ask_compare_prints_answer_sources_and_exactness(store, model_dir):
    result = invoke("ask", "--store", str(store), "--model", model_dir, "--k", "2", "-n", "20", "--compare",
                    "w5 w6 w7")
    assert result.exit_code == 0, result.output
    assert "sources:" in result.stdout and "[1] " in result.stdout and "[2] " in result.stdout
    assert "identical token ids: yes" in result.stdout
    assert "drafter" not in result.stdout.split("sources:")[0]  # the answer comes first


@pytest.mark.parametrize(("args", "message"), [
    (["ask", "--store", "STORE", "--model", "MODEL", "--k", "0", "w5"], "--k must be >= 1"),
    (["ask", "--store", "STORE", "--model", "MODEL", "  "], "the question is empty"),
    (["ask", "--store", "/nonexistent", "--model", "MODEL", "w5"], "is not a datastore folder"),
    (["index", "build", "/nonexistent", "--out", "OUT"], "does not exist"),
    (["index", "build", "DOCS", "--out", "OUT", "--index", "ivf", "--nlist", "8", "--quiet"],
     "needs at least 312 passages"),
    (["index", "info", "/nonexistent"], "is not a datastore folder"),
])
def test_bad_input_is_one_clear_error(store, docs, model_dir, tmp_path, args, message):
    replace = {"STORE": str(store), "MODEL": model_dir, "OUT": str(tmp_path / "out"), "DOCS": str(docs)}
    result = invoke(*[replace.get(a, a) for a in args])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and message in result.stderr, result.stderr
