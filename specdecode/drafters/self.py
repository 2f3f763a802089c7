"""SelfDrafter (the design card's CompressedKVDrafter): the target drafts for itself over a compressed
view of its own KV cache, optionally with a quantized twin of its own weights.

The draft cache is gathered from the target's cache once after the prefill (keys already carry their
rotary positions, so no position changes): the policy's selection of the prompt's entries, per layer
and KV head. Every later entry is copied from the target's cache as the target commits tokens, and the
drafter's own entries (the pending token, its draft) are dropped before each proposal; nothing is
recomputed by a second prefill. So before each proposal the draft cache holds

    selection(prompt entries) + every entry the target committed after the prompt.

Policies (`kv`): "streaming" keeps `sinks` first entries and the most recent ones (StreamingLLM);
"snapkv" keeps the window's `window` last prompt entries and, per KV head, the prompt positions the
window attends to most (summed over the window and each KV head's query heads, average-pooled over
`pool` positions; SnapKV); "full" keeps every entry. `kv_budget` is the prompt entries kept per KV head.

At batch 1 a step reads every weight whatever the cache, so a self-draft pays with cheaper weights
(`weights`: a quantized twin of the target, built once by this drafter) and with lookup merged in
(`lookup+self`); see docs/long-documents.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import IncompatibleDrafterError, SpecDecodeError
from ..models.load import LoadedModel, draft_quantization, load_model, output_vocab_size, quantized_twin
from ..runtime.cache import KVCache
from ..runtime.runner import AttentionBackend
from ..runtime.window_attention import supports_window_attention, window_attention
from ..sampling import GREEDY
from .model import ModelDrafter

KV_POLICIES = ("snapkv", "streaming", "full")
WEIGHTS = ("auto", "w8a8", "int8", "int4")
DEFAULT_KV_BUDGET = 2048  # (capped at half the context) docs/long-documents.md: acceptance vs budget


@dataclass(frozen=True)
class KVPolicy:
    """Which of the prompt's KV entries the draft cache keeps (per layer and KV head)."""

    kind: str = "snapkv"  # one of KV_POLICIES
    budget: int | None = 2048  # prompt entries kept per KV head (None with "full")
    sinks: int = 16  # streaming: first entries always kept
    window: int = 32  # snapkv: the observation window, always kept
    pool: int = 5  # snapkv: scores average-pooled over this many neighbouring positions

    def __post_init__(self):
        if self.kind not in KV_POLICIES:
            raise SpecDecodeError(f"unknown kv policy {self.kind!r}; use one of {', '.join(KV_POLICIES)}.")
        if self.kind == "full":
            return
        if not isinstance(self.budget, int) or self.budget <= 0:
            raise SpecDecodeError(f"kv_budget must be a whole number of entries > 0, got {self.budget!r}.")
        reserved = self.sinks if self.kind == "streaming" else self.window
        if self.budget <= reserved:
            raise SpecDecodeError(f"kv_budget {self.budget} leaves no room beside the {reserved} "
                                  f"{'sink' if self.kind == 'streaming' else 'window'} entries; use a larger budget.")

    def keeps_all(self, length: int) -> bool:
        return self.kind == "full" or length <= self.budget

    def selection(self, length: int, kv_heads: int, scores: torch.Tensor | None = None) -> torch.Tensor:
        """The kept positions among `length` prompt entries, ascending: [kv_heads, n].
        scores [kv_heads, length]: the window's attention (snapkv only)."""
        if self.keeps_all(length):
            return torch.arange(length).expand(kv_heads, length)
        if self.kind == "streaming":
            recent = self.budget - self.sinks
            kept = torch.cat([torch.arange(self.sinks), torch.arange(length - recent, length)])  # [budget]
            return kept.expand(kv_heads, self.budget)
        window_start = length - self.window
        pooled = torch.nn.functional.avg_pool1d(scores[:, None, :window_start].float(), self.pool, stride=1,
                                                padding=self.pool // 2, count_include_pad=False)[:, 0]  # [kv, start]
        top = pooled.topk(self.budget - self.window, dim=-1).indices.sort(dim=-1).values  # [kv, budget - window]
        window = torch.arange(window_start, length).expand(kv_heads, self.window)
        return torch.cat([top.cpu(), window], dim=-1)  # [kv, budget]


class SelfDrafter(ModelDrafter):
    """The target drafts for itself with a compressed KV cache (see the module's docstring).

    target: the LoadedModel (or a spec for `load_model`) the generator verifies with: pass the same one.
    kv, kv_budget: the KV policy (KV_POLICIES) and the prompt entries it keeps per KV head (None: 2048, at
        most half the model's context).
    weights: None drafts with the target's own weights; "w8a8" / "int8" / "int4" with a quantized twin
        (built once here: costs the twin's memory); "auto": the weights that draft fastest on this machine
        (models.load.draft_quantization, measured once), or the target's own where none is faster.
    k, tree_width, max_nodes, confidence, draft_vocab: as ModelDrafter (chain or top-w tree, adaptive depth).
    """

    name = "self"

    def __init__(self, target, *, kv: str = "snapkv", kv_budget: int | None = None, weights: str | None = "auto",
                 k: int | None = None, tree_width: int = 1, max_nodes: int | None = None, confidence: float = 0.3,
                 initial_k: int = 4, max_k: int = 12, draft_vocab: int | str | None = "auto",
                 attention: AttentionBackend | None = None):
        if weights not in (None, *WEIGHTS):
            raise SpecDecodeError(f"unknown self-draft weights {weights!r}; use None (the target's own) or one of "
                                  f"{', '.join(WEIGHTS)}.")
        self.source = load_model(target)
        context = getattr(self.source.model.config, "max_position_embeddings", None)
        if kv_budget is None and kv != "full":
            kv_budget = min(DEFAULT_KV_BUDGET, context // 2) if context else DEFAULT_KV_BUDGET
        self.policy = KVPolicy(kv, None if kv == "full" else kv_budget)
        if self.policy.budget is not None and context and self.policy.budget > context:
            raise SpecDecodeError(f"kv_budget {self.policy.budget} is larger than the model's context of {context} "
                                  "tokens; choose a budget below it (a few hundred entries is typical).")
        if kv == "snapkv" and not supports_window_attention(self.source.model):
            raise IncompatibleDrafterError(
                f"kv='snapkv' recomputes the prompt window's queries, which {type(self.source.model).__name__} "
                "does not expose (Llama-family layers); use kv='streaming'.")
        if weights == "auto":
            weights = draft_quantization(self.source.device)
        self.weights = weights
        super().__init__(self._drafting_model(weights), k, tree_width=tree_width, max_nodes=max_nodes,
                         confidence=confidence, initial_k=initial_k, max_k=max_k, draft_vocab=draft_vocab,
                         quantize=None, prefill_twin=False, context_window=None, attention=attention)
        self.target_cache: KVCache | None = None
        self.synced = 0  # target entries reflected in the draft cache (its prompt selection, then copies)
        self.selected = 0  # prompt entries the policy kept (per KV head)
        self.prompt_length = 0  # target entries at `begin`: what the policy selected from
        self.name = f"self:{kv}" + (f":{weights}" if weights else "")

    def _drafting_model(self, weights: str | None) -> LoadedModel:
        return self.source if weights is None else quantized_twin(self.source, weights)

    # ------------------------------------------------------------------ protocol
    def check_target(self, target) -> None:
        if target.model is not self.source.model:
            raise IncompatibleDrafterError(
                f"this SelfDrafter was built for {self.source.name!r}, not for the target {target.name!r}: build it "
                "with the generator's own target, SelfDrafter(target).")
        self.vocab_size = output_vocab_size(target.model)

    def read_target_cache(self, cache: KVCache) -> None:
        """The engine hands over the target's cache after the prefill (read only)."""
        self.target_cache = cache

    def begin(self, prompt_ids, *, sampling=GREEDY, generator=None) -> None:
        """Gather the draft cache from the target's prompt entries (every prompt token but the pending one)."""
        if self.target_cache is None:
            raise SpecDecodeError("SelfDrafter drafts from the target's KV cache; run it through "
                                  "SpeculativeGenerator, which hands the cache over (read_target_cache).")
        self._start(prompt_ids, sampling, generator)
        self.prompt_length = self.synced = self.target_cache.length
        self.cache = self.target_cache.gathered(self.model, self.prompt_selection(prompt_ids), self.model.dtype)
        self.selected = self.cache.length

    def prompt_selection(self, prompt_ids: Sequence[int]) -> list[torch.Tensor]:
        """Per layer, the kept prompt positions [kv_heads, n] among the target's first prompt_length entries."""
        length = self.prompt_length
        entries = self.target_cache.layer_entries()
        if self.policy.kind != "snapkv" or self.policy.keeps_all(length):
            return [self.policy.selection(length, keys.shape[1]) for keys, _ in entries]
        text = length - self._last_image_token(prompt_ids[:length]) - 1  # entries after the prompt's last image
        window = torch.tensor(list(prompt_ids[length - min(self.policy.window, max(text, 1)) : length]),
                              dtype=torch.long)  # [w]: queries recomputed from token embeddings, so text only
        scores = window_attention(self.source.model, self.target_cache, window, length)  # [kv, length] per layer
        return [self.policy.selection(length, keys.shape[1], s) for (keys, _), s in zip(entries, scores)]

    def _last_image_token(self, token_ids: Sequence[int]) -> int:
        """The index of the last image token among `token_ids` (a VLM target's), or -1."""
        image = getattr(self.source.model.config, "image_token_id", None)
        return max((i for i, token in enumerate(token_ids) if token == image), default=-1) if image is not None else -1

    @property
    def kept(self) -> int:
        """Draft cache entries that mirror the target's (the rest are this drafter's own)."""
        return self.selected + self.synced - self.prompt_length

    # ------------------------------------------------------------------ drafting
    def _catch_up(self, context_ids: Sequence[int]) -> torch.Tensor:
        """Drop this drafter's own entries, copy the target's newly committed ones, feed what the target has
        not cached yet (the pending token); return the logits after the context's last token."""
        target = self.target_cache
        self.cache.crop(self.kept)
        self.cache.append_from(target, self.synced, target.length)
        self.synced = target.length
        logits = self._forward(list(context_ids[self.synced:]), self.synced, last_only=True)[-1]  # [vocab]
        self.cached_ids = list(context_ids)
        return logits

    @property
    def prices_nodes(self) -> bool:
        """Node prices only where the draft cache kept the whole prompt (docs/cost-model.md)."""
        return super().prices_nodes and self.selected == self.prompt_length

    def report(self) -> dict:
        return {"kv": self.policy.kind, "kv_budget": self.policy.budget, "weights": self.weights,
                "prompt_entries": self.prompt_length, "draft_cache_entries": self.kept}
