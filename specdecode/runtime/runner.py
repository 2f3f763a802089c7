"""The attention seam: how a model scores a token tree in one forward pass.

`SDPABackend` runs any transformers model loaded with `attn_implementation="sdpa"`: the prefix is
fully visible, a tree gets a custom 4D mask (prefix + ancestors), positions are given explicitly, and
a chain uses the model's own causal mask. A FlashAttention backend plugs in behind the same
`AttentionBackend` protocol. Verifiers (scoring drafts) and model drafters (expanding draft trees)
both run their models through this one function, so there is a single tree-forward code path.
"""

from __future__ import annotations

import dataclasses
import inspect
import weakref
from collections.abc import Mapping
from typing import Protocol

import torch

from ..tree import DraftTree
from .cache import KVCache
from ..errors import SpecDecodeError
from .cuda.static_steps import BUCKETS, StaticSteps, bucket_of
from .lean_forward import fits, lean_forward, matches_own_forward
from .cpu.linear import padded_sizes
from .cpu.rowwise_attention import BATCHED_PREFILL, fold_rows_of
from .calibrate import Calibration, runtime_state
from .grouped_attention import GROUPED, VISIBLE_PREFIX
from .layers import decoder_of
from .split_choice import AttentionShape, SplitCosts, measure_split_costs

MEASURED = "measured"  # split_prefix: per step, whichever this device was measured to run faster


class AttentionBackend(Protocol):
    name: str
    max_rows: int | None  # the most tokens a verification may feed (a backend of one fixed width), None: any

    def forward(
        self,
        model: torch.nn.Module,
        cache: KVCache,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        tree_mask: torch.Tensor | None = None,
        logits_to_keep: int = 0,
        hidden: bool = False,
        prefill: bool = False,
        model_inputs: Mapping[str, torch.Tensor] | None = None,
        pads: int = 0,
    ) -> torch.Tensor:
        """Feed input_ids [q] after the cache's entries; return logits [q or logits_to_keep, vocab],
        or with hidden=True the final hidden states [q, hidden_size] (the LM head is skipped).

        positions [q] are the fed tokens' indices in the sequence (the model sees them shifted by
        cache.position_shift), or [sections, q] the model's own positions (an M-RoPE prompt). tree_mask [q, m] bool (m >= q) says which of the LAST m
        keys (the cache's last m - q entries, then the q fed tokens) each fed token may attend to;
        every earlier key is visible. None means plain causal attention. The cache grows by q entries.
        prefill=True: the tokens are a prompt that plain and speculative decoding feed alike, so a model
        on row-wise attention (exact steps) may attend them batched (rowwise_attention.py). model_inputs:
        the prompt forward's other inputs (a VLM's pixel values), with prefill=True only. pads: the last
        `pads` fed tokens pad the step (verify): their outputs are not used, so they may attend to less.
        """
        ...

    def verify(self, model: torch.nn.Module, cache: KVCache, tree: DraftTree, root_token: int,
               rows: int) -> torch.Tensor:
        """Score [root_token] + tree in one forward, padded to `rows` tokens; logits [1 + len(tree), vocab]."""
        ...

    def prepare(self, model: torch.nn.Module) -> None:
        """Run the backend's one-time probes of `model` (outside any timed region)."""
        ...


