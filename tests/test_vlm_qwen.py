"""Qwen2-VL and Qwen2.5-VL targets (M-RoPE): tiny random models built from configs with an image-only
processor (no torchvision). An image's tokens sit at their grid's 3-D positions, so every token after the
prompt sits at its index plus the prompt's (negative) shift on all three sections: plain decoding matches
transformers' own generate, and chains, trees, a text-only drafter and the self-drafter change nothing."""

from __future__ import annotations

import pytest
import torch
from tiny import (OracleDrafter, assert_frequencies_match, assert_trees_verify_exactly, hf_vlm_greedy, noise,
                  tiny_qwen2_vl, tiny_qwen2_vl_processor, tiny_tokenizer)

from specdecode import SpeculativeGenerator
from specdecode.drafters import LookupDrafter, ModelDrafter, SelfDrafter
from specdecode.multimodal import load_vlm
from specdecode.runtime.cpu.rowwise_attention import exact_fold_rows, use_rowwise_attention

IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
@pytest.mark.parametrize("count", [1, 2])
def test_image_prompts_decode_as_transformers_and_speculation_changes_nothing(photo, family, count):
    model, processor = tiny_qwen2_vl(seed=4, family=family), tiny_qwen2_vl_processor()
    images = [photo, noise(1, 60, 90)][:count]
    text = f"{IMAGE} " * count + "w5 w6 w7"
    reference = hf_vlm_greedy(model, processor, images, text, 24)
    vlm = load_vlm(model, processor=processor, dtype="fp32")
    prompt = {"images": images, "prompt": text}
    encoded = vlm.prompt_encoder(prompt)
    assert encoded.positions.shape == (3, len(encoded.token_ids))
    assert encoded.position_shift < 0  # the image's tokens take fewer positions than tokens
    assert SpeculativeGenerator(vlm).generate(prompt, max_new_tokens=24).token_ids == reference
    assert SpeculativeGenerator(vlm, LookupDrafter()).generate(prompt, max_new_tokens=24).token_ids == reference


@pytest.mark.parametrize("attention", ["sdpa", "rowwise"])
def test_draft_trees_over_an_m_rope_prompt_verify_exactly(photo, attention):
    """The true continuation planted on one branch of random trees: depth positions after the shift, on all
    three sections; deep acceptance. Also with the row-wise attention of exact targets."""
    model = tiny_qwen2_vl(seed=2)
    if attention == "rowwise":
        use_rowwise_attention(model, exact_fold_rows(model))
    vlm = load_vlm(model, processor=tiny_qwen2_vl_processor(), dtype="fp32")
    prompt = {"images": [photo, noise(4, 100, 50)], "prompt": "w5 w6"}  # the chat template places the images
    assert_trees_verify_exactly(vlm, prompt, vocab=101)
    reference = hf_vlm_greedy(model, vlm.processor, [photo, noise(4, 100, 50)], f"w2 {IMAGE}{IMAGE}w5 w6 w3 w4", 30)
    assert SpeculativeGenerator(vlm).generate(prompt, max_new_tokens=30).token_ids == reference


def test_static_steps_after_an_m_rope_prompt_decode_as_transformers(photo):
    """The "graphs" backend's steps after an image prompt (shifted positions; chains and trees, deep acceptance)."""
    model, processor = tiny_qwen2_vl(seed=4), tiny_qwen2_vl_processor()
    text = f"{IMAGE} w5 w6 w7"
    reference = hf_vlm_greedy(model, processor, [photo], text, 24)
    vlm = load_vlm(model, processor=processor, dtype="fp32")
    prompt = {"images": [photo], "prompt": text}
    plain = SpeculativeGenerator(vlm, attention="graphs").generate(prompt, max_new_tokens=24)
    assert plain.token_ids == reference
    oracle = OracleDrafter(plain.prompt_ids, plain.token_ids, seed=1, vocab=101)
    for drafter in (LookupDrafter(tree_width=3), oracle):
        gen = SpeculativeGenerator(vlm, drafter, attention="graphs", cost_model=None)
        out = gen.generate(prompt, max_new_tokens=24)
        assert out.token_ids == reference
    assert sum(out.stats.accept_histogram[2:]) > 0 and gen.attention.steps_of(vlm.model).sets  # static steps ran


