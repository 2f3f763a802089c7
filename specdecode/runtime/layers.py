"""Where a model's decoder is: a causal LM's body, or a vision-language model's language model."""

from __future__ import annotations

import torch


def decoder_of(model: torch.nn.Module) -> torch.nn.Module | None:
    """The decoder whose layers a text step runs: the model's body (`base_model`), or a VLM's language model
    under it (LLaVA's and Qwen-VL's `language_model`, Idefics3's and SmolVLM's `text_model`)."""
    body = getattr(model, "base_model", None)
    for name in ("language_model", "text_model"):
        if isinstance(getattr(body, name, None), torch.nn.Module):
            return getattr(body, name)
    return body
