"""Benchmark methods: a name a user types, and what runs one turn of one question.

Ours: `plain` (our plain decoding) and every drafter name of `drafters.registry` (`lookup`,
`model:NAME`, ...), all through one SpeculativeGenerator per method on the same loaded target.
Peers, on the same loaded target: `hf-plain` (`model.generate`, greedy), `hf-static` (the same with
transformers' static cache, `cache_implementation="static"`, which it compiles on a GPU), `hf-assisted:NAME`
(`assistant_model=` NAME loaded in the target's dtype), `hf-lookup` (`prompt_lookup_num_tokens=10`). A
peer's target forwards are counted with a forward hook on the target module (the assistant is another
module); its prefill is the first forward of the target (and of the assistant), timed by hooks
(FirstForwards). `llama-cpp` (optional, needs llama-cpp-python) decodes the target's own GGUF file
with llama.cpp; `llama-cpp-lookup` the same with llama-cpp-python's speculative decoding
(`LlamaPromptLookupDecoding`, its defaults: drafts of up to 10 tokens copied after a matching 2-gram of
the context).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from ..drafters.registry import (DRAFTER_PATTERNS, MIXTURE_HELP, MODEL_SPEC_HELP, DrafterOptions, make_drafter,
                                 parse_drafters)
from ..engine import SpeculativeGenerator
from ..errors import SpecDecodeError
from ..models.load import LoadedModel, gguf_origin, load_model
from ..multimodal.vlm import is_vlm_spec, load_vlm_drafter
from ..pipelines.rag import hand_passages
from ..prompts import EncodedPrompt, eos_token_ids, prompt_tokens
from ..runtime.cpu.quantize import FBGEMM_MODES

PEERS = ("hf-plain", "hf-static", "hf-assisted", "hf-lookup", "llama-cpp", "llama-cpp-lookup")
LLAMA_CPP_PEERS = ("llama-cpp", "llama-cpp-lookup")
METHOD_NAMES = (f"plain, {', '.join(DRAFTER_PATTERNS)}, hf-plain, hf-static, hf-assisted:NAME, hf-lookup, llama-cpp, "
                f"llama-cpp-lookup ({MIXTURE_HELP}; {MODEL_SPEC_HELP})")
LLAMA_CPP_INSTALL = ('pip install llama-cpp-python (it compiles llama.cpp: needs a C++ compiler and cmake; '
                     'CMAKE_ARGS="-DGGML_NATIVE=ON" builds for this CPU)')
HF_LOOKUP_TOKENS = 10  # prompt_lookup_num_tokens, as in transformers' documentation


@dataclass(frozen=True)
class TurnResult:
    """One generation of one method: what a results line is built from."""

    token_ids: tuple[int, ...]
    text: str
    wall_s: float  # prefill + drafting + verification (no prompt tokenising, no text decoding)
    target_forwards: int | None  # forwards of the target that produced tokens (None: not counted)
    accept_histogram: tuple[int, ...] | None  # [a] = target forwards that accepted a draft tokens
    top2_margins: tuple[float, ...] | None  # greedy: target top-1 minus top-2 logit per token (ours)
    drafters: dict | None = None  # a mixture's per-drafter counts (GenerationStats.drafters; ours)
    prefill_s: float | None = None  # the prompt's prefill, part of wall_s (ours, HF's; None: not measured apart)
    prompt_tokens: int | None = None  # the prompt's length (the runner fills it in)


class Method(Protocol):
    name: str

    def run(self, prompt: list[int] | EncodedPrompt, max_new_tokens: int, passages: Sequence = ()) -> TurnResult:
        """One generation of a prompt (token ids, or an encoded image prompt); `passages` (retrieval.Passage,
        with --store) go to drafters that copy from them."""
        ...


@dataclass(frozen=True)
class MethodName:
    """A parsed method: `plain`, a drafter name, or a peer (`hf-assisted` takes a model)."""

    text: str
    peer: str | None = None  # one of PEERS, or None for ours (then `text` is a drafter name, "none" for plain)

    @classmethod
    def parse(cls, text: str) -> MethodName:
        value = text.strip()
        kind, colon, model = value.partition(":")
        if value == "plain":
            return cls(value)
        if kind in PEERS:
            if (kind == "hf-assisted") != bool(model.strip()):
                need = "needs a model after the colon, e.g. hf-assisted:qwen2.5-coder-0.5b-instruct" \
                    if kind == "hf-assisted" else "takes no model"
                raise SpecDecodeError(f"method {value!r}: {kind} {need}.")
            return cls(value, peer=kind)
        try:
            parts = parse_drafters(value)
        except SpecDecodeError:
            raise SpecDecodeError(f"unknown method {text!r}; valid methods: {METHOD_NAMES}.") from None
        if parts[0].kind == "none":
            raise SpecDecodeError(f"unknown method {text!r} (plain decoding is `plain`); valid methods: {METHOD_NAMES}.")
        return cls("+".join(str(part) for part in parts))

    @property
    def assistant(self) -> str:
        """hf-assisted's assistant model."""
        return self.text.partition(":")[2].strip()


