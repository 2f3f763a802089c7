"""Idefics3 and SmolVLM targets: tiny random models built from configs (a vision tower, pixel shuffle, a Llama)
with their PIL processors (SmolVLM's image-only, no torchvision). An image is <fake_token_around_image>
<global-img>, 16 <image> tokens, <fake_token_around_image>, at plain 1-D positions: image prompts decode
exactly as transformers' own generate, and speculatively exactly as plain decoding."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from tiny import (assert_chat_messages_decode_as_transformers, assert_frequencies_match, assert_trees_verify_exactly,
                  hf_vlm_greedy, noise, tiny_idefics3, tiny_idefics3_processor)

from specdecode import SpeculativeGenerator
from specdecode.drafters import LookupDrafter
from specdecode.errors import ModelLoadError, SpecDecodeError
from specdecode.multimodal import load_vlm
from specdecode.multimodal.processors import SmolVLMImageOnly
from specdecode.runtime.cpu.rowwise_attention import exact_fold_rows, fold_rows_of, use_rowwise_attention

FAMILIES = ["idefics3", "smolvlm"]
IMAGE_ID, FAKE_ID = 97, 96  # <image>, <fake_token_around_image>
# The tiny models' seeds here (3, 6) decode these prompts to the full length without an end of sequence.


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("count", [1, 2])
def test_image_prompts_decode_as_transformers_and_speculation_changes_nothing(photo, family, count):
    model, processor = tiny_idefics3(seed=3, family=family), tiny_idefics3_processor(family)
    images = [photo, noise(1)][:count]
    reference = hf_vlm_greedy(model, processor, images, "<image> " * count + "w5 w6 w7", 24)
    vlm = load_vlm(model, processor=processor, dtype="fp32")
    prompt = {"images": images, "prompt": "w5 w6 w7"}  # no chat template: the images' placeholders go first
    plain = SpeculativeGenerator(vlm).generate(prompt, max_new_tokens=24)
    assert plain.token_ids == reference
    assert plain.prompt_ids.count(IMAGE_ID) == 16 * count and plain.prompt_ids.count(FAKE_ID) == 2 * count
    assert SpeculativeGenerator(vlm, LookupDrafter()).generate(prompt, max_new_tokens=24).token_ids == reference


@pytest.mark.parametrize("family, attention", [("idefics3", "sdpa"), ("smolvlm", "sdpa"), ("idefics3", "rowwise")])
def test_draft_trees_over_a_two_image_prompt_verify_exactly(photo, family, attention):
    """The true continuation planted on one branch of random trees (siblings, wrong turns) after two images'
    tokens; deep acceptance. Also with the row-wise attention of exact targets, in the language model only."""
    model = tiny_idefics3(seed=3, family=family)
    if attention == "rowwise":
        use_rowwise_attention(model, exact_fold_rows(model))
        assert fold_rows_of(model.config.text_config._attn_implementation) is not None
        assert model.config.vision_config._attn_implementation == "sdpa"  # the vision tower is not causal
    vlm = load_vlm(model, processor=tiny_idefics3_processor(family), dtype="fp32")
    prompt = {"images": [photo, noise(4)], "prompt": "w5 w6"}
    assert_trees_verify_exactly(vlm, prompt, vocab=100)


def test_the_image_changes_the_caption(photo):
    gen = SpeculativeGenerator(load_vlm(tiny_idefics3(), processor=tiny_idefics3_processor(), dtype="fp32"))
    captions = {tuple(gen.generate({"images": image, "prompt": "w5"}, max_new_tokens=8).token_ids)
                for image in (photo, noise(1), noise(2))}
    assert len(captions) > 1  # the pixels reach the model


@pytest.mark.parametrize("family", FAMILIES)
def test_chat_messages_with_image_parts(photo, family):
    """The processor's chat template (SmolVLM's image-only processor applies it without the video defaults)."""
    assert_chat_messages_decode_as_transformers(tiny_idefics3(seed=6, family=family),
                                                tiny_idefics3_processor(family), photo)


def test_an_image_last_ends_on_a_text_token_so_it_decodes_too(photo):
    """Only the image's own tokens take its features: an image ends on <fake_token_around_image>, a text token,
    so a prompt may end with an image (the last prompt token goes through a text-only step). Placeholders that
    do not match the images are still refused."""
    model, processor = tiny_idefics3(seed=6), tiny_idefics3_processor()
    vlm = load_vlm(model, processor=processor, dtype="fp32")
    out = SpeculativeGenerator(vlm, LookupDrafter()).generate({"images": [photo], "prompt": "w5 <image>"},
                                                              max_new_tokens=12)
    assert out.prompt_ids[-1] == FAKE_ID
    assert out.token_ids == hf_vlm_greedy(model, processor, [photo], "w5 <image>", 12)
    with pytest.raises(SpecDecodeError, match="2 image placeholders"):
        SpeculativeGenerator(vlm).generate({"images": [photo], "prompt": "<image> <image> w5"}, max_new_tokens=4)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_saved_folder_loads_with_its_processor(tmp_path, photo, family):
    """Idefics3: AutoProcessor (its PIL image processor needs no torchvision). SmolVLM: AutoProcessor wants a
    video processor, so the image-only processor loads from the same files (image_seq_len included)."""
    model, processor = tiny_idefics3(seed=6, family=family), tiny_idefics3_processor(family)
    processor.tokenizer.chat_template = None  # the tiny tokenizer's template knows no image parts
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    vlm = load_vlm(tmp_path, dtype="fp32")
    assert type(vlm.processor).__name__ == {"idefics3": "Idefics3Processor", "smolvlm": "SmolVLMImageOnly"}[family]
    assert vlm.processor.image_seq_len == 16
    prompt = {"images": [photo], "prompt": "w5 w6"}
    assert SpeculativeGenerator(vlm).generate(prompt, max_new_tokens=8).token_ids == \
        hf_vlm_greedy(model, processor, [photo], "<image> w5 w6", 8)


def test_a_smolvlm_folder_as_on_the_hub_loads_without_torchvision(tmp_path, photo):
    """A SmolVLM2 folder as published: the image processor's preprocessor_config.json, a video processor's config
    (whose class needs torchvision) and processor_config.json with image_seq_len. Without torchvision the
    image-only processor loads it; with torchvision (and num2words) transformers' own processor does."""
    model, processor = tiny_idefics3(seed=3, family="smolvlm"), tiny_idefics3_processor("smolvlm")
    processor.tokenizer.chat_template = None
    model.save_pretrained(tmp_path)
    processor.tokenizer.save_pretrained(tmp_path)
    processor.image_processor.save_pretrained(tmp_path)
    video = {"video_processor_type": "SmolVLMVideoProcessor"}
    (tmp_path / "video_preprocessor_config.json").write_text(json.dumps(video))
    settings = {"image_seq_len": 16, "processor_class": "SmolVLMProcessor"}
    (tmp_path / "processor_config.json").write_text(json.dumps(settings))
    vlm = load_vlm(tmp_path, dtype="fp32")
    assert vlm.processor.image_seq_len == 16
    prompt = {"images": [photo, noise(3)], "prompt": "w7"}
    assert SpeculativeGenerator(vlm, LookupDrafter()).generate(prompt, max_new_tokens=8).token_ids == \
        hf_vlm_greedy(model, processor, [photo, noise(3)], "<image> <image> w7", 8)


