"""`specdecode bench`: Spec-Bench's protocol on one loaded target, methods interleaved per question.

For each question, every method in turn (plain first): each turn's prompt is the chat so far,
including the method's own previous answers; new tokens and wall time are summed over the turns;
the token ids are compared with plain's. Each finished (question, method) is appended to
results.jsonl at once, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from ..drafters.registry import DrafterOptions, drafter_kinds
from ..errors import SpecDecodeError
from ..multimodal import load_vlm
from ..models.load import LoadedModel, draft_quantization, load_model, resolve_device
from ..prompts import EncodedPrompt, encode_prompt, prompt_tokens
from ..runtime.cpu.quantize import check_mode
from .environment import environment, machine_key, source_commit
from .methods import (DraftModels, Method, MethodName, TurnResult, build_methods, check_peers_available,
                      parse_methods)
from .metrics import add_drafter_counts, add_histograms
from .rag import RagPrompts, RagTurn, store_fingerprint
from .questions import Question, read_questions, select_questions
from .report import write_reports
from .results import ResultsFolder, file_sha256, ids_hash, recorded_settings

WARMUP_TOKENS = 16  # length of each untimed warm-up generation


@dataclass(frozen=True)
class BenchConfig:
    questions: Path
    model: str
    out: Path
    methods: str = "plain,lookup"
    categories: tuple[str, ...] = ()
    limit_per_category: int | None = None
    max_new_tokens: int = 128
    dtype: str = "auto"
    quantize: str | None = None  # "int8" | "int4" | "fp16" | "w8a8": quantized target (runtime/cpu/quantize.py)
    drafter_dtype: str = "fast-decode"
    drafter_quantize: str | None = "auto"  # our drafter models and HF's assistants quantized alike
    k: int | None = None
    tree_width: int = 1
    warmup: int = 1  # untimed generations per method before the first question
    fresh: bool = False  # delete the results already in `out`
    store: Path | None = None  # ask every turn over this datastore (RAG prompts; passages to the drafters)
    rag_k: int = 4  # passages retrieved per turn with `store`
    cost_model: bool = True  # our methods size drafts with the cost model (policy.py); False: the drafters decide
    attention: str = "auto"  # our methods' attention backend, the target's and model drafters' (select_backend)

    def settings(self, questions_file_sha256: str) -> dict:
        """What results in one folder must share (resuming with other settings is refused)."""
        return {"model": self.model, "dtype": self.dtype, "quantize": self.quantize, "drafter_dtype": self.drafter_dtype,
                "max_new_tokens": self.max_new_tokens, "k": self.k, "tree_width": self.tree_width,
                "questions_sha256": questions_file_sha256, "machine": machine_key(),
                "store": store_fingerprint(self.store, self.rag_k) if self.store is not None else None,
                "cost_model": "auto" if self.cost_model else "off",
                **({"drafter_quantize": self.drafter_quantize} if self.drafter_quantize else {}),
                **({"attention": self.attention} if self.attention != "auto" else {})}


@dataclass(frozen=True)
class BenchRun:
    folder: ResultsFolder
    measured: int  # (question, method) pairs measured by this call
    interrupted: bool


Progress = Callable[[int], "ProgressBar"]


class ProgressBar:
    """What the runner needs of a progress display (tqdm has it)."""

    def update(self, n: int = 1) -> None: ...
    def set_postfix_str(self, text: str) -> None: ...
    def close(self) -> None: ...


def resolve_auto_drafter_weights(config: BenchConfig) -> str | None:
    """What "auto" drafter weights are for this run: those its out folder was measured with when resuming
    (a re-timed probe could choose otherwise and block the resume), else the measured fastest here."""
    recorded = None if config.fresh else recorded_settings(config.out)
    if recorded is not None:
        return recorded.get("drafter_quantize")  # absent: the published weights (settings omit None)
    return draft_quantization(resolve_device("auto"))


def run_benchmark(config: BenchConfig, *, target: LoadedModel | None = None,
                  load: Callable[..., LoadedModel] = load_model, progress: Progress | None = None) -> BenchRun:
    """Measure every pending (question, method) pair of `config` and write the reports.

    `target`: an already loaded target (else `load(config.model, dtype=..., quantize=...)`); `load` also
    loads drafter and assistant models. `progress(total)` returns a progress bar (None: silent)."""
    # 1. Check every input before loading anything.
    if config.max_new_tokens < 1:
        raise SpecDecodeError(f"--max-new-tokens must be >= 1, got {config.max_new_tokens}.")
    check_mode(config.quantize)
    check_mode(config.drafter_quantize, drafter=True)
    if config.drafter_quantize == "auto":  # record what the drafters will really run with
        config = replace(config, drafter_quantize=resolve_auto_drafter_weights(config))
    if config.warmup < 0:
        raise SpecDecodeError(f"--warmup must be >= 0, got {config.warmup}.")
    if config.rag_k < 1:
        raise SpecDecodeError(f"--rag-k must be >= 1, got {config.rag_k}.")
    questions = select_questions(read_questions(config.questions), config.categories, config.limit_per_category)
    names = parse_methods(config.methods)
    check_peers_available(names, config.model)
    options = DrafterOptions(k=config.k, tree_width=config.tree_width, drafter_dtype=config.drafter_dtype,
                             attention=config.attention)
    folder = ResultsFolder.open(config.out, config.settings(file_sha256(config.questions)), fresh=config.fresh,
                                commit=source_commit())
    done = folder.done()
    pending = [(q, n) for q in questions for n in names if (q.key, n.text) not in done]

    measured, interrupted = 0, False
    if pending:
        # 2. Load the target and the methods' models; warm every method up (untimed, not recorded).
        if target is None:
            target = loader_for(questions, load)(config.model, dtype=config.dtype, quantize=config.quantize)
        chat = target.processor if target.prompt_encoder is not None else target.tokenizer
        if not getattr(chat, "chat_template", None):
            raise SpecDecodeError(f"{target.name} has no chat template; Spec-Bench questions are chat turns, "
                                  "so benchmark an instruction-tuned (chat) model.")
        rag = None
        if config.store is not None:
            rag, options = rag_setup(config, target, names, options)
        draft_models = DraftModels(config.drafter_dtype, load, config.drafter_quantize)
        methods = build_methods(names, target, options, draft_models, config.model,
                                cost_model="auto" if config.cost_model else None)
        warm_up(methods, target, pending[0][0], config.warmup, min(WARMUP_TOKENS, config.max_new_tokens), rag)
        # 3. Questions in order; per question every pending method in order (plain first).
        by_name = {m.name: m for m in methods}
        bar = progress(len(pending)) if progress else None
        try:
            for question, name in pending:
                if bar:
                    bar.set_postfix_str(f"{question.category} {question.key}: {name.text}")
                turns = run_turns(by_name[name.text], question, target, config.max_new_tokens, rag)
                folder.append(make_record(question, name, turns, str(target.dtype).removeprefix("torch."),
                                          folder.find(question.key, "plain")))
                measured += 1
                if bar:
                    bar.update(1)
        except KeyboardInterrupt:
            interrupted = True  # every appended line is whole; the reports below cover what finished
        finally:
            if bar:
                bar.close()
    # 4. Reports over everything in the folder (this run and earlier ones).
    write_reports(folder, [n.text for n in names], environment())
    return BenchRun(folder, measured, interrupted)


def rag_setup(config: BenchConfig, target: LoadedModel, names: Sequence[MethodName],
              options: DrafterOptions) -> tuple[RagPrompts, DrafterOptions]:
    """With --store: the RAG prompts, and the store's span index for methods that use `retrieval`."""
    from ..retrieval import Datastore
    from ..retrieval.span_index import span_index

    store = Datastore.load(config.store)
    context = getattr(target.model.config, "max_position_embeddings", None)
    rag = RagPrompts(store, target.tokenizer, config.rag_k, context_tokens=context,
                     max_new_tokens=config.max_new_tokens)
    if any("retrieval" in drafter_kinds(n.text) for n in names if n.peer is None and n.text != "plain"):
        options = replace(options, corpus=span_index(store, target.tokenizer))
    return rag, options