def parse_methods(text: str | Sequence[str]) -> list[MethodName]:
    """Comma-separated method names -> parsed, `plain` first (added if missing: speedups need it)."""
    items = text.split(",") if isinstance(text, str) else list(text)
    names = [MethodName.parse(item) for item in items if item.strip()]
    if not names:
        raise SpecDecodeError(f"--methods is empty; valid methods: {METHOD_NAMES}.")
    texts = [n.text for n in names]
    duplicates = sorted({t for t in texts if texts.count(t) > 1})
    if duplicates:
        raise SpecDecodeError(f"method {', '.join(duplicates)} is listed twice in --methods.")
    plain = [n for n in names if n.text == "plain"] or [MethodName.parse("plain")]
    return plain + [n for n in names if n.text != "plain"]


class DraftModels:
    """Second models (drafters, assistants) loaded once per benchmark and shared between methods."""

    def __init__(self, dtype: str, load: Callable[..., LoadedModel] = load_model, quantize: str | None = None):
        self.dtype = dtype
        self.load = load
        self.quantize = quantize  # drafters and assistants alike, so that the peers compare like with like
        self.loaded: dict[tuple[str, str], LoadedModel] = {}

    def __call__(self, spec: str, target: LoadedModel, dtype=None) -> LoadedModel:
        dtype = self.dtype if dtype is None else dtype
        if self.quantize in FBGEMM_MODES:  # these layers compute in fp32, whatever the target's dtype
            dtype = "auto"
        key = (spec, str(dtype))
        if key in self.loaded:
            return self.loaded[key]
        if target.prompt_encoder is not None and is_vlm_spec(spec):  # a VLM drafter, in its draft weights
            self.loaded[key] = load_vlm_drafter(spec, target, quantize=self.quantize)
        else:
            self.loaded[key] = self.load(spec, dtype=dtype, device=target.device, quantize=self.quantize,
                                         drafts_only=True)
        return self.loaded[key]


class OurMethod:
    """Plain or speculative decoding through a SpeculativeGenerator."""

    def __init__(self, name: str, generator: SpeculativeGenerator, speculative: bool):
        self.name, self.generator, self.speculative = name, generator, speculative

    def run(self, prompt: list[int] | EncodedPrompt, max_new_tokens: int, passages: Sequence = ()) -> TurnResult:
        hand_passages(self.generator.drafter, self.generator.tokenizer, passages)
        out = self.generator.generate(prompt, max_new_tokens, speculative=self.speculative)
        return TurnResult(tuple(out.token_ids), out.text, out.stats.wall_s, out.stats.steps,
                          out.stats.accept_histogram, tuple(out.top2_margins), out.stats.drafters or None,
                          out.stats.prefill_s)


