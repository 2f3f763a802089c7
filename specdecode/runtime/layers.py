"""Where a model's decoder is (a causal LM's body, or a vision-language model's language model), and
switching its attention to one of ours."""

from __future__ import annotations

from collections.abc import Callable

import torch


def decoder_of(model: torch.nn.Module) -> torch.nn.Module | None:
    """The decoder whose layers a text step runs: the model's body (`base_model`), or a VLM's language model
    under it (LLaVA's and Qwen-VL's `language_model`, Idefics3's and SmolVLM's `text_model`)."""
    body = getattr(model, "base_model", None)
    for name in ("language_model", "text_model"):
        if isinstance(getattr(body, name, None), torch.nn.Module):
            return getattr(body, name)
    return body


def switch_attention(model: torch.nn.Module, name: str, function: Callable) -> None:
    """Register `function` in transformers' attention registry as `name` (with SDPA's mask builder;
    registering is idempotent) and switch the model's decoder to it: a vision-language model's language part
    only, its vision tower (not causal) keeps SDPA. Raises what set_attn_implementation raises."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(name, function)
    AttentionMaskInterface.register(name, sdpa_mask)
    parts = getattr(model.config, "sub_configs", None) or {}
    implementation: str | dict = name
    if "text_config" in parts:
        implementation = {"": name, **{part: name if part == "text_config" else "sdpa" for part in parts}}
    model.set_attn_implementation(implementation)