class SDPABackend:
    """PyTorch scaled-dot-product attention through the model's own sdpa attention layers.

    lean: after the prompt (a forward with prefill=False on a cache with entries), run a Llama-family CPU
    model through lean_forward where it gives the model's own results bit for bit (checked once per
    model, lean_forward.py); False: always the model's own forward.
    split_prefix: True: a tree's tokens attend to the cached prefix through FlashAttention's kernel without a
    mask and to the tree under its mask, merged by log-sum-exp (grouped_attention.split_attention; "flash");
    MEASURED: per step, split where that was measured faster for the step's context and size (split_choice.py;
    measured once per attention shape on a GPU, `split_costs` if given, else never on a CPU; "auto"). Models on
    grouped attention only: an exact target's row-wise attention ignores it."""

    def __init__(self, lean: bool = True, split_prefix: bool | str = False, split_costs: SplitCosts | None = None):
        if split_prefix not in (True, False, MEASURED):
            raise SpecDecodeError(f"split_prefix must be True, False or {MEASURED!r}; got {split_prefix!r}.")
        self.lean = lean
        self.split_prefix = split_prefix
        self.name = {True: "flash", False: "sdpa", MEASURED: "auto"}[split_prefix]
        self.max_rows: int | None = None
        self._lean_models: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> matches_own_forward
        self._given_split_costs = split_costs
        self._split_costs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> SplitCosts or None

    def forward(self, model, cache, input_ids, positions, tree_mask=None, logits_to_keep=0, hidden=False,
                prefill=False, model_inputs=None, pads=0):
        device = model.device
        past = cache.length
        q = input_ids.shape[-1]
        if positions.dim() == 1 and cache.position_shift:
            positions = positions + cache.position_shift  # [q]
        kwargs, keywords = {}, {}
        split = bool(past) and not prefill and self.splits(model, past, q)
        pads = 0 if split else pads  # a split step attends every row to the whole prefix
        if tree_mask is None and (split or pads) and q > 1:
            tree_mask = torch.ones(q, q, dtype=torch.bool).tril()  # a chain: split from the prefix, or padded
        if tree_mask is not None:
            visible = past + q - tree_mask.shape[-1]  # the leading keys every fed token sees
            kwargs["attention_mask"] = _full_mask(tree_mask, past, pads, device)  # [1, 1, q, past+q], True = attend
            if split and visible:
                keywords[VISIBLE_PREFIX] = visible  # handed down to the attention function
        if past and not prefill and self.runs_lean(model):  # after a prompt: the cache has its layers
            return lean_forward(model, cache.hf.layers, input_ids.to(device), positions.to(device),
                                kwargs.get("attention_mask"), logits_to_keep, hidden, keywords)
        kwargs.update(keywords)
        called = model.base_model if hidden else model
        if prefill and fold_rows_of(model.config._attn_implementation) and _passes_keywords(called):
            kwargs[BATCHED_PREFILL] = True  # else (a forward without **kwargs) the prefill stays row-wise
        inputs = dict(
            input_ids=input_ids.to(device)[None],  # [1, q]
            position_ids=positions.to(device)[..., None, :],  # [1, q] or [sections, 1, q]
            cache=cache.hf,
            use_cache=True,
            **kwargs,
            **{name: value.to(device) for name, value in (model_inputs or {}).items()},
        )
        if hidden:
            return called(**inputs).last_hidden_state[0]  # [q, hidden_size]
        return model(**inputs, logits_to_keep=logits_to_keep).logits[0]  # [q or logits_to_keep, vocab]

    def verify(self, model, cache: KVCache, tree: DraftTree, root_token: int, rows: int) -> torch.Tensor:
        """Score [root_token] + tree in one forward after the cache's entries: tree attention, depth-based
        positions, padded to `rows` fed tokens (>= 1 + len(tree)). Returns the logits of the real tokens
        [1 + len(tree), vocab]; the cache grows by `rows` entries."""
        input_ids, tree_mask, offsets = tree.rooted_inputs(root_token)  # [fed], [fed, fed] or None, [fed]
        fed = input_ids.shape[-1]
        input_ids, positions, tree_mask = _padded(input_ids, cache.length + offsets, tree_mask, rows)
        return self.forward(model, cache, input_ids, positions, tree_mask, pads=rows - fed)[:fed]

    def prepare(self, model) -> None:
        """Run the runner's one-time probes of a model (its lean forward's check, the split's costs) now, not in
        a timed step."""
        self.runs_lean(model)
        self.split_costs_of(model)

    def describe(self, model) -> str:
        """How this runner runs the model (part of what its timings depend on)."""
        name = self.name
        if self.split_prefix == MEASURED:
            name = "sdpa" if self.split_costs_of(model) is None else "auto (split where measured faster)"
        return f"{name}, lean forward: {self.runs_lean(model)}"

    def splits(self, model, context: int, rows: int) -> bool:
        """Whether a step of `rows` tokens after `context` cached entries attends split from the prefix."""
        if self.split_prefix != MEASURED:
            return self.split_prefix
        costs = self.split_costs_of(model)
        return costs is not None and costs.splits(context, rows)

    def split_costs_of(self, model) -> SplitCosts | None:
        """The attention costs the MEASURED choice reads for `model`: the given table, else on a GPU those of
        its attention shape (measured once per machine, calibrate.py); None on a CPU, for other choices, and
        for a model not on grouped attention (nothing to split)."""
        if self.split_prefix != MEASURED:
            return None
        if model not in self._split_costs:
            grouped = decoder_of(model).config._attn_implementation == GROUPED
            if not grouped or (self._given_split_costs is None and model.device.type != "cuda"):
                self._split_costs[model] = None
            else:
                self._split_costs[model] = self._given_split_costs or _measured_split_costs(model)
        return self._split_costs[model]

    def padded_sizes(self, model, calibration) -> list[int]:
        """padded[q]: the row count >= q whose forward is cheapest on this machine (calibrated once)."""
        return calibration.get(f"padded_sizes:{runtime_state(model, self)}", lambda: padded_sizes(model))

    def runs_lean(self, model) -> bool:
        """Whether steps after the prompt run through lean_forward (asked of the model once, then kept)."""
        if not self.lean:
            return False
        if model not in self._lean_models:
            self._lean_models[model] = matches_own_forward(model)
        return self._lean_models[model]


