"""Vision-language targets: a tiny random LLaVA built from a config (CLIP vision tower, projector, Llama)
with its processor; image prompts decode exactly as transformers' own generate, and speculatively exactly as
plain decoding. Images: matplotlib's sample photo and generated arrays."""

from __future__ import annotations

import pytest
import torch
from tiny import (IMAGE_TOKEN, assert_chat_messages_decode_as_transformers, assert_frequencies_match,
                  assert_trees_verify_exactly, hf_vlm_greedy, noise, tiny_llava, tiny_processor, tiny_tokenizer)
from transformers import LlavaForConditionalGeneration

import specdecode as sd
from specdecode import SpeculativeGenerator
from specdecode.drafters import LookupDrafter
from specdecode.errors import ModelLoadError, SpecDecodeError
from specdecode.multimodal import load_vlm
from specdecode.runtime.cpu.rowwise_attention import exact_fold_rows, fold_rows_of, use_rowwise_attention
from specdecode.runtime.grouped_attention import GROUPED

@pytest.mark.parametrize("count", [1, 2])
def test_image_prompts_decode_as_transformers_and_speculation_changes_nothing(photo, count):
    processor, model = tiny_processor(), tiny_llava()
    images = [photo, noise(1)][:count]
    reference = hf_vlm_greedy(model, processor, images, f"{IMAGE_TOKEN} " * count + "w5 w6 w7", 24)
    vlm = load_vlm(model, processor=processor, dtype="fp32")
    prompt = {"images": images, "prompt": "w5 w6 w7"}  # no chat template: the images' placeholders go first
    plain = SpeculativeGenerator(vlm).generate(prompt, max_new_tokens=24)
    assert plain.token_ids == reference
    assert plain.prompt_ids.count(96) == 17 * count  # each image expanded to its 17 tokens
    speculative = SpeculativeGenerator(vlm, LookupDrafter()).generate(prompt, max_new_tokens=24)
    assert speculative.token_ids == reference


@pytest.mark.parametrize("attention", ["sdpa", "rowwise"])
def test_draft_trees_over_an_image_prompt_verify_exactly(photo, attention):
    """The true continuation planted on one branch of random trees (siblings, wrong turns): tree masks and
    depth positions after the image's tokens; deep acceptance through the trees. Also with the row-wise
    attention of exact targets (tokens folded per call as calibrated here), in the language model only."""
    model = tiny_llava(seed=3)
    if attention == "rowwise":
        use_rowwise_attention(model, exact_fold_rows(model))
        assert fold_rows_of(model.config.text_config._attn_implementation) is not None
        assert model.config.vision_config._attn_implementation == "sdpa"  # the vision tower is not causal
    vlm = load_vlm(model, processor=tiny_processor(), dtype="fp32")
    prompt = {"images": [photo, noise(4)], "prompt": "w5 w6"}
    assert_trees_verify_exactly(vlm, prompt, vocab=97)


def text_twin(vlm_model: LlavaForConditionalGeneration):
    """A text-only LM with the VLM's own language model weights and the tokenizer without the image token."""
    from transformers import LlamaForCausalLM

    from specdecode.models.load import load_model

    text = LlamaForCausalLM(vlm_model.config.text_config)
    text.model.load_state_dict(vlm_model.model.language_model.state_dict())
    text.lm_head.load_state_dict(vlm_model.lm_head.state_dict())
    return load_model(text.eval(), tokenizer=tiny_tokenizer(), dtype="fp32")


def test_a_text_only_drafter_drafts_from_the_prompt_without_the_image(photo):
    """Its tokenizer lacks the image token the target's processor added: it drafts from the context with the
    image tokens left out, in the ids both share; output unchanged, and its drafts are accepted."""
    from specdecode.drafters import ModelDrafter

    model = tiny_llava(seed=5)
    vlm = load_vlm(model, processor=tiny_processor(), dtype="fp32")
    drafter = ModelDrafter(text_twin(model), k=3, quantize=None, dtype="fp32", draft_vocab=None)
    prompt = {"images": [photo], "prompt": "w5 w6 w7"}
    plain = SpeculativeGenerator(vlm).generate(prompt, max_new_tokens=24)
    out = SpeculativeGenerator(vlm, drafter, cost_model=None).generate(prompt, max_new_tokens=24)
    assert out.token_ids == plain.token_ids
    assert drafter.foreign_ids == {96} and 96 not in drafter.cached_ids
    assert sum(out.stats.accept_histogram[1:]) > 0


def test_a_drafter_whose_vocabulary_differs_otherwise_is_refused():
    from specdecode.drafters import ModelDrafter
    from specdecode.errors import IncompatibleDrafterError
    from tiny import tiny_model

    from specdecode.models.load import load_model

    vlm = load_vlm(tiny_llava(), processor=tiny_processor(), dtype="fp32")
    other = tiny_tokenizer(vocab=80)  # fewer words: not the target's ids plus added tokens
    drafter = ModelDrafter(load_model(tiny_model(vocab=80), tokenizer=other, dtype="fp32"), quantize=None, dtype="fp32")
    with pytest.raises(IncompatibleDrafterError, match="does not share"):
        SpeculativeGenerator(vlm, drafter)