class HFMethod:
    """transformers' own `model.generate` (greedy), with extra keyword arguments for a peer method."""

    def __init__(self, name: str, target: LoadedModel, config: dict | None = None, **generate_kwargs):
        from transformers import GenerationConfig

        self.name, self.target, self.generate_kwargs = name, target, generate_kwargs
        eos = sorted(eos_token_ids(target.model, target.tokenizer))
        pad = target.tokenizer.pad_token_id if target.tokenizer.pad_token_id is not None else eos[0]
        # A fresh config: no sampling or repetition penalty inherited from the model's generation_config.
        self.config_kwargs = dict(do_sample=False, eos_token_id=eos, pad_token_id=pad, **(config or {}))
        self.config_class = GenerationConfig

    def run(self, prompt: list[int] | EncodedPrompt, max_new_tokens: int, passages: Sequence = ()) -> TurnResult:
        model = self.target.model  # transformers has no use for passages beyond the prompt
        prompt_ids = prompt_tokens(prompt)
        input_ids = torch.tensor([prompt_ids], device=self.target.device)  # [1, prompt]
        images = {name: value.to(self.target.device) for name, value in
                  (prompt.model_inputs.items() if isinstance(prompt, EncodedPrompt) else ())}
        config = self.config_class(max_new_tokens=max_new_tokens, **self.config_kwargs)
        forwards = []
        hook = model.register_forward_hook(lambda *_: forwards.append(1))
        assistant = self.generate_kwargs.get("assistant_model")
        prefill = FirstForwards([model] + ([assistant] if assistant is not None else []), self.target.device)
        try:
            start = time.perf_counter()
            with torch.inference_mode():
                output = model.generate(input_ids, attention_mask=torch.ones_like(input_ids),
                                        generation_config=config, **images, **self.generate_kwargs)
            wall_s = time.perf_counter() - start
        except ValueError as e:
            if not (images and assistant is not None):
                raise
            raise SpecDecodeError(f"{self.name} cannot run image prompts here: transformers hands the image inputs "
                                  f"to its assistant, which refuses them ({str(e).splitlines()[0][:160]}); use an "
                                  "assistant VLM of the target's family, or drop it from --methods.") from e
        finally:
            hook.remove()
            prefill.remove()
        token_ids = tuple(output[0, len(prompt_ids):].tolist())
        text = self.target.tokenizer.decode(token_ids, skip_special_tokens=True)
        return TurnResult(token_ids, text, wall_s, len(forwards), None, None, prefill_s=prefill.seconds())


class FirstForwards:
    """Times the first forward of each module inside a generate call (pre-hook to hook, CUDA synchronised
    around it): HF's prefill. The target's first forward takes the whole prompt (with hf-lookup and
    hf-assisted also the first step's draft) and yields the first new token; hf-assisted's assistant
    takes the prompt in its first forward too. What generate does around them counts as decoding."""

    def __init__(self, modules: Sequence[torch.nn.Module], device: torch.device | str = "cpu",
                 clock: Callable[[], float] = time.perf_counter):
        self.clock, self.cuda = clock, torch.device(device).type == "cuda"
        self.spans: dict[int, list[float]] = {}  # module index -> [start, end]
        self.handles = []
        for index, module in enumerate(modules):
            self.handles.append(module.register_forward_pre_hook(lambda *_, i=index: self._mark(i, 0)))
            self.handles.append(module.register_forward_hook(lambda *_, i=index: self._mark(i, 1)))
        self.modules = len(modules)

    def _mark(self, index: int, edge: int) -> None:
        span = self.spans.setdefault(index, [])
        if len(span) == edge:  # the first forward's start, then its end; later forwards are decoding
            if self.cuda:
                torch.cuda.synchronize()
            span.append(self.clock())

    def seconds(self) -> float | None:
        """The first forwards' seconds, summed (None: a module never finished a forward)."""
        if len(self.spans) < self.modules or any(len(span) < 2 for span in self.spans.values()):
            return None
        return sum(end - start for start, end in self.spans.values())

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