class StaticBackend(SDPABackend):
    """Steps after the prompt at static shapes on preallocated KV buffers, recorded as CUDA graphs on a GPU
    and replayed (runtime/cuda/static_steps.py; on a CPU the same steps run eagerly, for tests). Prompts, steps of
    more than 64 tokens, M-RoPE prompt positions and models lean_forward does not fit (not Llama-family)
    take the SDPA backend's path. width: feed every step at this many rows (plain decoding included), so
    that each token's row is computed by the same kernels in plain and speculative decoding; None: the
    smallest bucket (1, 2, 4, ..., 64) that holds the step. An exact CPU target keeps the SDPA path (steps_of)."""

    def __init__(self, width: int | None = None):
        super().__init__(lean=False)
        if width is not None and bucket_of(width) != width:
            raise SpecDecodeError(f"attention 'graphs:{width}': the width must be one of {BUCKETS}.")
        self.width = self.max_rows = width  # every step at `width` rows: drafts fit in it
        self.name = "graphs" if width is None else f"graphs:{width}"
        self._steps: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> StaticSteps or None

    def forward(self, model, cache, input_ids, positions, tree_mask=None, logits_to_keep=0, hidden=False,
                prefill=False, model_inputs=None, pads=0):
        bucket, steps = bucket_of(input_ids.shape[-1]), self.steps_of(model)
        if prefill or not cache.length or positions.dim() != 1 or steps is None or bucket is None:
            return super().forward(model, cache, input_ids, positions, tree_mask, logits_to_keep, hidden, prefill,
                                   model_inputs, pads)
        rows = max(self.width or 0, bucket)
        # its pads attend as the static step's mask has them: the buffers' span is read whole anyway
        out = steps.run(model, cache, input_ids, positions + cache.position_shift, tree_mask, rows, hidden)
        return out[-logits_to_keep:] if logits_to_keep and not hidden else out

    def padded_sizes(self, model, calibration) -> list[int]:
        """padded[q]: the rows a static step feeds for q tokens (the engine pads a verification to them)."""
        return [max(self.width or 0, bucket_of(q)) for q in range(BUCKETS[-1] + 1)]

    def describe(self, model) -> str:
        steps = self.steps_of(model)
        how = "not taken (SDPA)" if steps is None else "CUDA graphs" if steps.capture else "eager"
        return f"{self.name}, static steps: {how}"

    def prepare(self, model) -> None:
        self.steps_of(model)

    def steps_of(self, model) -> StaticSteps | None:
        """The model's static steps, made on first use; None where lean_forward does not fit the model, and for
        an exact CPU target (row-wise attention), whose verifications keep their bits only at the row counts
        calibration found (the SDPA path's padding)."""
        if model not in self._steps:
            takes = fits(model, any_device=True) and fold_rows_of(decoder_of(model).config._attn_implementation) is None
            self._steps[model] = StaticSteps(capture=model.device.type == "cuda") if takes else None
        return self._steps[model]