def test_the_image_only_processor_takes_no_video_processor_and_saves_as_smolvlms():
    processor = tiny_idefics3_processor("smolvlm")
    assert SmolVLMImageOnly.get_attributes() == ["image_processor", "tokenizer"]
    assert not hasattr(processor, "video_processor")
    assert processor.to_dict()["processor_class"] == "SmolVLMProcessor"


def test_an_unsupported_family_is_refused_with_the_supported_ones_named():
    class Stub(torch.nn.Module):
        config = SimpleNamespace(model_type="paligemma")

    with pytest.raises(ModelLoadError, match="'paligemma' vision-language models are not supported yet; supported: ") \
            as refused:
        load_vlm(Stub(), processor=tiny_idefics3_processor())
    assert all(f"{family} = " in str(refused.value) for family in ("llava", "idefics3", "smolvlm"))


def test_sampled_first_token_over_an_image_prompt_follows_the_target_distribution(photo):
    """Temperature 1 with a text-only drafter of other weights carrying its probabilities (mostly rejected, so
    recovered tokens are sampled from the residual): the first token's frequencies converge to the VLM's own
    softmax after the image prompt, as transformers computes it."""
    from tiny import tiny_model, tiny_tokenizer

    from specdecode.drafters import ModelDrafter
    from specdecode.models.load import load_model

    model, processor = tiny_idefics3(seed=3), tiny_idefics3_processor()
    vlm = load_vlm(model, processor=processor, dtype="fp32")
    text = load_model(tiny_model("llama", seed=9), tokenizer=tiny_tokenizer(), dtype="fp32")
    drafter = ModelDrafter(text, k=2, quantize=None, dtype="fp32", draft_vocab=None, confidence=0.0)
    gen = SpeculativeGenerator(vlm, drafter, cost_model=None)
    inputs = processor(images=[photo], text=["<image> w5 w6"], return_tensors="pt")
    with torch.no_grad():
        target = model(**inputs).logits[0, -1].softmax(-1)  # [vocab]
    prompt = vlm.prompt_encoder({"images": [photo], "prompt": "w5 w6"})  # encoded once: the image is the same
    assert list(prompt.token_ids) == inputs["input_ids"][0].tolist()
    counts = torch.zeros_like(target)
    for seed in range(1000):
        counts[gen.generate(prompt, max_new_tokens=2, temperature=1.0, seed=seed).token_ids[0]] += 1
    assert drafter.foreign_ids
    assert_frequencies_match(counts, target)
