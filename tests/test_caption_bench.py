"""The captioning suite (images every install has) and `specdecode bench` over it with a VLM target: image
questions through every method, tokens identical to plain decoding; and the stand-in VLM over real-shaped
language weights (a tiny Qwen2 saved to a folder here) decodes text exactly as its language model."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from tiny import tiny_qwen2_vl, tiny_qwen2_vl_processor, tiny_tokenizer

from specdecode import SpeculativeGenerator
from specdecode.bench.caption_suite import CATEGORY, IMAGES, build
from specdecode.bench.questions import read_questions
from specdecode.bench.runner import BenchConfig, run_benchmark
from specdecode.drafters import LookupDrafter
from specdecode.errors import ModelLoadError
from specdecode.multimodal import load_image, load_vlm


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    out = tmp_path_factory.mktemp("captioning") / "question.jsonl"
    return out, build(out)


def test_the_suite_holds_real_images_with_their_hashes(suite):
    out, records = suite
    assert len(records) >= len(IMAGES) - 1  # Debian's logo only where the system has it
    for record, question in zip(records, read_questions(out), strict=True):
        assert question.category == CATEGORY and len(question.images) == 1
        data = question.images[0].read_bytes()
        assert hashlib.sha256(data).hexdigest() == record["image_sha256"]
        assert list(load_image(question.images[0]).size) == record["image_size"]
    assert build(out) == records  # rebuilt alike


def test_bench_over_image_questions_keeps_every_method_identical(suite, tmp_path):
    out, _ = suite
    vlm = load_vlm(tiny_qwen2_vl(seed=4), processor=tiny_qwen2_vl_processor(), dtype="fp32")
    config = BenchConfig(questions=out, model="tiny-vlm", out=tmp_path / "results", methods="lookup,self:streaming:own,hf-plain",
                         limit_per_category=2, max_new_tokens=12, cost_model=False)
    bench = run_benchmark(config, target=vlm)
    assert bench.measured == 2 * 4
    records = [json.loads(line) for line in (tmp_path / "results" / "results.jsonl").read_text().splitlines()]
    assert {r["method"] for r in records} == {"plain", "lookup", "self:streaming:own", "hf-plain"}
    assert all(r["identical"] for r in records), records  # transformers' own generate included
    assert all(r["new_tokens"] > 0 for r in records)


def test_image_questions_need_a_vision_language_target(suite, tmp_path):
    from tiny import tiny_model

    from specdecode.errors import SpecDecodeError
    from specdecode.models.load import LoadedModel

    out, _ = suite
    model = tiny_model()
    text_model = LoadedModel(model=model, tokenizer=tiny_tokenizer(), name="tiny", dtype=model.dtype, device=model.device)
    config = BenchConfig(questions=out, model="tiny", out=tmp_path / "results", limit_per_category=1, max_new_tokens=4)
    with pytest.raises(SpecDecodeError, match="shows images; benchmark a vision-language model"):
        run_benchmark(config, target=text_model)


@pytest.fixture(scope="module")
def language_model(tmp_path_factory):
    """A tiny random Qwen2 LM with the vision tokens in its tokenizer, saved to a folder: (model, folder)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from specdecode.multimodal.stand_in import VISION_TOKENS

    folder = tmp_path_factory.mktemp("lm")
    tokenizer = tiny_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": list(VISION_TOKENS)})
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=101, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                         initializer_range=0.3, tie_word_embeddings=False)).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model, folder


def test_the_stand_in_decodes_text_as_its_language_model_and_images_exactly(language_model, suite):
    """A Qwen2 LM under a random vision tower: a text prompt gives the LM's own tokens (M-RoPE over text is
    its rotary embedding); an image prompt decodes speculatively as plainly."""
    language, folder = language_model
    vlm = load_vlm(f"stand-in:{folder}", dtype="fp32")
    assert vlm.model.config.model_type == "qwen2_vl" and vlm.name == f"stand-in:{folder}"
    prompt = [5, 6, 7, 8, 9]
    with torch.no_grad():
        own = language.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False, eos_token_id=None)
    assert SpeculativeGenerator(vlm).generate(prompt, max_new_tokens=16).token_ids == own[0, 5:].tolist()
    image = read_questions(suite[0])[0].images[0]
    question = {"images": [image], "prompt": "w5 w6"}
    plain = SpeculativeGenerator(vlm).generate(question, max_new_tokens=16)
    assert plain.prompt_ids.count(98) >= 4  # the image's tokens
    assert SpeculativeGenerator(vlm, LookupDrafter()).generate(question, max_new_tokens=16).token_ids == plain.token_ids
    again = load_vlm(f"stand-in:{folder}", dtype="fp32")  # the same seeded tower on every load
    assert SpeculativeGenerator(again).generate(question, max_new_tokens=16).token_ids == plain.token_ids


def test_a_drafter_name_of_a_vlm_loads_a_vision_language_drafter(language_model, suite):
    """`model:NAME` where NAME is a VLM (here the target's own stand-in) drafts seeing the images, through the
    caption pipeline: every full draft is accepted."""
    from specdecode.pipelines import CaptionPipeline

    _, folder = language_model
    captions = CaptionPipeline(load_vlm(f"stand-in:{folder}", dtype="fp32"), drafter=f"model:stand-in:{folder}",
                               prompt="w5 w6", max_new_tokens=16, progress=False, cost_model=None)
    drafter = captions.generator.drafter
    assert drafter.draft.prompt_encoder is not None  # a VLM drafter
    image = read_questions(suite[0])[0].images[0]
    speculative, plain = captions(image), captions(image, speculative=False)
    assert speculative.token_ids == plain.token_ids
    assert sum(speculative.stats.accept_histogram[2:]) > 0


def test_a_stand_in_needs_a_qwen2_language_model(tmp_path):
    from tiny import tiny_model

    tiny_model("llama").save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="takes a Qwen2-family language model"):
        load_vlm(f"stand-in:{tmp_path}", dtype="fp32")


def test_auto_merges_lookup_with_a_text_drafter_of_the_vlms_vocabulary(language_model, tmp_path):
    from specdecode.pipelines.caption import auto_drafter

    _, folder = language_model
    vlm = load_vlm(f"stand-in:{folder}", dtype="fp32")
    other = tmp_path / "other"
    tiny_tokenizer(vocab=80).save_pretrained(other)  # another vocabulary
    assert auto_drafter(vlm, candidates=(str(tmp_path / "missing"), str(other), str(folder))) == f"lookup+model:{folder}"
    assert auto_drafter(vlm, candidates=(str(other),)) == "lookup"
