"""RAG: retrieve passages, build a prompt that cites them, generate with speculative decoding whose
drafter copies from those passages.

    rag = RAGPipeline(target, datastore, draft_model="qwen2.5-coder-0.5b-instruct")
    answer = rag("How do I read a file line by line?")
    answer.text, answer.sources, answer.stats, answer.notes
    plain = rag("How do I read a file line by line?", speculative=False)    # same pipeline, plain decoding
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, replace

from ..drafters import Drafter, MixtureDrafter, ModelDrafter, RetrievalDrafter, SuffixIndex
from ..drafters.registry import DrafterOptions, default_load_draft, drafter_kinds, make_drafter
from ..engine import SpeculativeGenerator
from ..errors import SpecDecodeError
from ..models.load import load_model
from ..outputs import GenerationOutput, GenerationStats
from ..prompts import encode_prompt
from ..retrieval.span_index import span_index
from .base import Pipeline, PipelineState, user_prompt

DEFAULT_TEMPLATE = (
    "Answer the question using the numbered sources below; quote them where they answer it, and cite them "
    "like [1].\n\n{sources}\n\nQuestion: {question}"
)
SOURCE_FORMAT = "[{number}] ({source})\n{text}"


@dataclass(frozen=True)
class RAGAnswer:
    text: str
    sources: list  # retrieval.Passage given to the model, numbered from 1 in this order
    stats: GenerationStats
    output: GenerationOutput
    notes: tuple[str, ...]  # e.g. passages trimmed to fit the context


class Retrieve:
    """state.question -> state.passages (the datastore's `k` best)."""

    def __init__(self, datastore, k: int = 4):
        if not isinstance(k, int) or k < 1:
            raise SpecDecodeError(f"k must be a whole number >= 1, got {k!r}.")
        self.datastore, self.k = datastore, k

    def run(self, state: PipelineState) -> None:
        state.passages = self.datastore.search(state.question, self.k)


class BuildPrompt:
    """state.question + state.passages -> state.prompt (one chat message, or text without a chat
    template). When the prompt does not fit (the model's context minus max_new_tokens, or
    max_prompt_tokens), passages are dropped from the last, then the last one left is shortened;
    state.notes says so."""

    def __init__(self, tokenizer, template: str = DEFAULT_TEMPLATE, *, context_tokens: int | None = None,
                 max_prompt_tokens: int | None = None):
        if "{question}" not in template or "{sources}" not in template:
            raise SpecDecodeError("the prompt template needs both {sources} and {question} placeholders.")
        self.tokenizer, self.template = tokenizer, template
        self.context_tokens, self.max_prompt_tokens = context_tokens, max_prompt_tokens

    def limit(self, state: PipelineState) -> int | None:
        limits = [self.max_prompt_tokens]
        if self.context_tokens:
            limits.append(self.context_tokens - int(state.options.get("max_new_tokens", 0)))
        limits = [x for x in limits if x is not None]
        return min(limits) if limits else None

    def run(self, state: PipelineState) -> None:
        limit = self.limit(state)
        passages = list(state.passages)
        prompt = self._prompt(state.question, passages)
        while limit is not None and passages and self._length(prompt) > limit:
            last = passages[-1]
            words = last.text.split(" ")
            if len(passages) > 1 or len(words) < 8:
                passages.pop()
                state.notes.append(f"dropped source {last.source} (chunk {last.chunk}) to fit the context")
            else:
                text = " ".join(words[: len(words) // 2])
                passages[-1] = replace(last, text=text, end=last.start + len(text))
                note = f"shortened source {last.source} (chunk {last.chunk}) to fit the context"
                if note not in state.notes:
                    state.notes.append(note)
            prompt = self._prompt(state.question, passages)
        if limit is not None and self._length(prompt) > limit:
            raise SpecDecodeError(f"the question alone makes a prompt of {self._length(prompt)} tokens, more than "
                                  f"the {limit} the context leaves; shorten it or lower max_new_tokens.")
        state.passages, state.prompt = passages, prompt

    def _prompt(self, question: str, passages: list):
        sources = "\n\n".join(SOURCE_FORMAT.format(number=i + 1, source=p.source, text=p.text.strip())
                              for i, p in enumerate(passages)) or "(no sources)"
        return user_prompt(self.tokenizer, self.template.format(sources=sources, question=question.strip()),
                           "Answer:")

    def _length(self, prompt) -> int:
        return len(encode_prompt(self.tokenizer, prompt))


def hand_passages(drafter: Drafter | None, tokenizer, passages) -> None:
    """Give the drafters that copy from passages (`set_passages`) these ones, in the target's tokens."""
    if drafter is not None and hasattr(drafter, "set_passages"):
        drafter.set_passages([tokenizer.encode(p.text, add_special_tokens=False) for p in passages])


class Generate:
    """state.prompt -> state.output, with the passages handed to drafters that copy from them."""

    def __init__(self, generator: SpeculativeGenerator, max_new_tokens: int = 256):
        self.generator, self.max_new_tokens = generator, max_new_tokens

    def _options(self, state: PipelineState) -> dict:
        options = {"max_new_tokens": self.max_new_tokens, **state.options}
        hand_passages(self.generator.drafter, self.generator.tokenizer, state.passages)
        return options

    def run(self, state: PipelineState) -> None:
        options = self._options(state)
        state.output = self.generator.generate(state.prompt, options.pop("max_new_tokens"), **options)

    def stream(self, state: PipelineState) -> Generator[str, None, None]:
        options = self._options(state)
        state.output = yield from self.generator.stream(state.prompt, options.pop("max_new_tokens"), **options)


class RAGPipeline:
    """Retrieve -> BuildPrompt -> Generate, with retrieval drafting.

    drafter: "auto" (a RetrievalDrafter over the prompt, the retrieved passages and, with
    `corpus_index`, the whole store; merged with a ModelDrafter when `draft_model` is given), a
    drafter name ("lookup", "retrieval+model:NAME", ...; `retrieval` copies from the store too), a
    Drafter, or None for plain decoding only.
    corpus_index: True builds (once, cached in the store's folder) the store's token span index in
    the target's tokenizer; a SuffixIndex is used as is; False leaves the corpus out.
    """

    def __init__(self, target, datastore, *, drafter: str | Drafter | None = "auto", k: int = 4,
                 draft_model=None, corpus_index: SuffixIndex | bool = True, template: str = DEFAULT_TEMPLATE,
                 max_new_tokens: int = 256, max_prompt_tokens: int | None = None):
        self.target = load_model(target)
        self.datastore = datastore
        uses_corpus = drafter == "auto" or (isinstance(drafter, str) and "retrieval" in drafter_kinds(drafter))
        if corpus_index is True and uses_corpus:
            corpus_index = span_index(datastore, self.target.tokenizer)
        corpus = corpus_index if isinstance(corpus_index, SuffixIndex) else None
        if drafter == "auto":
            drafter = RetrievalDrafter(corpus)
            if draft_model is not None:
                drafter = MixtureDrafter([drafter, ModelDrafter(default_load_draft(draft_model, self.target))])
        elif isinstance(drafter, str):
            drafter = make_drafter(drafter, self.target, DrafterOptions(corpus=corpus))
        self.generator = SpeculativeGenerator(self.target, drafter=drafter)
        self.max_new_tokens = max_new_tokens
        build_prompt = BuildPrompt(self.target.tokenizer, template, context_tokens=self.generator.max_positions,
                                   max_prompt_tokens=max_prompt_tokens)
        self.pipeline = Pipeline([Retrieve(datastore, k), build_prompt, Generate(self.generator, max_new_tokens)])

    def _state(self, question: str, options: dict) -> PipelineState:
        if not isinstance(question, str) or not question.strip():
            raise SpecDecodeError("the question is empty; ask something.")
        return PipelineState(question=question, options={"max_new_tokens": self.max_new_tokens, **options})

    def __call__(self, question: str, **options) -> RAGAnswer:
        """Answer `question`; options go to generate (speculative=False for plain decoding,
        max_new_tokens, temperature, top_p, top_k, seed, stop)."""
        return _answer(self.pipeline(self._state(question, options)))

    def stream(self, question: str, **options) -> Generator[str, None, RAGAnswer]:
        """Yield the answer's text pieces; the generator's return value is the RAGAnswer."""
        state = yield from self.pipeline.stream(self._state(question, options))
        return _answer(state)


def _answer(state: PipelineState) -> RAGAnswer:
    return RAGAnswer(state.output.text, list(state.passages), state.output.stats, state.output, tuple(state.notes))
