"""SpeculativeGenerator: prefill, then propose -> verify -> accept -> commit until a stop.

The whole loop is `_decode`. Bookkeeping: the committed sequence is prompt + generated tokens; the
target's KV cache holds every committed token except the last one (the "pending" token). Each step
feeds [pending] + the draft tree in ONE target forward, accepts a path, keeps only the committed
tokens' KV entries (one cache operation), and commits the path plus the target's own next token.
Plain decoding (`speculative=False`, or no drafter) is the same loop with an empty draft, so both
share prefill, cache and stopping code. Words: a step's `fed` tokens are the pending token and the
draft; its forward has `rows` >= fed (padding to a row count the machine runs faster).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from .drafters.base import Drafter, check_drafter, drafter_name, optional_part
from .errors import SpecDecodeError
from .models.load import load_model, output_vocab_size
from .policy import DraftSizer, ForwardCosts, SizerSettings
from .runtime.cache import KVCache
from .runtime.calibrate import Calibration
from .runtime.runner import AttentionBackend, select_backend
from .outputs import GenerationOutput, GenerationStats, Step, Tally
from .prompts import EncodedPrompt, StopChecker, encode_prompt, eos_token_ids, has_images
from .sampling import SamplingParams
from .tree import DraftTree
from .verifiers import accept


@dataclass(frozen=True)
class Request:
    """One validated generation request."""

    prompt_ids: list[int]
    max_new_tokens: int
    sampling: SamplingParams
    seed: int | None
    stop: tuple[str, ...]
    speculative: bool
    on_prefill: Callable[[int, int], None] | None = None  # (prompt tokens prefilled, of total) after each chunk
    images: EncodedPrompt | None = None  # an image prompt's encoding: the prompt forward's inputs, its positions


@dataclass
class _Run:
    """What a finished (or stopped) decode leaves behind."""

    generated: list[int] = field(default_factory=list)
    margins: list[float] = field(default_factory=list)
    stop_reason: str = "max_new_tokens"
    tally: Tally = field(default_factory=Tally)
    cache: KVCache | None = None  # the target's cache: every committed token but the last
    sizer: DraftSizer | None = None  # the cost model's draft sizes (speculative runs with a cost model)


@dataclass(frozen=True)
class _Prefilled:
    """The last text prompt's prefill: its tokens and the cache whose first len(token_ids) entries hold them."""

    token_ids: tuple[int, ...]
    cache: KVCache