def _measured_split_costs(model) -> SplitCosts:
    """`model`'s attention costs both ways on its device, from its attention shape's calibration (measured on
    the first load on this machine, then read back)."""
    shape = AttentionShape.of(model)
    calibration = Calibration({"attention": dataclasses.asdict(shape), "device": model.device.type})
    return calibration.parsed("split_costs", lambda: measure_split_costs(shape, model.device).to_json(),
                              SplitCosts.from_json)


def _passes_keywords(module: torch.nn.Module) -> bool:
    """Whether a model's forward takes **kwargs (transformers' models hand them down to attention)."""
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(module.forward).parameters.values())


def _padded(input_ids: torch.Tensor, positions: torch.Tensor, tree_mask: torch.Tensor | None, rows: int):
    """Pad a verification's inputs to `rows` tokens with copies of the last one, which no real token
    attends to (a causal chain never looks ahead; a tree mask hides them) and which attend to every token
    before them, as a chain's do. Their logits and KV entries are simply not used (the SDPA backend lets
    them see one key: _full_mask). Worth it where `rows` rows are cheaper than len(input_ids)
    (runtime/cpu/linear.py)."""
    extra = rows - input_ids.shape[-1]
    if extra <= 0:
        return input_ids, positions, tree_mask
    input_ids = torch.cat([input_ids, input_ids[-1:].expand(extra)])  # [rows]
    positions = torch.cat([positions, positions[-1:].expand(extra)])  # [rows]
    if tree_mask is not None:
        q = tree_mask.shape[0]
        padded = torch.ones(rows, rows, dtype=torch.bool).tril()  # [rows, rows]: pad i sees every token up to itself
        padded[:q, :q] = tree_mask
        tree_mask = padded
    return input_ids, positions, tree_mask


def _full_mask(tree_mask: torch.Tensor, past: int, pads: int, device: torch.device) -> torch.Tensor:
    """The attention mask [1, 1, q, past + q] (True = may attend) of a step feeding q tokens after `past`
    cached entries under tree_mask [q, m] (the last m keys; every earlier key is visible), its last `pads`
    rows padding whose outputs are not used: those attend to the first key only, so that at a long context
    their attention costs next to nothing (row-wise attention folds them into one call over one block)."""
    q, m = tree_mask.shape
    mask = torch.ones(q, past + q, dtype=torch.bool, device=device)  # [q, past + q]
    mask[:, past + q - m:] = tree_mask.to(device)
    if pads:
        mask[q - pads:, 1:] = False
    return mask[None, None]


def select_backend(name: str = "auto") -> AttentionBackend:
    """"sdpa": the SDPA backend (one masked call per layer); "flash" the SDPA backend attending a tree's
    cached prefix through FlashAttention's kernel, merged with the tree block (split_prefix); "auto" either, per
    step, whichever was measured faster on a GPU (SDPA on a CPU); "graphs" (or "graphs:WIDTH") static steps
    recorded as CUDA graphs (StaticBackend)."""
    if name == "auto":
        return SDPABackend(split_prefix=MEASURED)
    if name == "sdpa":
        return SDPABackend()
    if name == "flash":
        return SDPABackend(split_prefix=True)
    if name == "graphs" or name.startswith("graphs:"):
        width = name.partition(":")[2]
        if name != "graphs" and not width.isdigit():
            raise SpecDecodeError(f"attention {name!r}: the width after 'graphs:' must be a number, one of {BUCKETS}.")
        return StaticBackend(int(width) if width else None)
    raise SpecDecodeError(f"attention {name!r} is unknown; available: 'auto', 'sdpa', 'flash', 'graphs', "
                          f"'graphs:WIDTH'.")