def warm_up(methods: Sequence[Method], target: LoadedModel, question: Question, count: int, tokens: int,
            rag: RagPrompts | None = None) -> None:
    turn = rag(question.turns[0]) if rag else RagTurn(question.turns[0], ())
    prompt = encoded_turn(target, question, [{"role": "user", "content": turn.content}])
    for method in methods:
        for _ in range(count):
            method.run(prompt, tokens, turn.passages)


def loader_for(questions: Sequence[Question], load: Callable[..., LoadedModel] = load_model
                ) -> Callable[..., LoadedModel]:
    """What loads the target for these questions: load_vlm where any shows images, else `load`."""
    return load_vlm if any(q.images for q in questions) else load


def encoded_turn(target: LoadedModel, question: Question, messages: list[dict]) -> list[int] | EncodedPrompt:
    """The prompt of a turn: the chat so far, with the question's images in its first message."""
    if not question.images:
        return encode_prompt(target.tokenizer, messages)
    if target.prompt_encoder is None:
        raise SpecDecodeError(f"question {question.key} shows images; benchmark a vision-language model "
                              "(a VLM folder or hub id, or stand-in:NAME).")
    first = {"role": "user", "content": [*({"type": "image", "image": str(path)} for path in question.images),
                                         {"type": "text", "text": messages[0]["content"]}]}
    return target.prompt_encoder([first, *messages[1:]])


