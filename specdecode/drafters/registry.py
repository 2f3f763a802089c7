"""Drafters by name: the one place where a name a user types (`lookup`, `retrieval`, `model:NAME[:WINDOW]`,
`self[:KV[:WEIGHTS]]`, or several joined with `+` for a MixtureDrafter, e.g. `retrieval+model:NAME`) becomes a drafter.
The CLI's `--drafter` and the benchmark's `--methods` both read it, so a drafter added here is
usable from both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import SpecDecodeError
from ..models.load import LoadedModel, load_model
from ..runtime.runner import select_backend
from .base import Drafter
from .lookup import LookupDrafter
from .mixture import MixtureDrafter
from .model import ModelDrafter
from .prompt_window import DEFAULT_CONTEXT_WINDOW, SINKS
from .self import KV_POLICIES, WEIGHTS, SelfDrafter
from .retrieval import RetrievalDrafter
from .suffix import SuffixIndex

DRAFTER_PATTERNS = ("lookup", "retrieval", "model:NAME[:WINDOW]", "self[:KV[:WEIGHTS[:BUDGET]]]")  # what a user types for each drafter
MODEL_SPEC_HELP = ("NAME: a zoo name, model folder, .gguf file or hub id, WINDOW: prompt tokens the drafter sees (default 2048, or all); self: the target drafts for itself, KV: "
                   f"{'/'.join(KV_POLICIES)}, WEIGHTS: {'/'.join(w for w in WEIGHTS)}/own, BUDGET: prompt entries kept")
MIXTURE_HELP = "A+B merges the drafts of A and B into one tree"
DRAFTER_NAMES = f"none, {', '.join(DRAFTER_PATTERNS)} ({MIXTURE_HELP}; {MODEL_SPEC_HELP})"
KINDS_WITH_MODEL = ("model",)  # kinds written KIND:MODEL
KINDS_WITH_OPTIONS = ("self",)  # kinds written KIND[:OPTION[:OPTION]]
KINDS = ("none", "lookup", "retrieval", *KINDS_WITH_MODEL, *KINDS_WITH_OPTIONS)

LoadDraft = Callable[[str, LoadedModel], LoadedModel]  # (model spec, target) -> the drafter's model


@dataclass(frozen=True)
class DrafterName:
    """A parsed drafter name: `kind`, `kind:model[:window]` or `kind:options`."""

    kind: str  # one of KINDS
    model: str | None = None  # the drafter model's spec (KINDS_WITH_MODEL), or the options (KINDS_WITH_OPTIONS)
    window: int | None = DEFAULT_CONTEXT_WINDOW  # KINDS_WITH_MODEL: the prompt tokens the drafter sees (None: all)

    @classmethod
    def parse(cls, text: str) -> DrafterName:
        value = text.strip()
        kind, colon, model = value.partition(":")
        kind, model = kind.strip(), model.strip()
        if kind not in KINDS:
            raise SpecDecodeError(f"unknown drafter {text!r}; use {DRAFTER_NAMES}.")
        if kind in KINDS_WITH_MODEL and not model:
            raise SpecDecodeError(
                f"drafter {kind}: needs a model after the colon, e.g. {kind}:qwen2.5-coder-0.5b-instruct."
            )
        if kind in KINDS_WITH_OPTIONS and colon:
            self_options(model)  # checked now, before any model loads
        elif kind not in KINDS_WITH_MODEL and colon:
            raise SpecDecodeError(f"drafter {kind!r} takes no model; use {DRAFTER_NAMES}.")
        spec, _, window = model.rpartition(":")
        if kind in KINDS_WITH_MODEL and spec and (window.isdigit() or window == "all"):  # no model spec ends so
            if window.isdigit() and int(window) <= 2 * SINKS:
                raise SpecDecodeError(f"drafter {text!r}: the window (prompt tokens the drafter sees) must be more "
                                      f"than {2 * SINKS}, e.g. {kind}:{spec}:2048, or `all`.")
            return cls(kind, spec, int(window) if window.isdigit() else None)
        return cls(kind, model or None)

    def __str__(self) -> str:
        if not self.model:
            return self.kind
        window = "" if self.window == DEFAULT_CONTEXT_WINDOW else f":{self.window or 'all'}"
        return f"{self.kind}:{self.model}{window}"


@dataclass(frozen=True)
class DrafterOptions:
    """How to shape the drafts of a named drafter."""

    k: int | None = None  # draft depth; None adapts it from acceptance
    tree_width: int = 1  # of our drafters' trees; 1 = a chain
    drafter_dtype: str = "fast-decode"  # drafts never change the output, so a model drafter may use its own
    drafter_quantize: str | None = "auto"  # drafter model weights: "auto" (measured fastest), "w8a8", ..., None
    corpus: SuffixIndex | None = field(default=None, compare=False)  # `retrieval` also copies from this corpus
    context_head: int | None = None  # of a windowed prompt, the first tokens a model drafter sees (None: half)
    attention: str = "auto"  # the backend a model drafter's forwards run through (runtime.runner.select_backend)

    def __post_init__(self):
        if self.k is not None and self.k < 1:
            raise SpecDecodeError(f"k must be >= 1 (omit it for an adaptive draft length), got {self.k}.")
        if self.tree_width < 1:
            raise SpecDecodeError(f"tree width must be >= 1 (1 = a chain), got {self.tree_width}.")
        select_backend(self.attention)  # an unknown name raises here, before anything loads


def default_load_draft(spec, target: LoadedModel, dtype: str = "fast-decode",
                       quantize: str | None = "auto") -> LoadedModel:
    """Load a drafter model on the target's device (a LoadedModel is returned as is); by default in its
    fastest decoding dtype and weights (load_model's "fast-decode" and quantize="auto")."""
    return load_model(spec, dtype=dtype, device=target.device, quantize=quantize, drafts_only=True)


@dataclass(frozen=True)
class SelfOptions:
    """`self`'s options, as written after `self:`."""

    kv: str = "snapkv"
    weights: str | None = "auto"  # None: the target's own weights (written `own`)
    kv_budget: int | None = None  # None: SelfDrafter's default


def self_options(text: str | None) -> SelfOptions:
    """`self`'s options `KV[:WEIGHTS[:BUDGET]]`; defaults snapkv, "auto" and SelfDrafter's budget; WEIGHTS
    `own` drafts with the target's own weights; BUDGET the prompt entries kept per KV head."""
    parts = [part.strip() for part in (text or "").split(":")]
    kv = parts[0] or "snapkv"
    weights = (parts[1] if len(parts) > 1 else "") or "auto"
    budget = parts[2] if len(parts) > 2 else ""
    if len(parts) > 3 or kv not in KV_POLICIES or weights not in (*WEIGHTS, "own") or (
            budget and not (budget.isdigit() and int(budget) > 0)):
        raise SpecDecodeError(f"drafter self:{text}: use self[:KV[:WEIGHTS[:BUDGET]]] with KV one of "
                              f"{', '.join(KV_POLICIES)}, WEIGHTS one of {', '.join(WEIGHTS)}, own, and BUDGET a "
                              "whole number of entries > 0 (e.g. self:snapkv:w8a8 or self:snapkv:w8a8:512).")
    return SelfOptions(kv, None if weights == "own" else weights, int(budget) if budget else None)


def parse_drafters(text: str) -> tuple[DrafterName, ...]:
    """`A+B+...` -> the parsed parts (one part for a single drafter)."""
    parts = tuple(DrafterName.parse(part) for part in text.split("+"))
    if len(parts) > 1 and any(p.kind == "none" for p in parts):
        raise SpecDecodeError(f"drafter {text!r}: `none` cannot be part of a mixture.")
    return parts


def drafter_kinds(text: str) -> set[str]:
    """The kinds a drafter name uses (`retrieval+model:X` -> {"retrieval", "model"})."""
    return {part.kind for part in parse_drafters(text)}


def make_drafter(name: DrafterName | str, target: LoadedModel, options: DrafterOptions = DrafterOptions(),
                 load_draft: LoadDraft | None = None) -> Drafter | None:
    """The drafter `name` denotes (None for `none`; a MixtureDrafter for `A+B`). `load_draft(spec,
    target)` loads a drafter model (default: load_model in options.drafter_dtype on the target's
    device); pass a caching loader to share one loaded drafter between several uses."""
    if isinstance(name, str):
        parts = parse_drafters(name)
        if len(parts) > 1:
            return MixtureDrafter([make_drafter(part, target, options, load_draft) for part in parts])
        name = parts[0]
    if name.kind == "none":
        return None
    if name.kind == "lookup":
        return LookupDrafter(k=options.k, tree_width=options.tree_width)
    if name.kind == "retrieval":
        return RetrievalDrafter(options.corpus, k=options.k)
    if name.kind == "self":
        chosen = self_options(name.model)
        return SelfDrafter(target, kv=chosen.kv, weights=chosen.weights, kv_budget=chosen.kv_budget, k=options.k,
                           tree_width=options.tree_width, attention=select_backend(options.attention))
    load = load_draft or (lambda spec, t: default_load_draft(spec, t, options.drafter_dtype, options.drafter_quantize))
    draft = load(name.model, target)
    return ModelDrafter(draft, k=options.k, tree_width=options.tree_width, context_window=name.window,
                        context_head=options.context_head, attention=select_backend(options.attention))
