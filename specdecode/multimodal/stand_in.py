"""A stand-in vision-language model with real language weights, for timing the image path where no VLM
weights can be had (offline machines).

`stand_in_vlm(language_model)` is a Qwen2-VL-shaped model whose language model is a Qwen2-family causal LM
(its weights, tokenizer and vocabulary: e.g. the zoo's qwen2.5-coder-1.5b-instruct, whose tokenizer already
holds Qwen-VL's vision tokens) under a seeded random vision tower and merger. Its captions mean nothing,
but the whole path runs: pixels through a vision tower, an image's tokens at M-RoPE grid positions, then
text steps whose acceptance is that of real language weights. A text prompt decodes exactly as the
language model alone (M-RoPE with equal sections is its rotary embedding). `load_vlm("stand-in:NAME")`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ModelLoadError

STAND_IN_PREFIX = "stand-in:"
VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
CHAT_TEMPLATE = (  # Qwen2-VL's chat format: a system turn, then each image as its vision tokens
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% elif part['type'] == 'text' %}"
    "{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@dataclass(frozen=True)
class VisionTower:
    """The random vision tower's shape (Qwen2-VL's: patches of 14 pixels, merged 2x2 into one token)."""

    depth: int = 4
    width: int = 512
    heads: int = 8
    image_tokens: int = 256  # the most tokens an image becomes (its pixels are capped to fit)


def stand_in_vlm(language_model: str, *, seed: int = 0, tower: VisionTower = VisionTower(),
                 dtype: torch.dtype = torch.float32):
    """(model, processor): the stand-in over `language_model` (a zoo name or a model folder)."""
    from transformers import (AutoModelForCausalLM, AutoTokenizer, Qwen2VLConfig, Qwen2VLForConditionalGeneration,
                              Qwen2VLProcessor)
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLRotaryEmbedding

    from ..models import zoo
    from .processors import image_only

    source = str(zoo.prepare(language_model)) if language_model in zoo.ZOO else language_model
    try:
        language = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(source)
    except Exception as e:  # noqa: BLE001 - one clear message instead of a transformers traceback
        raise ModelLoadError(f"the stand-in's language model {language_model!r} did not load "
                             f"({type(e).__name__}); pass a zoo name or a Qwen2-family model folder.") from e
    if language.config.model_type != "qwen2":
        raise ModelLoadError(f"a stand-in VLM takes a Qwen2-family language model (Qwen-VL's own); "
                             f"{language_model!r} is {language.config.model_type!r}.")
    token_ids = tokenizer.convert_tokens_to_ids(list(VISION_TOKENS))
    if tokenizer.unk_token_id in token_ids or None in token_ids:
        raise ModelLoadError(f"{language_model!r}'s tokenizer lacks Qwen-VL's vision tokens {VISION_TOKENS}.")
    text = {key: value for key, value in language.config.to_dict().items()
            if key not in ("model_type", "architectures", "rope_scaling", "rope_parameters", "transformers_version")}
    half = language.config.hidden_size // language.config.num_attention_heads // 2  # rotary pairs per head
    text["rope_scaling"] = {"type": "mrope", "mrope_section": [half // 4, half * 3 // 8, half - half // 4 - half * 3 // 8],
                            "rope_theta": language.config.rope_parameters["rope_theta"]}
    start, end, image, video = token_ids
    config = Qwen2VLConfig(
        text_config=text, image_token_id=image, video_token_id=video, vision_start_token_id=start,
        vision_end_token_id=end, tie_word_embeddings=language.config.tie_word_embeddings,
        vision_config=dict(depth=tower.depth, embed_dim=tower.width, num_heads=tower.heads, mlp_ratio=4,
                           hidden_size=language.config.hidden_size, patch_size=14, spatial_merge_size=2,
                           temporal_patch_size=2))
    with torch.device("meta"):
        model = Qwen2VLForConditionalGeneration(config)
    model.model.language_model.load_state_dict(language.model.state_dict(), assign=True)
    model.lm_head.load_state_dict(language.lm_head.state_dict(), assign=True)
    model.model.language_model.rotary_emb = Qwen2VLRotaryEmbedding(config=model.config.text_config)
    with torch.random.fork_rng():  # the caller's random state is left as it was
        torch.manual_seed(seed)
        model.model.visual = type(model.model.visual)._from_config(config.vision_config).to(dtype)
    model.generation_config = language.generation_config
    pixels = tower.image_tokens * 28 * 28
    images = Qwen2VLImageProcessorPil(min_pixels=min(pixels, 4 * 28 * 28), max_pixels=pixels, patch_size=14,
                                      merge_size=2)
    processor = image_only(Qwen2VLProcessor)(image_processor=images, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)
    return model.eval(), processor