def text_twin(vlm_model):
    """A text-only Qwen2 with the VLM's language model weights and the tokenizer without the vision tokens."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from specdecode.models.load import load_model

    text = Qwen2ForCausalLM(Qwen2Config(**{key: value for key, value in vlm_model.config.text_config.to_dict().items()
                                           if key not in ("model_type", "rope_scaling", "rope_parameters")}))
    text.model.load_state_dict(vlm_model.model.language_model.state_dict())
    text.lm_head.load_state_dict(vlm_model.lm_head.state_dict())
    return load_model(text.eval(), tokenizer=tiny_tokenizer(), dtype="fp32")


def test_a_text_only_drafter_and_the_self_drafter_over_an_m_rope_prompt(photo):
    """A text LM drafts without the vision tokens; the VLM drafts for itself from a streaming window of its own
    cache (gathered entries keep their rotary positions; its own steps take the prompt's shift)."""
    model = tiny_qwen2_vl(seed=5)
    vlm = load_vlm(model, processor=tiny_qwen2_vl_processor(), dtype="fp32")
    prompt = {"images": [photo], "prompt": "w5 w6 w7"}
    plain = SpeculativeGenerator(vlm).generate(prompt, max_new_tokens=24)
    assert len(plain.token_ids) == 24
    text_drafter = ModelDrafter(text_twin(model), k=3, quantize=None, dtype="fp32", draft_vocab=None)
    out = SpeculativeGenerator(vlm, text_drafter, cost_model=None).generate(prompt, max_new_tokens=24)
    assert out.token_ids == plain.token_ids
    assert text_drafter.foreign_ids == {96, 97, 98, 99}
    self_drafter = SelfDrafter(vlm, kv="streaming", kv_budget=20, weights=None, k=3, draft_vocab=None)
    out = SpeculativeGenerator(vlm, self_drafter, cost_model=None).generate(prompt, max_new_tokens=24)
    assert out.token_ids == plain.token_ids
    assert self_drafter.cache.position_shift == vlm.prompt_encoder(prompt).position_shift < 0
    assert sum(out.stats.accept_histogram[2:]) > 0  # the model drafting for itself: long runs accepted


def test_a_wrong_shift_would_be_caught(photo):
    """The shift matters: decoding after an M-RoPE prompt with 1-D positions instead changes the tokens (so the
    tests above, which match transformers, check the positions)."""
    from specdecode.prompts import EncodedPrompt

    model = tiny_qwen2_vl(seed=7)
    vlm = load_vlm(model, processor=tiny_qwen2_vl_processor(), dtype="fp32")
    encoded = vlm.prompt_encoder({"images": [photo], "prompt": "w5 w6"})
    gen = SpeculativeGenerator(vlm)
    right = gen.generate(encoded, max_new_tokens=16).token_ids
    assert len(right) == 16
    assert gen.generate(EncodedPrompt(encoded.token_ids, encoded.model_inputs), max_new_tokens=16).token_ids != right


def test_a_vlm_drafter_sees_the_images_at_their_positions(photo):
    """A copy of the target as a vision-language drafter: it prefills the image prompt with the images at their
    M-RoPE positions and drafts at the shifted ones, so it agrees with the target on every token (a drafter
    that saw no image, or saw it at other positions, would not)."""
    import copy

    from specdecode.drafters import MixtureDrafter

    model = tiny_qwen2_vl(seed=2)
    processor = tiny_qwen2_vl_processor()
    vlm = load_vlm(model, processor=processor, dtype="fp32")
    twin = load_vlm(copy.deepcopy(model), processor=processor, dtype="fp32")
    prompt = {"images": [photo, noise(4, 100, 50)], "prompt": "w5 w6"}
    plain = SpeculativeGenerator(vlm).generate(prompt, max_new_tokens=24)
    drafter = ModelDrafter(twin, k=4, quantize=None, dtype="fp32", draft_vocab=None, confidence=0.0)
    out = SpeculativeGenerator(vlm, drafter, cost_model=None).generate(prompt, max_new_tokens=24)
    assert out.token_ids == plain.token_ids
    assert out.stats.accept_histogram[-1] == out.stats.steps - 1  # every full draft accepted (the last step is cut)
    assert drafter.foreign_ids == frozenset()  # it sees the image's tokens
    mixed = MixtureDrafter([LookupDrafter(), ModelDrafter(twin, k=4, quantize=None, dtype="fp32", draft_vocab=None)])
    assert SpeculativeGenerator(vlm, mixed, cost_model=None).generate(prompt, max_new_tokens=24).token_ids == \
        plain.token_ids
    text = SpeculativeGenerator(vlm, drafter, cost_model=None).generate("w5 w6 w7", max_new_tokens=8)  # no images now
    assert text.token_ids == SpeculativeGenerator(vlm).generate("w5 w6 w7", max_new_tokens=8).token_ids


def test_a_vlm_drafter_with_other_image_processing_is_refused():
    from specdecode.errors import IncompatibleDrafterError
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    vlm = load_vlm(tiny_qwen2_vl(seed=2), processor=tiny_qwen2_vl_processor(), dtype="fp32")
    other = tiny_qwen2_vl_processor()
    other.image_processor = Qwen2VLImageProcessorPil(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 64, patch_size=14,
                                                     merge_size=2)
    drafter = ModelDrafter(load_vlm(tiny_qwen2_vl(seed=3), processor=other, dtype="fp32"), quantize=None, dtype="fp32")
    with pytest.raises(IncompatibleDrafterError, match="processes images differently"):
        SpeculativeGenerator(vlm, drafter)


def test_the_self_drafter_prunes_the_image_by_the_attention_it_receives(photo):
    """kv='snapkv' over an image prompt: the window's queries (the text after the last image, recomputed at
    its shifted positions) rank the prompt's entries, the image's among them; a budget below the prompt keeps
    the best per KV head. Output unchanged."""
    model = tiny_qwen2_vl(seed=2)
    vlm = load_vlm(model, processor=tiny_qwen2_vl_processor(), dtype="fp32")
    question = " ".join(f"w{5 + i % 40}" for i in range(48))  # a long question after two images
    prompt = {"images": [photo, noise(4, 100, 50)], "prompt": question}
    plain = SpeculativeGenerator(vlm).generate(prompt, max_new_tokens=20)
    drafter = SelfDrafter(vlm, kv="snapkv", kv_budget=40, weights=None, k=3, draft_vocab=None)
    out = SpeculativeGenerator(vlm, drafter, cost_model=None).generate(prompt, max_new_tokens=20)
    assert out.token_ids == plain.token_ids
    assert drafter.prompt_length > 40 and drafter.selected == 40  # entries per KV head kept of the prompt's


def test_sampled_tokens_after_an_m_rope_prompt_follow_the_target_distribution(photo):
    """Temperature 1 with a text-only drafter carrying its probabilities (it sees no image, so its tokens are
    often rejected and recovered): the SECOND token, drafted and verified at the prompt's shifted positions,
    follows the VLM's own marginal, computed by transformers' forward (its own M-RoPE positions) after each
    first token. First tokens that are vision tokens (transformers would take them for another image) or the end
    of sequence (no second token) are left out on both sides."""
    model, processor = tiny_qwen2_vl(seed=5), tiny_qwen2_vl_processor()
    vlm = load_vlm(model, processor=processor, dtype="fp32")
    drafter = ModelDrafter(text_twin(model), k=2, quantize=None, dtype="fp32", draft_vocab=None, confidence=0.0)
    gen = SpeculativeGenerator(vlm, drafter, cost_model=None)
    vision = sorted(drafter.foreign_ids)  # the vision tokens, which the text drafter never sees
    inputs = processor(images=[photo], text=[f"w2 {IMAGE}w5 w6 w3 w4"], return_tensors="pt")
    with torch.no_grad():
        first = model(**inputs).logits[0, -1].softmax(-1)  # [vocab]
        first[vision + [1]] = 0  # 1: the end of sequence
        second = torch.zeros_like(first)  # [vocab]: P(second token), first tokens outside `vision`
        for token in first.nonzero()[:, 0].tolist():
            ids = torch.cat([inputs["input_ids"], torch.tensor([[token]])], dim=1)  # [1, n + 1]
            text_type = torch.zeros(1, 1, dtype=inputs["mm_token_type_ids"].dtype)  # the new token is text
            logits = model(**{**inputs, "input_ids": ids, "attention_mask": torch.ones_like(ids),
                              "mm_token_type_ids": torch.cat([inputs["mm_token_type_ids"], text_type], dim=1)}
                           ).logits[0, -1]
            second += first[token] * logits.softmax(-1)
    target = second / second.sum()
    counts = torch.zeros_like(target)
    prompt = vlm.prompt_encoder({"images": [photo], "prompt": "w5 w6"})  # encoded once: the image is the same
    for seed in range(1000):  # enough: decoding at unshifted positions gives TV ~0.47, four times this bound
        tokens = gen.generate(prompt, max_new_tokens=2, temperature=1.0, seed=seed).token_ids
        if len(tokens) == 2 and tokens[0] not in vision:
            counts[tokens[1]] += 1
    assert vision == [96, 97, 98, 99] and counts.sum() > 750
    assert_frequencies_match(counts, target)
