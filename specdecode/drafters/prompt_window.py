"""Which tokens of a long prompt a model drafter sees.

A prompt longer than the window (a document to summarize) is seen as its first `head` tokens (the
instruction, the title and the opening, which a summary draws on most) and its last `size - head` tokens,
at contiguous positions, plus every token generated after it: the drafter's prefill and each draft step's
attention stay bounded however long the document. Teacher-forced along the 1.5B's summaries of 4k- and
8k-token documents, the 0.5B agreed with 82% of the tokens seeing half head, half tail of 2048 tokens, as
many as seeing the whole document, against 59% seeing 16 first tokens and the tail (docs/long-documents.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import SpecDecodeError

SINKS = 16  # a window's fewest first and last prompt tokens (StreamingLLM's attention sinks)
DEFAULT_CONTEXT_WINDOW = 2048  # docs/benchmarks.md, long documents: the 0.5B drafter windowed vs whole


@dataclass(frozen=True)
class PromptWindow:
    """The prompt tokens a drafter sees: at most `size`, the first `head` (None: half the window) and the rest
    from the prompt's end."""

    size: int = DEFAULT_CONTEXT_WINDOW
    head: int | None = None

    def __post_init__(self):
        if not (isinstance(self.size, int) and self.size > 2 * SINKS):
            raise SpecDecodeError(f"ModelDrafter context_window must be a whole number of tokens > {2 * SINKS} "
                                  f"(or None: the whole prompt), got {self.size!r}.")
        if self.head is None:
            object.__setattr__(self, "head", self.size // 2)
        if not (isinstance(self.head, int) and SINKS <= self.head <= self.size - SINKS):
            raise SpecDecodeError(f"ModelDrafter context_head must be a whole number of tokens from {SINKS} to "
                                  f"context_window - {SINKS} (or None: half the window), got {self.head!r}.")

    def tail_start(self, prompt_length: int) -> int | None:
        """Where the seen tail of a prompt of `prompt_length` tokens starts; None where it fits whole."""
        return prompt_length - (self.size - self.head) if prompt_length > self.size else None

    def view(self, token_ids: Sequence[int], tail_start: int | None) -> Sequence[int]:
        """The tokens seen of a context (prompt + generated): the head and everything from tail_start."""
        return token_ids if tail_start is None else [*token_ids[:self.head], *token_ids[tail_start:]]
