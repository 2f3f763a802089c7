"""Long documents: summarize text, a file or several files with speculative decoding. A document too
long for one prompt is cut on paragraph boundaries into parts that fit; each part is summarized (map),
then the part summaries together (reduce, again in parts while they still do not fit).

    summarize = SummarizePipeline(target)                   # drafter "auto": a small model, or lookup+self
    summary = summarize("report.md", max_new_tokens=200)     # text | path | [paths]
    summary.text, summary.stats, summary.parts, [s.name for s in summary.stages], summary.notes
    plain = summarize("report.md", speculative=False)       # the same stages, plain decoding
    for piece in summarize.stream(Path("page.html")): ...   # the final stage's text as it comes
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass

from ..drafters import Drafter
from ..drafters.registry import DrafterOptions, make_drafter
from ..engine import SpeculativeGenerator
from ..errors import SpecDecodeError
from ..models.load import load_model
from ..outputs import GenerationOutput, GenerationStats
from ..prompts import encode_prompt
from .base import ZOO_TEXT_DRAFTERS, local_drafter_model, user_prompt
from .reading import read_source, split_text

DEFAULT_TEMPLATE = "{document}\n\n{instruction}"
DEFAULT_INSTRUCTION = "Summarize the document above in a few paragraphs."
PART_INSTRUCTION = ("The text above is one part of a longer document. Summarize it in one paragraph, keeping its "
                    "key facts, names and figures.")
MIN_PART_TOKENS = 16  # a part must leave at least this many tokens of the prompt to the document


def auto_drafter(target, candidates: Sequence[str] = ZOO_TEXT_DRAFTERS) -> str:
    """What "auto" drafts a summary with: the first of `candidates` on this machine that shares the target's
    vocabulary (local_drafter_model), reading the document's first and last tokens (ModelDrafter's context
    window); where none does, prompt lookup on the document merged with the target drafting for itself
    (`lookup+self`). docs/benchmarks.md, long documents: the windowed 0.5B alone drafted faster than
    lookup+self and than lookup merged with it."""
    model = local_drafter_model(target, candidates)
    return f"model:{model}" if model else "lookup+self"


@dataclass(frozen=True)
class SummaryStage:
    """One generation of a summary: a part (map), a reduce round, or the whole document."""

    name: str  # "summary" (the document fit), "part 2/3", "round 2 part 1/2", "reduce"
    prompt_tokens: int
    output: GenerationOutput

    @property
    def text(self) -> str:
        return self.output.text

    @property
    def token_ids(self) -> list[int]:
        return self.output.token_ids

    @property
    def stats(self) -> GenerationStats:
        return self.output.stats


@dataclass(frozen=True)
class Summary:
    text: str
    token_ids: list[int]  # the final summary's generated token ids
    stats: GenerationStats  # the final stage's
    stages: tuple[SummaryStage, ...]  # in the order they ran; the final one last
    parts: int  # parts the document was cut into (1: it fit)
    notes: tuple[str, ...]  # e.g. how the document was split
    output: GenerationOutput  # the final stage's

    @property
    def wall_s(self) -> float:
        """Generation seconds of every stage together."""
        return sum(stage.stats.wall_s for stage in self.stages)

    @property
    def prompt_tokens(self) -> int:
        return sum(stage.prompt_tokens for stage in self.stages)


class SummarizePipeline:
    """Summarize a document with speculative decoding; map-reduce over parts when it is too long.

    drafter: "auto" (auto_drafter: a small model of the target's vocabulary where one is on this machine,
        else prompt lookup on the document merged with self-drafting: "lookup+self"), a drafter
        name ("lookup", "lookup+model:NAME", ...), a Drafter, or None for plain decoding only.
    template: the prompt, with {document} and {instruction}; sent as one user chat message when the
        tokenizer has a chat template, else as text ending in "Summary:".
    instruction: what the final summary should be (length, style); part_instruction: for each part.
    context_tokens: the model's context (default its max_position_embeddings); a prompt may take it
        minus max_new_tokens, and at most max_prompt_tokens when given.
    split: False refuses a document that does not fit in one prompt instead of summarizing it in parts.
    progress: a progress bar over the parts (shown only when there are several).
    cost_model: the generator's ("auto": size drafts from measured costs; None: the drafter decides).
    """

    def __init__(self, target, *, drafter: str | Drafter | None = "auto", template: str = DEFAULT_TEMPLATE,
                 instruction: str = DEFAULT_INSTRUCTION, part_instruction: str = PART_INSTRUCTION,
                 max_new_tokens: int = 256, context_tokens: int | None = None, max_prompt_tokens: int | None = None,
                 split: bool = True, progress: bool = True, cost_model="auto"):
        _check_template(template)
        for name, value in (("instruction", instruction), ("part_instruction", part_instruction)):
            if not isinstance(value, str) or not value.strip():
                raise SpecDecodeError(f"{name} is empty; say what the summary should be, e.g. {DEFAULT_INSTRUCTION!r}.")
        for name, value in (("max_new_tokens", max_new_tokens), ("context_tokens", context_tokens),
                            ("max_prompt_tokens", max_prompt_tokens)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise SpecDecodeError(f"{name} must be a whole number >= 1, got {value!r}.")
        self.target = load_model(target)
        if self.target.tokenizer is None:
            raise SpecDecodeError("summarizing needs the target's tokenizer; pass a model loaded with one.")
        if drafter == "auto":
            drafter = auto_drafter(self.target)
        if isinstance(drafter, str):
            drafter = make_drafter(drafter, self.target, DrafterOptions())
        self.generator = SpeculativeGenerator(self.target, drafter=drafter, cost_model=cost_model)
        self.tokenizer = self.target.tokenizer
        self.template, self.instruction, self.part_instruction = template, instruction, part_instruction
        self.max_new_tokens = max_new_tokens
        self.context_tokens = context_tokens or self.generator.max_positions
        self.max_prompt_tokens, self.split, self.progress = max_prompt_tokens, split, progress

    # ------------------------------------------------------------------ public API
    def __call__(self, source, **options) -> Summary:
        """Summarize `source` (text, a file path, or a list of them). Options: max_new_tokens, instruction,
        split, progress, and those of generate (speculative=False for plain decoding, temperature, top_p,
        top_k, seed, stop)."""
        run = self._run(source, options, streaming=False)
        while True:
            try:
                next(run)
            except StopIteration as done:
                return done.value

    def stream(self, source, **options) -> Generator[str, None, Summary]:
        """Yield the final summary's text pieces (the parts are summarized first, silently, with the
        progress bar); the generator's return value is the Summary."""
        return (yield from self._run(source, options, streaming=True))

    def prompt(self, document: str, instruction: str | None = None):
        """The prompt the generator receives for `document`: chat messages, or text without a chat template."""
        text = self.template.format(document=document.strip(), instruction=(instruction or self.instruction).strip())
        return user_prompt(self.tokenizer, text, "Summary:")

    def prompt_tokens(self, document: str, instruction: str | None = None) -> int:
        return len(encode_prompt(self.tokenizer, self.prompt(document, instruction)))

    def limit(self, max_new_tokens: int | None = None) -> tuple[int | None, str]:
        """(the most tokens a prompt may take, what sets it); (None, "") when nothing limits it."""
        max_new = self.max_new_tokens if max_new_tokens is None else max_new_tokens
        limits = []
        if self.max_prompt_tokens is not None:
            limits.append((self.max_prompt_tokens, f"max_prompt_tokens ({self.max_prompt_tokens})"))
        if self.context_tokens:
            limits.append((self.context_tokens - max_new, f"the {self.context_tokens} tokens of context minus "
                                                           f"max_new_tokens ({max_new})"))
        if not limits:
            return None, ""
        limit, why = min(limits)
        if limit < 1:
            raise SpecDecodeError(f"max_new_tokens ({max_new}) leaves no room for a prompt in the model's context of "
                                  f"{self.context_tokens} tokens; lower max_new_tokens.")
        return limit, why

    # ------------------------------------------------------------------ the stages
    def _run(self, source, options: dict, streaming: bool) -> Generator[str, None, Summary]:
        options = dict(options)
        max_new = options.pop("max_new_tokens", self.max_new_tokens)
        instruction = options.pop("instruction", None) or self.instruction
        split, progress = options.pop("split", self.split), options.pop("progress", self.progress)
        if progress and "on_prefill" not in options:
            options["on_prefill"] = self._prefill_bar()
        document, _ = read_source(source)
        limit, why = self.limit(max_new)
        stages: list[SummaryStage] = []
        notes: list[str] = []
        text, rounds, first_parts, previous, bar = document, 0, 1, 0, None
        try:
            while limit is not None and (length := self.prompt_tokens(text, instruction)) > limit:
                if not split:
                    raise SpecDecodeError(
                        f"the document makes a prompt of {length} tokens, more than the {limit} allowed by {why}; "
                        "summarize it in parts (split=True; on the command line, leave out --no-split) or pass a "
                        "shorter document.")
                parts = self._split(text, limit, instruction)
                if rounds and len(parts) >= previous:
                    raise SpecDecodeError(
                        f"the {previous} part summaries ({length} prompt tokens) do not shrink into fewer parts "
                        f"under the limit of {limit} tokens; lower max_new_tokens or allow longer prompts.")
                rounds, previous = rounds + 1, len(parts)
                if rounds == 1:
                    first_parts = len(parts)
                    notes.append(f"the document makes a prompt of {length} tokens, more than the {limit} allowed by "
                                 f"{why}: summarized in {len(parts)} parts, then the part summaries together")
                else:
                    notes.append(f"the part summaries ({length} prompt tokens) did not fit either: summarized "
                                 f"again in {len(parts)} parts (round {rounds})")
                bar = self._bar(bar, len(parts), progress)
                summaries = []
                for number, part in enumerate(parts, start=1):
                    name = f"part {number}/{len(parts)}" if rounds == 1 else f"round {rounds} part {number}/{len(parts)}"
                    output = self.generator.generate(self.prompt(part, self.part_instruction), max_new, **options)
                    stages.append(SummaryStage(name, len(output.prompt_ids), output))
                    if not output.text.strip():
                        notes.append(f"{name} gave an empty summary")
                    summaries.append(output.text.strip())
                    if bar is not None:
                        bar.update()
                text = "\n\n".join(s for s in summaries if s)
        finally:
            if bar is not None:
                bar.close()
        prompt = self.prompt(text, instruction)
        if streaming:
            output = yield from self.generator.stream(prompt, max_new, **options)
        else:
            output = self.generator.generate(prompt, max_new, **options)
        stages.append(SummaryStage("reduce" if rounds else "summary", len(output.prompt_ids), output))
        return Summary(output.text, output.token_ids, output.stats, tuple(stages), first_parts, tuple(notes), output)

    def _split(self, text: str, limit: int, instruction: str) -> list[str]:
        """`text` in parts whose prompts (with the part instruction, or the final one) fit `limit`."""
        overhead = max(self.prompt_tokens("", i) for i in (instruction, self.part_instruction))
        if limit - overhead < MIN_PART_TOKENS:
            raise SpecDecodeError(
                f"the template and instructions alone take {overhead} of the {limit} prompt tokens allowed, leaving "
                f"no room for the document (at least {MIN_PART_TOKENS} tokens); allow longer prompts, lower "
                "max_new_tokens or shorten the instructions.")
        return self._fit(text, limit - overhead, limit, instruction)

    def _fit(self, text: str, budget: int, limit: int, instruction: str) -> list[str]:
        parts = []
        for part in split_text(text, budget, self._count):
            if all(self.prompt_tokens(part, i) <= limit for i in (instruction, self.part_instruction)):
                parts.append(part)
            elif budget > 1:  # the token counts of the pieces missed a seam: cut this part finer
                parts.extend(self._fit(part, max(1, budget * 3 // 4), limit, instruction))
            else:
                raise SpecDecodeError(f"cannot cut the document into parts that fit {limit} prompt tokens; "
                                      "allow longer prompts or lower max_new_tokens.")
        return parts

    def _count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _prefill_bar(self):
        """An on_prefill for generate: a progress bar over a prompt's prefill when it takes several chunks."""
        bars = []

        def on_prefill(done: int, total: int) -> None:
            if total <= self.generator.prefill_chunk:
                return
            if not bars:
                from tqdm.auto import tqdm

                bars.append(tqdm(total=total, desc="reading", unit="token", dynamic_ncols=True, leave=False))
            bars[0].update(done - bars[0].n)
            if done >= total:
                bars.pop().close()

        return on_prefill

    @staticmethod
    def _bar(bar, parts: int, progress: bool):
        """A progress bar over the parts (a later round adds its parts to the total)."""
        if bar is not None:
            bar.total += parts
            bar.refresh()
            return bar
        if not progress or parts < 2:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=parts, desc="summarizing", unit="part", dynamic_ncols=True)


def _check_template(template: str) -> None:
    if not isinstance(template, str) or "{document}" not in template or "{instruction}" not in template:
        raise SpecDecodeError("the summary template needs both {document} and {instruction} placeholders.")
    try:
        template.format(document="", instruction="")
    except (KeyError, IndexError, ValueError) as e:
        raise SpecDecodeError(f"the summary template has a placeholder other than {{document}} and {{instruction}} "
                              f"({e}); write literal braces as {{{{ and }}}}.") from None
