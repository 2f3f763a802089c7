"""Vision-language targets: a VLM with its processor, and image prompts turned into model inputs.

`load_vlm(spec)` gives the same LoadedModel as `load_model`, with `.processor` and a prompt encoder, so
the engine takes `{"images": [...], "prompt": "..."}` or chat messages with image parts. The prompt's
forward sees the images (pixel values go into the prefill); every later step is text-only, so drafting,
verification and the KV cache work as for a text model, and an exact bf16 target stays exact (its language
model attends row-wise, its vision tower keeps SDPA).

Supported families: `SUPPORTED`. Qwen-VL's M-RoPE places an image's tokens at their grid's 3-D positions,
so the prompt's positions come from the model's own `get_rope_index` (EncodedPrompt.positions) and every
later token sits at its index plus the prompt's shift on all three sections (tree tokens at depth
positions); the others use plain 1-D positions.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from collections.abc import Callable
from typing import Any

import torch

from ..errors import ModelLoadError, SpecDecodeError
from ..drafters.registry import default_load_draft
from ..models.load import LoadedModel, draft_quantization, load_model, resolve_device, resolve_dtype
from ..prompts import EncodedPrompt
from ..runtime.cpu.quantize import FBGEMM_MODES
from .images import MAX_PIXELS, load_images
from .processors import load_processor
from .stand_in import STAND_IN_PREFIX, stand_in_vlm

SUPPORTED = {"llava": "LLaVA (llava-hf style: a CLIP or SigLIP vision tower, a projector, a causal LM)",
             "qwen2_vl": "Qwen2-VL (M-RoPE)", "qwen2_5_vl": "Qwen2.5-VL (M-RoPE)",
             "idefics3": "Idefics3 (a SigLIP vision tower, pixel shuffle, a Llama)",
             "smolvlm": "SmolVLM and SmolVLM2 (images; Idefics3's layout)"}
M_ROPE = ("qwen2_vl", "qwen2_5_vl")  # families whose prompt positions come from the model's get_rope_index
DEFAULT_PROMPT = "Describe this image."


def load_vlm(spec: Any, *, processor: Any = None, dtype: str | torch.dtype = "auto",
             device: str | torch.device = "auto", quantize: str | None = None,
             max_pixels: int = MAX_PIXELS) -> LoadedModel:
    """Load a vision-language model and its processor: a local folder or hub id (transformers'
    image-text-to-text models), your own model instance with `processor=`, or "stand-in:NAME" (a Qwen2-VL
    shape over NAME's language weights and a random vision tower, for timings: multimodal/stand_in.py).
    `dtype`, `device`, `quantize` as in `load_model` (a quantization covers the language model and the
    vision tower alike). Images larger than `max_pixels` are refused (multimodal/images.py)."""
    if isinstance(spec, LoadedModel) and spec.prompt_encoder is not None:
        return spec
    if isinstance(spec, torch.nn.Module):
        model = spec
        if processor is None:
            raise ModelLoadError(f"a model instance ({type(model).__name__}) needs its processor: "
                                 "load_vlm(model, processor=processor).")
    elif isinstance(spec, str) and spec.startswith(STAND_IN_PREFIX):
        model, processor = stand_in_vlm(spec.removeprefix(STAND_IN_PREFIX),
                                        dtype=resolve_dtype(dtype, resolve_device(device)))
    else:
        model, processor = _from_pretrained(spec, processor, dtype, device)
    check_family(model.config)
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is None or not hasattr(processor, "image_processor"):
        raise ModelLoadError(f"{type(processor).__name__} is not a vision-language processor (it needs a tokenizer "
                             "and an image processor); pass the processor that belongs to this model.")
    loaded = load_model(model, tokenizer=tokenizer, dtype=dtype, device=device, quantize=quantize)
    rope_index = model.model.get_rope_index if model.config.model_type in M_ROPE else None
    return dataclasses.replace(loaded, processor=processor, name=spec if isinstance(spec, str) else loaded.name,
                               prompt_encoder=ImagePrompts(processor, max_pixels, rope_index))


def is_vlm_spec(spec: Any) -> bool:
    """Whether `spec` names a vision-language model load_vlm takes: stand-in:NAME, or a folder whose
    config.json (or a hub id whose config) is of a supported family."""
    from transformers import AutoConfig

    if not isinstance(spec, (str, Path)):
        return False
    if str(spec).startswith(STAND_IN_PREFIX):
        return True
    path = Path(spec).expanduser()
    if not path.is_dir() and ("/" not in str(spec) or str(spec).startswith((".", "/", "~"))):
        return False  # a zoo name or a missing folder: a text model's spec
    try:
        return AutoConfig.from_pretrained(str(path) if path.is_dir() else str(spec)).model_type in SUPPORTED
    except Exception:  # noqa: BLE001 - not loadable as a config here: let load_model say why
        return False


def load_drafter_model(spec: Any, target: LoadedModel, dtype: str = "fast-decode",
                       quantize: str | None = "auto") -> LoadedModel:
    """A drafter's model for `target`: a vision-language model of its family where the target is one and
    `spec` names one (it drafts seeing the images; in its draft weights, `quantize`), else a text model
    (drafters.registry.default_load_draft, in `dtype`)."""
    if target.prompt_encoder is None or not is_vlm_spec(spec):
        return default_load_draft(spec, target, dtype, quantize)
    return load_vlm_drafter(spec, target, quantize)


def load_vlm_drafter(spec: Any, target: LoadedModel, quantize: str | None = "auto") -> LoadedModel:
    """The vision-language model `spec` as a drafter for `target`, on its device, in draft weights (`quantize`)."""
    weights = draft_quantization(target.device) if quantize == "auto" else quantize
    dtype = "fp32" if weights in FBGEMM_MODES else "auto"  # w8a8 computes in fp32
    return load_vlm(spec, dtype=dtype, device=target.device, quantize=weights)


def check_family(config) -> None:
    """Refuse, with the supported families named, a model whose image prompts the engine cannot run exactly."""
    if config.model_type not in SUPPORTED:
        raise ModelLoadError(f"{config.model_type!r} vision-language models are not supported yet; supported: "
                             + "; ".join(f"{key} = {family}" for key, family in SUPPORTED.items()) + ".")


def _from_pretrained(spec: Any, processor: Any, dtype, device):
    from transformers import AutoConfig, AutoModelForImageTextToText

    if not isinstance(spec, (str, Path)) or not str(spec).strip():
        raise ModelLoadError(f"cannot load a vision-language model from {spec!r}: pass a model folder, a hub id, "
                             "or a transformers model instance with processor=.")
    path = Path(spec).expanduser()
    source = str(path) if path.exists() else str(spec)
    try:
        config = AutoConfig.from_pretrained(source)
        check_family(config)
        target_device = resolve_device(device)
        model = AutoModelForImageTextToText.from_pretrained(source, dtype=resolve_dtype(dtype, target_device),
                                                            attn_implementation="sdpa").to(target_device)
        processor = processor if processor is not None else load_processor(source, config.model_type)
    except ModelLoadError:
        raise
    except Exception as e:  # noqa: BLE001 - one clear message instead of a transformers traceback
        where = "the folder" if path.exists() else "the hub id (needs internet)"
        raise ModelLoadError(f"could not load a vision-language model from {where} {source}: "
                             f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}. "
                             "Check config.json, the weights and the processor files.") from e
    return model, processor


class ImagePrompts:
    """Turns an image prompt into the model's inputs with its processor: `{"images": [...], "prompt": text or
    chat messages}` (the images go first in the user's turn unless the text already holds the processor's
    image placeholders), or chat messages whose parts include {"type": "image", "image": ...}.
    rope_index: an M-RoPE model's get_rope_index, which gives the prompt's [3, 1, n] positions."""

    def __init__(self, processor: Any, max_pixels: int = MAX_PIXELS, rope_index: Callable | None = None):
        self.processor = processor
        self.max_pixels = max_pixels
        self.rope_index = rope_index
        self.image_token = getattr(processor, "image_token", None) or "<image>"

    def __call__(self, prompt: Any) -> EncodedPrompt:
        images, text = self._parts(prompt)
        pictures = load_images(images, max_pixels=self.max_pixels)
        placeholders = text.count(self.image_token)
        if placeholders != len(pictures):
            raise SpecDecodeError(f"the prompt holds {placeholders} image placeholders ({self.image_token!r}) for "
                                  f"{len(pictures)} images; give one per image, or none to put the images first.")
        batch = self.processor(images=pictures, text=[text], return_tensors="pt")
        token_ids = batch["input_ids"][0].tolist()  # the image placeholders expanded to the image's tokens
        image_id = self.processor.tokenizer.convert_tokens_to_ids(self.image_token)
        if token_ids and token_ids[-1] == image_id:
            raise SpecDecodeError("an image prompt must not end with an image; put the question after it.")
        inputs = {key: value for key, value in batch.items() if key not in ("input_ids", "attention_mask")}
        if self.rope_index is None:
            return EncodedPrompt(tuple(token_ids), inputs)
        positions, _ = self.rope_index(batch["input_ids"], mm_token_type_ids=batch["mm_token_type_ids"],
                                       image_grid_thw=batch["image_grid_thw"], attention_mask=batch["attention_mask"])
        return EncodedPrompt(tuple(token_ids), inputs, positions[:, 0])  # [3, n]

    def _parts(self, prompt: Any) -> tuple[list, str]:
        """(the images, the prompt text with one placeholder per image)."""
        if isinstance(prompt, dict):
            unknown = set(prompt) - {"images", "prompt"}
            if unknown or "images" not in prompt:
                raise SpecDecodeError(f"an image prompt is {{'images': [...], 'prompt': ...}}; got the keys "
                                      f"{sorted(prompt)}.")
            images = prompt["images"] if isinstance(prompt["images"], (list, tuple)) else [prompt["images"]]
            question = prompt.get("prompt") or DEFAULT_PROMPT
            if isinstance(question, str) and self.image_token in question:
                return list(images), question
            if isinstance(question, str):
                messages = [{"role": "user", "content": [*({"type": "image"} for _ in images),
                                                         {"type": "text", "text": question}]}]
            else:
                messages = list(question)
            return list(images), self._formatted(messages, len(images))
        messages = [dict(m) for m in prompt]
        images = [part.get("image") for m in messages if isinstance(m.get("content"), list)
                  for part in m["content"] if isinstance(part, dict) and part.get("type") == "image"]
        if any(image is None for image in images):
            raise SpecDecodeError("an image part of a chat message needs its image: {'type': 'image', 'image': ...}.")
        return images, self._formatted(messages, len(images))

    def _formatted(self, messages: list[dict], images: int) -> str:
        """Chat messages -> the prompt text by the processor's chat template; without one, the images'
        placeholders then the messages' text."""
        if getattr(self.processor, "chat_template", None):
            return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        texts = [part["text"] if isinstance(part, dict) else str(part)
                 for m in messages for part in (m["content"] if isinstance(m["content"], list) else [m["content"]])
                 if not (isinstance(part, dict) and part.get("type") == "image")]
        return f"{self.image_token} " * images + " ".join(texts)
