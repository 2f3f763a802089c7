"""Prompt encoding, end-of-sequence ids and stop strings: the text side of the engine."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from .errors import SpecDecodeError


@dataclass(frozen=True)
class EncodedPrompt:
    """A prompt already encoded: its token ids, the other tensors the model's prompt forward takes (a
    vision-language model's pixel values and image sizes; none for text), and the prompt's rotary positions
    where they are not 0..n-1 (Qwen-VL's M-RoPE: [3, n], image tokens at their grid's positions)."""

    token_ids: tuple[int, ...]
    model_inputs: Mapping[str, torch.Tensor] = field(default_factory=dict)
    positions: torch.Tensor | None = None  # [sections, n] or None (token i at position i)

    @property
    def position_shift(self) -> int:
        """Every token after the prompt sits at (its index + this) on every section: 0 for 1-D positions."""
        if self.positions is None:
            return 0
        return int(self.positions.max()) + 1 - len(self.token_ids)


def prompt_tokens(prompt: Sequence[int] | EncodedPrompt) -> list[int]:
    """A prompt's token ids: an EncodedPrompt's, or the ids themselves."""
    return list(prompt.token_ids if isinstance(prompt, EncodedPrompt) else prompt)


def has_images(prompt) -> bool:
    """Whether a prompt is an image prompt: a {"images": [...], "prompt": ...} dict, or chat messages with an
    {"type": "image", ...} part."""
    if isinstance(prompt, Mapping):
        return True
    if isinstance(prompt, Sequence) and not isinstance(prompt, (str, bytes)) and prompt and all(
            isinstance(m, dict) for m in prompt):
        return any(isinstance(m.get("content"), list) and any(
            isinstance(part, dict) and part.get("type") == "image" for part in m["content"]) for m in prompt)
    return False


def encode_prompt(tokenizer, prompt) -> list[int]:
    """A string (tokenised as is), chat messages (the tokenizer's chat template with the generation
    prompt) or token ids (a list or a 1-D tensor) -> token ids."""
    if isinstance(prompt, torch.Tensor):
        prompt = prompt.reshape(-1).tolist()
    if isinstance(prompt, str):
        if not prompt.strip():
            raise SpecDecodeError("the prompt is empty; pass some text, chat messages or token ids.")
        _require_tokenizer(tokenizer, "a text prompt")
        ids = tokenizer(prompt)["input_ids"]
    elif isinstance(prompt, Sequence) and prompt and all(isinstance(m, dict) for m in prompt):
        _require_tokenizer(tokenizer, "chat messages")
        if not getattr(tokenizer, "chat_template", None):
            raise SpecDecodeError(
                "this tokenizer has no chat template, so chat messages cannot be formatted; pass the prompt "
                "as plain text instead."
            )
        if not any(str(m.get("content", "")).strip() for m in prompt):
            raise SpecDecodeError("the chat messages are all empty; give at least one message some content.")
        ids = tokenizer.apply_chat_template(list(prompt), add_generation_prompt=True, tokenize=True, return_dict=False)
    elif isinstance(prompt, Sequence) and not isinstance(prompt, (bytes, bytearray)):
        if not prompt:
            raise SpecDecodeError("the prompt is empty; pass some text, chat messages or token ids.")
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            raise SpecDecodeError(
                "a list prompt must hold token ids (ints) or chat messages ({'role': ..., 'content': ...} dicts)."
            )
        ids = list(prompt)
    else:
        raise SpecDecodeError(
            f"unsupported prompt type {type(prompt).__name__}; pass a string, chat messages or token ids."
        )
    if not ids:
        raise SpecDecodeError("the prompt encodes to zero tokens; pass some text.")
    return [int(t) for t in ids]


def _require_tokenizer(tokenizer, what: str) -> None:
    if tokenizer is None:
        raise SpecDecodeError(f"{what} needs a tokenizer; pass tokenizer=... or give the prompt as token ids.")


def eos_token_ids(model, tokenizer) -> frozenset[int]:
    """The model's end-of-sequence ids: its generation config's (as transformers' generate uses),
    else the tokenizer's."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None and tokenizer is not None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return frozenset()
    return frozenset([eos] if isinstance(eos, int) else [int(e) for e in eos])


class StopChecker:
    """Finds where generation must stop inside one step's tokens, and the text a user should see."""

    def __init__(self, tokenizer, stop: Sequence[str]):
        self.tokenizer = tokenizer
        self.stop = tuple(stop)

    def first_stop(
        self, generated: list[int], new_tokens: list[int], eos_ids: frozenset[int], max_new_tokens: int
    ) -> tuple[int, str | None]:
        """(how many of new_tokens to keep, why we stop or None)."""
        for j, token in enumerate(new_tokens):
            if token in eos_ids:
                return j + 1, "eos"
            if self.stop and self._has_stop(generated + new_tokens[: j + 1]):
                return j + 1, "stop_string"
            if len(generated) + j + 1 >= max_new_tokens:
                return j + 1, "max_new_tokens"
        return len(new_tokens), None

    def _has_stop(self, token_ids: list[int]) -> bool:
        text = self.tokenizer.decode(token_ids, skip_special_tokens=True)
        return any(s in text for s in self.stop)

    def visible_text(self, token_ids: list[int], final: bool) -> str:
        """Decoded text cut before the first stop string. While streaming (final=False), hold back an
        incomplete character and any tail that could still grow into a stop string."""
        text = self.tokenizer.decode(token_ids, skip_special_tokens=True)
        cuts = [text.find(s) for s in self.stop if s in text]
        if cuts:
            return text[: min(cuts)]
        if final:
            return text
        text = text.rstrip("\ufffd")
        for s in self.stop:
            for size in range(min(len(s) - 1, len(text)), 0, -1):
                if text.endswith(s[:size]):
                    text = text[: len(text) - size]
                    break
        return text
