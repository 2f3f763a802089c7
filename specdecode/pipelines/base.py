"""Pipelines: a `Stage` reads and fills a `PipelineState`; a `Pipeline` runs stages in order.

    pipeline = Pipeline([Retrieve(store, k=4), BuildPrompt(tokenizer), Generate(generator)])
    state = pipeline(PipelineState(question="How do I ...?"))
    state.output.text, state.passages, state.notes
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..drafters.model import foreign_tokens
from ..errors import SpecDecodeError
from ..models import zoo
from ..outputs import GenerationOutput

ZOO_TEXT_DRAFTERS = ("qwen2.5-coder-0.5b-instruct",)  # zoo drafter models an "auto" drafter may pick


def local_drafter_model(target, candidates: Sequence[str] = ZOO_TEXT_DRAFTERS) -> str | None:
    """The first of `candidates` (zoo names or folders) that is on this machine (a zoo model already pulled:
    "auto" never downloads) and shares the target's vocabulary, or None."""
    from transformers import AutoTokenizer

    for candidate in candidates:
        folder = zoo.model_dir(candidate) if candidate in zoo.ZOO else Path(candidate)
        if (zoo.is_converted(candidate) if candidate in zoo.ZOO else folder.is_dir()) and \
                foreign_tokens(AutoTokenizer.from_pretrained(folder), target.tokenizer) is not None:
            return candidate
    return None


@dataclass
class PipelineState:
    """What flows through a pipeline; each stage reads some fields and fills others."""

    question: str = ""
    passages: list = field(default_factory=list)  # retrieval.Passage, best first
    prompt: Any = None  # what the generator receives: chat messages, text or token ids
    output: GenerationOutput | None = None
    options: dict = field(default_factory=dict)  # generation options (max_new_tokens, temperature, ...)
    notes: list[str] = field(default_factory=list)  # what stages want the user to know (e.g. trimmed passages)


class Stage(Protocol):
    """One step of a pipeline. `run` fills the state; `stream` (optional) yields text pieces while
    it runs; a stage without `stream` runs silently."""

    def run(self, state: PipelineState) -> None: ...


class Pipeline:
    """Stages run in order over one PipelineState."""

    def __init__(self, stages: Sequence[Stage]):
        stages = list(stages)
        if not stages or not all(callable(getattr(s, "run", None)) for s in stages):
            raise SpecDecodeError("Pipeline needs a non-empty list of stages, each with a run(state) method.")
        self.stages = stages

    def __call__(self, state: PipelineState) -> PipelineState:
        for stage in self.stages:
            stage.run(state)
        return state

    def stream(self, state: PipelineState) -> Generator[str, None, PipelineState]:
        """Run the stages; yield the text pieces of those that stream. Returns the state."""
        for stage in self.stages:
            streaming = getattr(stage, "stream", None)
            if streaming is None:
                stage.run(state)
            else:
                yield from streaming(state)
        return state


def user_prompt(tokenizer, text: str, cue: str):
    """`text` as one user chat message when the tokenizer has a chat template, else plain text ending
    in `cue` on a line of its own (e.g. "Answer:"), so a base model knows where its part begins."""
    if getattr(tokenizer, "chat_template", None):
        return [{"role": "user", "content": text}]
    return f"{text}\n{cue}"