class SpeculativeGenerator:
    """Lossless speculative generation with any transformers causal LM.

    target: a LoadedModel, a spec for `load_model`, or a transformers model (with `tokenizer=`;
        without one, prompts must be token ids).
    drafter: any Drafter (ModelDrafter, LookupDrafter, your own); None means plain decoding.
    max_draft_tokens: cap on the nodes of one draft tree (one verification forward feeds 1 + that).
    attention: the tree-attention backend: "sdpa" (one masked call per layer); "flash" (a draft's tokens
        attend to the cached prefix through FlashAttention's kernel and to each other under the tree mask, merged
        by log-sum-exp; targets that are not exact); "auto" (on a GPU, per step whichever of the two was measured
        faster at the step's context and size; "sdpa" on a CPU); "graphs" (steps at static shapes on
        preallocated KV buffers, recorded as CUDA graphs on a GPU; "graphs:16" feeds every step 16 rows); or a
        backend object (runtime.runner.AttentionBackend).
    pad_verification: on CPU, pad a verification forward with a few ignored tokens up to a row count
        that this machine's matmuls run measurably faster (calibrated once per model and machine); the
        output is unchanged. False turns it off; a list gives the table itself (padded row count for each
        count, by index). An exact target's one-token steps (plain decoding included) are fed at the row
        count whose whole forward was measured cheapest (its forward costs), each row keeping its bits.
    cost_model: "auto" sizes each draft from the target's forward costs on this machine (calibrated once,
        runtime/calibrate.py) and the acceptance seen so far (policy.py), drafting nothing where no draft pays;
        a ForwardCosts gives the timings; None lets the drafter alone decide (up to max_draft_tokens).
    draft_policy: the cost model's settings (policy.SizerSettings: the acceptance prior, its decays).
    prefill_chunk: the prompt is prefilled in forwards of at most this many tokens (bounds the memory of a
        long document's attention; plain and speculative decoding prefill alike).
    reuse_prompt: keep the last text prompt's cache and start the next prompt's prefill after the chunks they
        share (the whole prompt when it is the same), which hold bit for bit what prefilling them again would
        compute: a document summarized again, or compared plain vs speculative, is prefilled once. The cache
        stays in memory between calls; False frees it and prefills every prompt whole.
    clock: what the engine times prefill, drafting and verification with (seconds; tests inject their own).
    """

    def __init__(self, target, drafter: Drafter | None = None, *, tokenizer=None, max_draft_tokens: int = 64,
                 attention: str | AttentionBackend = "auto", pad_verification: bool | Sequence[int] = True,
                 cost_model: str | ForwardCosts | None = "auto", draft_policy: SizerSettings = SizerSettings(),
                 prefill_chunk: int = 2048, reuse_prompt: bool = True,
                 clock: Callable[[], float] = time.perf_counter):
        self.target = load_model(target, tokenizer=tokenizer)
        self.model = self.target.model
        self.tokenizer = self.target.tokenizer
        self.drafter = drafter
        if max_draft_tokens < 1:
            raise SpecDecodeError(f"max_draft_tokens must be >= 1, got {max_draft_tokens}.")
        self.attention = select_backend(attention) if isinstance(attention, str) else attention
        # an exact target keeps every forward inside the widest one whose rows keep their bits, and a backend
        # that feeds every step at one width inside that width (None: any)
        limits = [rows for rows in (self.target.max_exact_rows if self.target.exact_steps else None,
                                    getattr(self.attention, "max_rows", None)) if rows]
        self.max_rows = min(limits) if limits else None
        self.max_draft_tokens = min(max_draft_tokens, self.max_rows - 1) if self.max_rows else max_draft_tokens
        self.calibration = self.target.calibration or Calibration.for_model(
            self.model, quantization=self.target.quantization)
        if drafter is not None:
            check_drafter(drafter)
            check_target = optional_part(drafter, "check_target")
            if check_target is not None:
                check_target(self.target)
        self.eos_ids = eos_token_ids(self.model, self.tokenizer)
        self.vocab_size = output_vocab_size(self.model)
        self.max_positions = getattr(self.model.config, "max_position_embeddings", None)
        self.pad_verification = bool(pad_verification)
        self._padded = None if isinstance(pad_verification, bool) else list(pad_verification)
        self._one_token_rows: int | None = None  # an exact target's one-token steps: rows fed (None: not chosen yet)
        if not (cost_model in ("auto", None) or isinstance(cost_model, ForwardCosts)):
            raise SpecDecodeError(f"cost_model must be 'auto', None or a ForwardCosts, got {cost_model!r}.")
        self.cost_model = cost_model
        self.draft_policy = draft_policy
        if not isinstance(prefill_chunk, int) or prefill_chunk < 1:
            raise SpecDecodeError(f"prefill_chunk must be a whole number of tokens >= 1, got {prefill_chunk!r}.")
        self.prefill_chunk = prefill_chunk
        self.reuse_prompt = reuse_prompt
        self._prefilled: _Prefilled | None = None
        self.clock = clock

    # ------------------------------------------------------------------ public API
    def generate(self, prompt, max_new_tokens: int = 128, **options) -> GenerationOutput:
        """Generate from a string, chat messages, token ids or, for a vision-language target (sd.load_vlm),
        an image prompt ({"images": [...], "prompt": ...} or chat messages with image parts). Options:
        temperature, top_p, top_k, seed, stop (str or list), speculative (False = plain decoding), verifier
        ("auto"), on_prefill (called with (tokens prefilled, total) after each prefill chunk: a progress display)."""
        request = self._request(prompt, max_new_tokens, **options)
        run = _Run()
        for _ in self._decode(request, run):
            pass
        return self._output(request, run)

    def stream(self, prompt, max_new_tokens: int = 128, **options) -> Generator[str, None, GenerationOutput]:
        """Yield text pieces as tokens are committed (same options as `generate`). The generator's
        return value is the GenerationOutput (`output = yield from gen.stream(...)`)."""
        request = self._request(prompt, max_new_tokens, **options)
        if self.tokenizer is None:
            raise SpecDecodeError("stream() needs a tokenizer to produce text; use generate() with token ids.")
        stops = StopChecker(self.tokenizer, request.stop)
        run = _Run()
        emitted = 0
        for _ in self._decode(request, run):
            text = stops.visible_text(run.generated, final=False)
            if len(text) > emitted:
                yield text[emitted:]
                emitted = len(text)
        text = stops.visible_text(run.generated, final=True)
        if len(text) > emitted:
            yield text[emitted:]
        return self._output(request, run)

    # ------------------------------------------------------------------ the loop
    @torch.inference_mode()
    def _decode(self, request: Request, run: _Run) -> Iterator[list[int]]:
        """Yield the tokens committed by each step; fill `run` as it goes."""
        model, tally, clock = self.model, run.tally, self.clock
        generator = torch.Generator()  # the user's global torch RNG is never touched
        if request.seed is not None:
            generator.manual_seed(request.seed)
        else:
            generator.seed()  # fresh entropy
        drafter = self.drafter if request.speculative else None
        self._prepare(speculative=drafter is not None)  # calibration: before the clock starts
        stops = StopChecker(self.tokenizer, request.stop)
        committed = list(request.prompt_ids)
        images = request.images
        cache, reused = self._cache_for(committed[:-1], images)
        run.cache, tally.reused_prompt_tokens = cache, reused
        started = clock()

        # Prefill every prompt token but the last (the pending token is fed with the first draft);
        #    plain and speculative decoding prefill alike, so exact models may batch its attention.
        #    A drafter feeds the prompt to its own state (a model drafter: its cache) in `begin`.
        self._prefill(cache, committed[:-1], request.on_prefill, images, start=reused)
        if self.reuse_prompt and images is None:  # entries below the pending token's are never changed after
            self._prefilled = _Prefilled(tuple(committed[:-1]), cache)
        if drafter is not None:
            read_target_cache = optional_part(drafter, "read_target_cache")
            if read_target_cache is not None:  # a self-drafter gathers its draft cache from the target's
                read_target_cache(cache)
            read_images = optional_part(drafter, "read_images")
            if read_images is not None:  # a VLM drafter sees the images too (None: a text prompt)
                read_images(images)
            drafter.begin(request.prompt_ids, sampling=request.sampling, generator=generator)
            run.sizer = self._sizer()
        tally.prefill_s = clock() - started

        while True:
            # 1. Propose: a tree of at most `budget` nodes after the committed tokens; the draft policy
            #    picks the size with the most expected tokens per second (0: a plain step).
            #    A drafter that prices its nodes drafts as deep as its own probabilities pay for instead.
            tick = clock()
            budget = min(self.max_draft_tokens, request.max_new_tokens - len(run.generated) - 1)
            prices = {}
            if run.sizer is not None and budget > 0:
                sized = run.sizer.budget(budget)
                if sized and self.draft_policy.node_prices and optional_part(drafter, "prices_nodes", False):
                    prices = {"prices": run.sizer.prices()}
                else:
                    budget = sized
            tree = DraftTree.empty()
            if drafter is not None and budget > 0:
                tree = self._checked(drafter.propose(committed, budget, **prices), drafter).truncated(budget)
            proposed = clock()

            # 2. Verify: one target forward over [pending] + tree (tree attention, depth positions).
            past, fed = cache.length, 1 + len(tree)
            rows = self._padded_size(fed)
            target_logits = self.attention.verify(model, cache, tree, committed[-1], rows)  # [fed, vocab]

            # 3. Accept: the longest path the target agrees with, plus the target's own next token.
            acceptance = accept(tree, target_logits, request.sampling, generator)
            new_tokens = [tree.token_list[node] for node in acceptance.accepted] + [acceptance.next_token]
            cut, reason = stops.first_stop(run.generated, new_tokens, self.eos_ids, request.max_new_tokens)
            new_tokens = new_tokens[:cut]

            # 4. Commit: the tokens up to a stop; the cache keeps their entries (pending + accepted path).
            committed_rows = acceptance.rows[:cut]
            cache.keep(past, committed_rows)
            committed.extend(new_tokens)
            run.generated.extend(new_tokens)
            if request.sampling.greedy:
                run.margins.extend(_top2_margins(target_logits[committed_rows]))
            accepted = min(len(acceptance.accepted), cut)  # a stop may cut inside the accepted path
            last = acceptance.accepted[-1] if acceptance.accepted else -1
            recovered = cut > len(acceptance.accepted) and bool(tree.children.get(last))
            step = Step(drafted=len(tree), depth=tree.depth, accepted=accepted, recovered=recovered, rows=rows,
                        draft_s=proposed - tick, verify_s=clock() - proposed)
            tally.record(step)
            if run.sizer is not None:
                run.sizer.observe(step)
            if drafter is not None:
                drafter.accept(new_tokens)
            tally.wall_s = clock() - started
            yield new_tokens
            if reason is not None:
                run.stop_reason = reason
                return

    # ------------------------------------------------------------------ helpers
    def _cache_for(self, token_ids: list[int], images: EncodedPrompt | None) -> tuple[KVCache, int]:
        """A cache for prefilling `token_ids` and how many of them it holds already: the last prompt's cache
        cut to the whole chunks the two share (all of it for the same tokens), which a new prefill would
        compute alike, chunk for chunk; else a new cache. The last prompt's record is taken either way, so a
        prefill that fails leaves nothing half-written to reuse."""
        last, self._prefilled = self._prefilled, None
        if self.reuse_prompt and images is None and last is not None:
            shared = next((i for i, (a, b) in enumerate(zip(last.token_ids, token_ids)) if a != b),
                          min(len(last.token_ids), len(token_ids)))
            if shared != len(last.token_ids) or shared != len(token_ids):
                shared -= shared % self.prefill_chunk  # a chunk of other length rounds apart: prefilled again
            if shared:
                last.cache.crop(shared)
                return last.cache, shared
        return KVCache(self.model, position_shift=images.position_shift if images else 0), 0

    def _prefill(self, cache: KVCache, token_ids: list[int], on_prefill: Callable[[int, int], None] | None,
                 images: EncodedPrompt | None = None, start: int = 0) -> None:
        """Feed the prompt (all but the pending token) from token `start` (the cache holds those before) in
        chunks of `prefill_chunk` tokens at multiples of it, so that a long document's attention memory stays
        bounded; `on_prefill(done, total)` after each chunk. An image prompt is one forward with its images'
        inputs (the model matches its image tokens to the images) and its own positions where it has them
        (M-RoPE)."""
        total = len(token_ids)
        chunk = max(total, 1) if images is not None else self.prefill_chunk
        positions = images.positions if images is not None else None  # [sections, prompt] or None
        for start in range(start, total, chunk):
            end = min(total, start + chunk)
            fed_positions = torch.arange(start, end) if positions is None else positions[:, start:end]
            self.attention.forward(self.model, cache, torch.tensor(token_ids[start:end]), fed_positions,
                                   hidden=True, prefill=True, model_inputs=images.model_inputs if images else None)
            if on_prefill is not None:
                on_prefill(end, total)

    def _prepare(self, speculative: bool) -> None:
        """Run what is calibrated or probed once (from the cache where it was measured before), so that no
        generation's timings include it: the runner's check of its lean forward, for speculative decoding the
        forward costs and the padding table, and for an exact target the rows of its one-token steps."""
        self.attention.prepare(self.model)
        if speculative and self.cost_model == "auto":
            self.cost_model = self.calibration.forward_costs(self.model, self.attention)
        if self.target.exact_steps and self.pad_verification and self._one_token_rows is None:
            # an exact target's every row keeps its bits among others: a one-token step takes the cheapest width
            # (cost_model=None: no timings are used, the step stays one row)
            costs = self.cost_model if self.cost_model != "auto" else \
                self.calibration.forward_costs(self.model, self.attention)
            self._one_token_rows = costs.cheapest_rows(1, self.max_rows) if costs is not None else 1
        if speculative and self.pad_verification and self._padded is None:
            self._padded = self.attention.padded_sizes(self.model, self.calibration)

    def _sizer(self) -> DraftSizer | None:
        return DraftSizer(self.cost_model, self.draft_policy) if isinstance(self.cost_model, ForwardCosts) else None

    def _padded_size(self, fed: int) -> int:
        """The cheapest row count >= fed for a verification forward, within the exact width; a one-token step's
        only for an exact target (measured on whole forwards: _prepare), whose row keeps its bits among others."""
        if fed == 1:
            return self._one_token_rows or 1
        if not self.pad_verification or self._padded is None or fed >= len(self._padded):
            return fed
        size = self._padded[fed]
        return fed if self.max_rows and size > self.max_rows else size

    def _drafter_report(self) -> dict | None:
        report = optional_part(self.drafter, "report")
        return report() if report is not None else None

    def _checked(self, tree: DraftTree, drafter: Drafter) -> DraftTree:
        if not isinstance(tree, DraftTree):
            raise SpecDecodeError(f"drafter {drafter_name(drafter)!r} returned {type(tree).__name__}, not a DraftTree.")
        if len(tree) and (int(tree.tokens.min()) < 0 or int(tree.tokens.max()) >= self.vocab_size):
            raise SpecDecodeError(
                f"drafter {drafter_name(drafter)!r} proposed token ids outside the target's vocabulary "
                f"[0, {self.vocab_size}): {tree.token_list}; fix the drafter's token mapping."
            )
        return tree

    def _request(self, prompt, max_new_tokens: int, *, temperature: float = 0.0, top_p: float = 1.0,
                 top_k: int = 0, seed: int | None = None, stop: str | Sequence[str] | None = None,
                 speculative: bool = True, verifier: str = "auto",
                 on_prefill: Callable[[int, int], None] | None = None) -> Request:
        if not isinstance(max_new_tokens, int) or max_new_tokens <= 0:
            raise SpecDecodeError(f"max_new_tokens must be a positive whole number, got {max_new_tokens!r}.")
        sampling = SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k)
        expected = "greedy" if sampling.greedy else "sampling"
        if verifier not in ("auto", expected):
            raise SpecDecodeError(
                f"verifier={verifier!r} does not match temperature={temperature}: temperature 0 verifies with "
                "'greedy', temperature > 0 with 'sampling' (or pass verifier='auto')."
            )
        if has_images(prompt):
            if self.target.prompt_encoder is None:
                raise SpecDecodeError(f"{self.target.name} takes no images; load a vision-language model with "
                                      "sd.load_vlm(...) to pass images, or give a text prompt.")
            prompt = self.target.prompt_encoder(prompt)
        if not isinstance(prompt, EncodedPrompt):
            prompt = EncodedPrompt(tuple(encode_prompt(self.tokenizer, prompt)))
        prompt_ids = list(prompt.token_ids)
        if self.max_positions and len(prompt_ids) + max_new_tokens > self.max_positions:
            raise SpecDecodeError(
                f"the prompt ({len(prompt_ids)} tokens) plus max_new_tokens ({max_new_tokens}) exceeds the "
                f"model's context of {self.max_positions} tokens; shorten the prompt or lower max_new_tokens."
            )
        stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
        if any(not isinstance(s, str) or not s for s in stops):
            raise SpecDecodeError(f"stop strings must be non-empty strings, got {stop!r}.")
        return Request(prompt_ids, max_new_tokens, sampling, seed, stops, speculative, on_prefill,
                       prompt if prompt.model_inputs else None)

    def _output(self, request: Request, run: _Run) -> GenerationOutput:
        text = ""
        if self.tokenizer is not None:
            text = StopChecker(self.tokenizer, request.stop).visible_text(run.generated, final=True)
        return GenerationOutput(
            text=text,
            token_ids=run.generated,
            prompt_ids=request.prompt_ids,
            stop_reason=run.stop_reason,
            stats=GenerationStats.from_tally(run.tally, len(run.generated),
                                             self._drafter_report() if request.speculative else None,
                                             run.sizer.report() if run.sizer is not None else None),
            top2_margins=run.margins,
        )


def _top2_margins(logits: torch.Tensor) -> list[float]:
    """logits [rows, vocab] -> top-1 minus top-2 logit per row."""
    top2 = logits.float().topk(2, dim=-1).values  # [rows, 2]
    return (top2[:, 0] - top2[:, 1]).tolist()