def test_the_image_changes_the_caption(photo):
    vlm = load_vlm(tiny_llava(), processor=tiny_processor(), dtype="fp32")
    gen = SpeculativeGenerator(vlm)
    captions = {tuple(gen.generate({"images": image, "prompt": "w5"}, max_new_tokens=8).token_ids)
                for image in (photo, noise(1), noise(2))}
    assert len(captions) > 1  # the pixels reach the model


def test_chat_messages_with_image_parts(photo):
    assert_chat_messages_decode_as_transformers(tiny_llava(), tiny_processor(), photo)


def test_a_bf16_vlm_is_exact_where_this_cpu_allows_it_in_its_language_model_only(photo):
    """Where the CPU's bf16 products keep every row's bits, the language model attends row-wise (the vision
    tower keeps SDPA) and lookup decodes as plain; elsewhere nothing is switched (fp32 is the exact choice)."""
    model = tiny_llava().to(torch.bfloat16)
    vlm = load_vlm(model, processor=tiny_processor())
    assert model.config.vision_config._attn_implementation == "sdpa"
    text_attention = model.config.text_config._attn_implementation
    if not vlm.exact_steps:
        assert text_attention == GROUPED
        return
    assert fold_rows_of(text_attention) is not None
    prompt = {"images": [photo], "prompt": "w5 w6"}
    plain = SpeculativeGenerator(vlm).generate(prompt, max_new_tokens=20)
    assert SpeculativeGenerator(vlm, LookupDrafter()).generate(prompt, max_new_tokens=20).token_ids == plain.token_ids


def test_a_text_prompt_on_a_vlm_and_images_on_a_text_model(photo):
    vlm = load_vlm(tiny_llava(), processor=tiny_processor(), dtype="fp32")
    assert len(SpeculativeGenerator(vlm).generate("w5 w6", max_new_tokens=4).token_ids) == 4
    from tiny import loaded, tiny_model

    with pytest.raises(SpecDecodeError, match="takes no images; load a vision-language model"):
        SpeculativeGenerator(loaded(tiny_model())).generate({"images": [photo], "prompt": "w5"}, max_new_tokens=4)


@pytest.mark.parametrize("prompt, message", [
    ({"images": [], "prompt": "w5"}, "no images given"),
    ({"images": ["/no/such.png"], "prompt": "w5"}, "no such image file"),
    ({"images": [noise(1)], "prompt": "<image> <image> w5"}, "2 image placeholders"),
    ({"pictures": [noise(1)]}, "an image prompt is"),
    ({"images": [noise(1)], "prompt": "w5 <image>"}, "must not end with an image"),
    ([{"role": "user", "content": [{"type": "image"}]}], "needs its image"),
])
def test_bad_image_prompts_get_one_clear_error(prompt, message):
    vlm = load_vlm(tiny_llava(), processor=tiny_processor(), dtype="fp32")
    with pytest.raises(SpecDecodeError, match=message):
        SpeculativeGenerator(vlm).generate(prompt, max_new_tokens=4)


def test_missing_pieces_are_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="needs its processor"):
        load_vlm(tiny_llava())
    with pytest.raises(ModelLoadError, match="not a vision-language processor"):
        load_vlm(tiny_llava(), processor=tiny_tokenizer())
    with pytest.raises(ModelLoadError, match="could not load a vision-language model from the folder"):
        (tmp_path / "config.json").write_text("{}")
        load_vlm(tmp_path)


def test_a_saved_folder_loads_with_its_processor(tmp_path, photo):
    model, processor = tiny_llava(), tiny_processor()
    processor.tokenizer.chat_template = None  # the tiny tokenizer's template knows no image parts
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    vlm = sd.load_vlm(tmp_path, dtype="fp32")  # the package's name for it
    prompt = {"images": [photo], "prompt": "w5 w6"}
    assert SpeculativeGenerator(vlm).generate(prompt, max_new_tokens=8).token_ids == \
        hf_vlm_greedy(model, processor, [photo], f"{IMAGE_TOKEN} w5 w6", 8)


def test_sampled_first_token_over_an_image_prompt_follows_the_target_distribution(photo):
    """Temperature 1 with a drafter that carries its probabilities (the text-only twin): the first token's
    frequencies converge to the VLM's own softmax after the image prompt."""
    from specdecode.drafters import ModelDrafter

    model, processor = tiny_llava(seed=5), tiny_processor()
    vlm = load_vlm(model, processor=processor, dtype="fp32")
    drafter = ModelDrafter(text_twin(model), k=2, quantize=None, dtype="fp32", draft_vocab=None)
    gen = SpeculativeGenerator(vlm, drafter, cost_model=None)
    inputs = processor(images=[photo], text=[f"{IMAGE_TOKEN} w5 w6"], return_tensors="pt")
    with torch.no_grad():
        target = model(**inputs).logits[0, -1].float().softmax(-1)  # [vocab]
    counts = torch.zeros_like(target)
    prompt = vlm.prompt_encoder({"images": [photo], "prompt": "w5 w6"})  # encoded once: the image is the same
    for seed in range(2000):
        counts[gen.generate(prompt, max_new_tokens=2, temperature=1.0, seed=seed).token_ids[0]] += 1
    assert_frequencies_match(counts, target)