def run_turns(method: Method, question: Question, target: LoadedModel, max_new_tokens: int,
              rag: RagPrompts | None = None) -> list[TurnResult]:
    """Every turn of a question; turn n's prompt carries the method's own answers to turns < n.
    With `rag`, each turn's question is asked over the datastore (its passages go to the drafters)."""
    messages: list[dict] = []
    results = []
    for text in question.turns:
        turn = rag(text) if rag else RagTurn(text, ())
        messages.append({"role": "user", "content": turn.content})
        prompt = encoded_turn(target, question, messages)
        result = method.run(prompt, max_new_tokens, turn.passages)
        messages.append({"role": "assistant", "content": result.text})
        results.append(replace(result, prompt_tokens=len(prompt_tokens(prompt))))
    return results


def make_record(question: Question, name: MethodName, turns: Sequence[TurnResult], dtype: str,
                plain: dict | None) -> dict:
    """One results line; `plain` is plain's record for the question (None when it is plain's own)."""
    token_ids = [list(t.token_ids) for t in turns]
    forwards = [t.target_forwards for t in turns]
    record = {
        "question_id": question.key,
        "category": question.category,
        "method": name.text,
        "turns": len(turns),
        "prompt_tokens": [t.prompt_tokens for t in turns],  # per turn, chat template included
        "new_tokens": sum(len(ids) for ids in token_ids),
        "wall_s": sum(t.wall_s for t in turns),
        "prefill_s": None if any(t.prefill_s is None for t in turns) else sum(t.prefill_s for t in turns),
        "target_forwards": None if None in forwards else sum(forwards),
        "accept_histogram": add_histograms(t.accept_histogram for t in turns),
        "drafters": add_drafter_counts(t.drafters for t in turns),
        "dtype": dtype,
        "ids_hash": ids_hash(token_ids),
        "token_ids": token_ids,
        "identical": None,
        "divergence": None,
    }
    if name.text == "plain":
        record["identical"] = True
        record["top2_margins"] = [[round(m, 4) for m in t.top2_margins or ()] for t in turns]
    elif plain is not None:
        record["identical"] = token_ids == plain["token_ids"]
        record["divergence"] = None if record["identical"] else divergence(plain, token_ids)
    return record


def divergence(plain: dict, token_ids: list[list[int]]) -> dict:
    """The first turn and position where `token_ids` leave plain's, with plain's top-2 margin there."""
    for turn, (ref, other) in enumerate(zip(plain["token_ids"], token_ids)):
        if ref != other:
            position = next((i for i, (a, b) in enumerate(zip(ref, other)) if a != b), min(len(ref), len(other)))
            margins = plain.get("top2_margins", [])
            margin = margins[turn][position] if turn < len(margins) and position < len(margins[turn]) else None
            return {"turn": turn, "position": position,
                    "plain_token": ref[position] if position < len(ref) else None,
                    "token": other[position] if position < len(other) else None,
                    "plain_margin": margin}
    return {"turn": min(len(plain["token_ids"]), len(token_ids)), "position": 0, "plain_token": None,
            "token": None, "plain_margin": None}