class LlamaCppMethod:
    """llama.cpp's greedy decoding (llama-cpp-python) of the GGUF file the target was loaded from: its
    own quantized kernels, so tokens/s are comparable in absolute terms; its token ids may differ from
    ours, which decode the dequantized weights (the identical flag says so). `lookup`: with
    llama-cpp-python's prompt-lookup speculative decoding (its batched verification is not bit-equal to
    its one-token steps, so its tokens may differ from its own plain decoding too)."""

    def __init__(self, name: str, gguf: Path, target: LoadedModel, lookup: bool = False):
        try:
            from llama_cpp import Llama
        except ImportError:
            raise SpecDecodeError(f"method {name} needs llama-cpp-python: {LLAMA_CPP_INSTALL}.") from None
        threads = torch.get_num_threads()
        self.name, self.tokenizer, self.lookup = name, target.tokenizer, lookup
        self.eos = eos_token_ids(target.model, target.tokenizer)
        options = {}
        if lookup:
            from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

            # logits of every fed token, which its verification reads: llama-cpp-python forces this on with a
            # draft model but (0.3.36) sizes its logits buffer from the argument, failing past n_batch tokens
            options.update(draft_model=LlamaPromptLookupDecoding(), logits_all=True)
        self.llm = Llama(model_path=str(gguf), n_ctx=8192, n_threads=threads, n_threads_batch=threads, verbose=False,
                         **options)

    def run(self, prompt: list[int] | EncodedPrompt, max_new_tokens: int, passages: Sequence = ()) -> TurnResult:
        if isinstance(prompt, EncodedPrompt) and prompt.model_inputs:
            raise SpecDecodeError(f"method {self.name} takes text prompts only; drop it for an image suite.")
        prompt_ids = prompt_tokens(prompt)
        token_ids: list[int] = []
        start = time.perf_counter()
        for token in self.llm.generate(prompt_ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0,
                                       reset=True):
            token_ids.append(int(token))
            if token in self.eos or len(token_ids) >= max_new_tokens:
                break
        wall_s = time.perf_counter() - start
        text = self.tokenizer.decode(token_ids, skip_special_tokens=True)
        forwards = None if self.lookup else len(token_ids)  # its verifications are not counted: no tau
        return TurnResult(tuple(token_ids), text, wall_s, forwards, None, None)


def check_peers_available(names: Sequence[MethodName], model_spec: str) -> None:
    """Fail before any model loads when an optional peer cannot run."""
    llama = [n.text for n in names if n.peer in LLAMA_CPP_PEERS]
    if llama:
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            raise SpecDecodeError(f"method {llama[0]} needs llama-cpp-python: {LLAMA_CPP_INSTALL}.") from None
        gguf_file(model_spec, llama[0])


def gguf_file(spec: str, method: str = "llama-cpp") -> Path:
    """The GGUF a model spec names: a zoo model's own file, or a .gguf path."""
    path = gguf_origin(spec)
    if path is not None:
        return path
    raise SpecDecodeError(f"method {method} runs a GGUF file; --model {spec!r} is neither a zoo model nor a "
                          f".gguf file. Pass the .gguf file as --model, or drop {method} from --methods.")


def build_methods(names: Sequence[MethodName], target: LoadedModel, options: DrafterOptions,
                  draft_models: DraftModels, model_spec: str | None = None, *,
                  cost_model: str | None = "auto") -> list[Method]:
    """The runnable methods, in order, all on `target` (`model_spec`: what --model named, for llama-cpp;
    `cost_model`: our generators' draft sizing, see SpeculativeGenerator)."""
    methods: list[Method] = []
    for name in names:
        if name.peer in LLAMA_CPP_PEERS:
            methods.append(LlamaCppMethod(name.text, gguf_file(model_spec or target.name, name.text), target,
                                          lookup=name.peer == "llama-cpp-lookup"))
        elif name.peer == "hf-plain":
            methods.append(HFMethod(name.text, target))
        elif name.peer == "hf-static":
            methods.append(HFMethod(name.text, target, {"cache_implementation": "static"}))
        elif name.peer == "hf-lookup":
            methods.append(HFMethod(name.text, target, {"prompt_lookup_num_tokens": HF_LOOKUP_TOKENS}))
        elif name.peer == "hf-assisted":
            # HF's assistant in the target's dtype, as its documentation loads it (a bf16 assistant on a
            # CPU without native bf16 would prefill far slower, which is not HF's fault); with FBGEMM
            # drafter weights (w8a8), the same weights as our drafters, computing in fp32 (DraftModels).
            assistant = draft_models(name.assistant, target, dtype=target.dtype)
            methods.append(HFMethod(name.text, target, assistant_model=assistant.model))
        else:
            drafter = make_drafter("none" if name.text == "plain" else name.text, target, options, draft_models)
            # every turn prefilled whole, as the peers do (a user's generator reuses a shared prompt's chunks)
            generator = SpeculativeGenerator(target, drafter=drafter, cost_model=cost_model, attention=options.attention,
                                             reuse_prompt=False)
            methods.append(OurMethod(name.text, generator, speculative=drafter is not None))
    return methods
