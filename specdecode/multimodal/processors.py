"""Image-only processors: a vision-language processor less its video processor, for hosts without torchvision.

transformers' processors for families that also take videos (SmolVLM, Qwen2-VL) want a video processor, and
video processors need torchvision, so `AutoProcessor` fails on a host without it although images alone need
only PIL. The image-only processors here are the same processors with no video processor: the same image
processing, image tokens and chat template; videos are not taken. `load_processor(source, model_type)` loads a
model's processor with AutoProcessor, and where that fails for lack of torchvision (or of num2words, which
SmolVLM's video prompts use) the family's image-only processor from the same files: its tokenizer, its PIL
image processor, its chat template and its processor settings (SmolVLM's image_seq_len).

ProcessorMixin reads a processor's parts (image_processor, tokenizer, ...) from the parameters of its
`__init__`, and the settings it loads from processor_config.json from the same parameters, so an image-only
processor's `__init__` names every setting of the original but the video processor.
"""

from __future__ import annotations

import functools
from typing import Any

from transformers import ProcessorMixin, Qwen2_5_VLProcessor, Qwen2VLProcessor, SmolVLMProcessor


class ImageOnly:
    """A processor class's image-only twin (the mixin before the original class): built without a video
    processor, and its chat template applied without the original's video defaults. Its `__init__` takes
    the original's parts and settings but the video processor; ProcessorMixin pairs the parts the original
    passes positionally with those this signature names, so the video processor's None is left out."""

    def __init__(self, image_processor, tokenizer, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, video_processor=None, chat_template=chat_template, **kwargs)

    def apply_chat_template(self, conversation, chat_template=None, **kwargs):
        return ProcessorMixin.apply_chat_template(self, conversation, chat_template, **kwargs)

    def to_dict(self) -> dict[str, Any]:  # saved as the original, so AutoProcessor loads it where torchvision is
        original = next(c for c in type(self).__mro__ if issubclass(c, ProcessorMixin) and not issubclass(c, ImageOnly))
        return {**super().to_dict(), "processor_class": original.__name__}


@functools.cache
def image_only(processor_class: type) -> type:
    """`processor_class` less its video processor, for a processor whose settings are only its parts and
    chat_template (`__init__(image_processor, tokenizer, video_processor, chat_template)`, as Qwen2-VL's).
    A processor with settings of its own (SmolVLM's image_seq_len) needs its own `__init__` naming them, as
    `SmolVLMImageOnly` has."""
    if issubclass(processor_class, ImageOnly):
        return processor_class
    return type(f"{processor_class.__name__}ImageOnly", (ImageOnly, processor_class),
                {"__module__": __name__, "__doc__": f"{processor_class.__name__} for images only (no torchvision)."})


class SmolVLMImageOnly(ImageOnly, SmolVLMProcessor):
    """SmolVLM's processor for images: SmolVLMProcessor less its video processor and the num2words package
    (which spells out a video's frame count); an image expands to the same tokens as there."""

    def __init__(self, image_processor, tokenizer, image_seq_len: int = 169, chat_template: str | None = None,
                 **kwargs: Any):
        # SmolVLMProcessor.__init__'s settings, read from the tokenizer as there
        self.fake_image_token = getattr(tokenizer, "fake_image_token", "<fake_token_around_image>")
        self.image_token = getattr(tokenizer, "image_token", "<image>")
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.end_of_utterance_token = getattr(tokenizer, "end_of_utterance_token", "<end_of_utterance>")
        self.global_image_token = getattr(tokenizer, "global_image_token", "<global-img>")
        self.video_token = getattr(tokenizer, "video_token", "<video>")
        self.image_seq_len = image_seq_len
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template, **kwargs)


def image_only_class(model_type: str) -> type | None:
    """The image-only processor class for a model type, or None where there is none."""
    image_only_classes = {"smolvlm": SmolVLMImageOnly, "qwen2_vl": image_only(Qwen2VLProcessor),
                          "qwen2_5_vl": image_only(Qwen2_5_VLProcessor)}
    return image_only_classes.get(model_type)


def load_processor(source: str, model_type: str) -> Any:
    """A model's processor from its folder or hub id: AutoProcessor's, or where that fails for want of a package
    (torchvision for the video processor) or of a video processor's files (a folder saved by an image-only
    processor), the family's image-only processor."""
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(source)
    except (ImportError, OSError):
        processor_class = image_only_class(model_type)
        if processor_class is None:
            raise
        return processor_class.from_pretrained(source)
