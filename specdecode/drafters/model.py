"""ModelDrafter: an independent small LM (same vocabulary as the target) drafts a chain or a tree.

The drafter keeps its own KV cache. Rollback is bookkeeping: `cached_ids` records which tokens the
cache holds; before drafting, the cache is cropped to the longest prefix shared with the committed
context and only the rest is fed.

Chain (tree_width=1): greedy tokens, or under sampling tokens drawn from the drafter's warped
distribution (draft_probs carried for the Leviathan acceptance rule). Under the engine's cost model a
chain is as deep as its own top probabilities pay for (policy.NodePrices); without one, it stops early
where the drafter's top probability falls below `confidence` (as in HF assisted generation).
Tree (tree_width=w>1): a best-first top-w tree: each level expands the w best nodes by cumulative
draft log-probability, in one drafter forward with tree attention; the `max_nodes` best nodes are
proposed. Tree tokens are deterministic (point masses), which is exact under sampling too.

A bf16 drafter on a CPU without native bf16 decodes one token faster than in fp32 (half the bytes)
but prefills a long prompt several times slower (a prefill is compute-bound, and such a CPU computes
bf16 by conversion), so such a drafter prefills through an fp32 twin and converts the KV entries to
bf16 (`prefill_twin`).

A prompt longer than `context_window` tokens (a document to summarize) is windowed (PromptWindow): the
drafter sees its head and its tail, plus every token generated after it; the target still verifies
against the whole prompt.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch

from ..runtime.runner import AttentionBackend, select_backend
from ..runtime.cache import KVCache
from ..errors import IncompatibleDrafterError, SpecDecodeError
from ..models.load import LoadedModel, cpu_supports_bf16, load_model, output_vocab_size
from ..policy import NodePrices
from ..prompts import EncodedPrompt
from ..sampling import GREEDY, sample_from, warp_probs
from ..tree import DraftTree
from .base import AdaptiveLength, Drafter
from .prompt_window import DEFAULT_CONTEXT_WINDOW, PromptWindow
from .pruned_head import PrunedHead, head_rows


TWIN_MIN_TOKENS = 32  # feeds at least this long go through the fp32 prefill twin


def foreign_tokens(draft_tokenizer, target_tokenizer) -> frozenset[int] | None:
    """The ids the target's tokenizer adds to the drafter's (empty: the same vocabulary), or None where the
    two do not share one (a drafter of another family)."""
    ours, theirs = draft_tokenizer.get_vocab(), target_tokenizer.get_vocab()
    if ours == theirs:
        return frozenset()
    added = {token: i for token, i in theirs.items() if token not in ours}
    if (added and set(added) <= set(target_tokenizer.get_added_vocab())
            and all(theirs.get(token) == i for token, i in ours.items())):
        return frozenset(added.values())
    return None


def check_image_processing(draft: LoadedModel, target) -> None:
    """A vision-language drafter takes the target's image inputs: refuse one whose image processing (and so
    the tokens an image becomes) differs from the target's."""
    ours, theirs = draft.processor.image_processor, getattr(getattr(target, "processor", None), "image_processor", None)
    same = (theirs is not None and type(ours) is type(theirs) and ours.to_dict() == theirs.to_dict()
            and getattr(draft.model.config, "image_token_id", None) == getattr(target.model.config, "image_token_id", None))
    if not same:
        raise IncompatibleDrafterError(
            f"the vision-language drafter {draft.name!r} processes images differently from the target "
            f"{target.name!r} (image processor, its settings or the image token), so an image would not become "
            "the same tokens; use a drafter of the target's family with the same processor, or a text-only drafter.")


class ModelDrafter(Drafter):
    """Draft with a small language model.

    model: a LoadedModel, or a spec for `load_model` (zoo name, folder, .gguf), loaded in `dtype`
        ("fast-decode": the dtype with the fastest one-token forward on this machine) with `quantize`
        ("auto": w8a8 where it measures clearly faster here, see load_model; None: as published).
    k: fixed draft depth; None adapts it from acceptance (start `initial_k`, at most `max_k`).
    tree_width: 1 drafts a chain; w > 1 a top-w tree of at most `max_nodes` nodes.
    confidence: without node prices (cost_model=None), stop a chain early when the drafter's top
        probability drops below it (0 = never).
    prefill_twin: "auto" prefills long feeds through an fp32 copy when the drafter is bf16/fp16 on a
        CPU without native bf16 (costs the copy's memory: 4 bytes per parameter); True / False force it.
    draft_vocab: restrict the drafter's output layer to this many of the lowest token ids plus the
        prompt's tokens (PrunedHead); None = the full vocabulary; "auto" = 32768 on a CPU when the
        vocabulary is larger than 65536 (with the prompt's tokens, 32768 ids cover nearly every token
        Qwen2.5-Coder-0.5B generates on Spec-Bench questions), else the full vocabulary.
    context_window, context_head: a long prompt's tokens the drafter sees at most, and how many of them from
        its start (PromptWindow; None: half); context_window=None: the whole prompt. A VLM drafter's image
        prompt is fed whole.
    """

    name = "model"

    def __init__(
        self,
        model,
        k: int | None = None,
        *,
        tree_width: int = 1,
        max_nodes: int | None = None,
        confidence: float = 0.3,
        initial_k: int = 4,
        max_k: int = 12,
        draft_vocab: int | str | None = "auto",
        dtype: str = "fast-decode",
        quantize: str | None = "auto",
        prefill_twin: bool | str = "auto",
        attention: AttentionBackend | None = None,
        context_window: int | None = DEFAULT_CONTEXT_WINDOW,
        context_head: int | None = None,
    ):
        if k is not None and k < 1:
            raise SpecDecodeError(f"ModelDrafter k must be >= 1 (or None to adapt), got {k}.")
        if tree_width < 1:
            raise SpecDecodeError(f"ModelDrafter tree_width must be >= 1, got {tree_width}.")
        if not 0 <= confidence < 1:
            raise SpecDecodeError(f"ModelDrafter confidence must be in [0, 1), got {confidence}.")
        if draft_vocab is not None and draft_vocab != "auto" and not (isinstance(draft_vocab, int) and draft_vocab >= 1):
            raise SpecDecodeError(
                f"ModelDrafter draft_vocab must be a whole number >= 1, None (all) or 'auto', got {draft_vocab!r}."
            )
        self.window = PromptWindow(context_window, context_head) if context_window is not None else None
        self.draft = load_model(model, dtype=dtype, quantize=quantize, drafts_only=True)  # a LoadedModel: as is
        self.model = self.draft.model
        self.tree_width = tree_width
        self.max_nodes = max_nodes or tree_width * (k or max_k)
        self.confidence = confidence
        self.length = AdaptiveLength(initial=k or initial_k, maximum=k or max_k, adaptive=k is None)
        self.attention = attention or select_backend()
        self.attention.prepare(self.model)  # its one-time probe now, not inside a generation
        self.cache = KVCache(self.model)
        self.cached_ids: list[int] = []
        self.window_start: int | None = None  # where the seen tail of a windowed prompt starts (None: whole)
        self.foreign_ids: frozenset[int] = frozenset()  # the target's added and image tokens: never seen here
        self.images: EncodedPrompt | None = None  # a VLM drafter's view of an image prompt (read_images)
        self.prompt_logits: torch.Tensor | None = None  # [vocab]: after the prompt, until the first proposal
        self.vocab_size = output_vocab_size(self.model)
        head = self.model.get_output_embeddings()
        prunable = isinstance(head, torch.nn.Linear) or hasattr(head, "select_rows")  # int4 is not
        if draft_vocab == "auto":
            draft_vocab = 32768 if self.vocab_size > 65536 and self.draft.device.type == "cpu" and prunable else None
        elif draft_vocab is not None and not prunable:
            raise SpecDecodeError(f"draft_vocab prunes the output layer's rows; this drafter's output layer "
                                  f"({type(head).__name__}) cannot select rows. Pass draft_vocab=None (or 'auto').")
        self.draft_vocab = draft_vocab
        self.head: PrunedHead | None = None
        if draft_vocab is not None:  # the kept lowest ids, the same for every prompt
            self.head_size = min(draft_vocab, head.out_features)
            self.head_base = head_rows(head, torch.arange(self.head_size))
        if prefill_twin == "auto":
            prefill_twin = (self.draft.device.type == "cpu" and self.model.dtype in (torch.bfloat16, torch.float16)
                            and not cpu_supports_bf16())
        self.twin = copy.deepcopy(self.model).float() if prefill_twin else None
        self.name = f"model:{self.draft.name}"

    # ------------------------------------------------------------------ protocol
    def check_target(self, target) -> None:
        target_vocab = output_vocab_size(target.model)
        draft_tok, target_tok = self.draft.tokenizer, getattr(target, "tokenizer", None)
        if draft_tok is not None and target_tok is not None:
            foreign = foreign_tokens(draft_tok, target_tok)
            same = foreign is not None
            # where the target's tokenizer is ours plus added tokens (a VLM's image token), we draft from the
            # context without them, in our shared ids (set anew per target: a drafter may serve another)
            self.foreign_ids = foreign or frozenset()
        else:
            same = self.vocab_size == target_vocab
        image_token = getattr(target.model.config, "image_token_id", None)
        if self.draft.prompt_encoder is not None:
            check_image_processing(self.draft, target)
        elif same and getattr(target, "prompt_encoder", None) is not None and image_token is not None:
            self.foreign_ids |= {image_token}  # an image's tokens mean nothing to a text drafter
        if not same:
            raise IncompatibleDrafterError(
                f"drafter {self.draft.name!r} does not share the target {target.name!r}'s vocabulary "
                f"(drafter {len(draft_tok) if draft_tok else self.vocab_size} tokens, target "
                f"{len(target_tok) if target_tok else target_vocab}); choose a drafter from the same model "
                "family, or use LookupDrafter, which works with any target."
            )
        self.vocab_size = target_vocab  # draft_probs must have the target's width

    def read_images(self, images: EncodedPrompt | None) -> None:
        """An image prompt's encoding (None: a text prompt): a VLM drafter feeds its prompt with the images."""
        self.images = images if self.draft.prompt_encoder is not None else None

    def begin(self, prompt_ids, *, sampling=GREEDY, generator=None) -> None:
        """A new generation: the prompt is fed to the drafter's cache now (a one-time cost, like the target's
        prefill), so that proposals only catch up on committed tokens."""
        self.window_start = None
        visible = self._view(prompt_ids)  # without foreign tokens, whole
        self._start(visible, sampling, generator)  # a pruned head keeps every prompt token: copies stay possible
        if self.window is not None and self.images is None:
            self.window_start = self.window.tail_start(len(visible))
        prompt_ids = self._windowed(visible)
        self.cache.reset()
        self.cache.position_shift = self.images.position_shift if self.images is not None else 0
        self.prompt_logits = self._catch_up(prompt_ids) if len(prompt_ids) else None  # [vocab]

    def _start(self, prompt_ids, sampling, generator) -> None:
        """What every generation resets: sampling, the adaptive length, the pruned head for this prompt."""
        super().begin(prompt_ids, sampling=sampling, generator=generator)
        self.cached_ids, self.prompt_logits = [], None
        self.length.reset()
        if self.draft_vocab is not None:
            self.head = PrunedHead(self.model.get_output_embeddings(), self.head_size, self.head_base, prompt_ids)

    def propose(self, context_ids: Sequence[int], budget: int, prices: NodePrices | None = None) -> DraftTree:
        """Draft after `context_ids`: with `prices`, as deep as the drafter's own top probabilities pay for
        (at most max_k levels); without, `length.current` levels (adapted from acceptance) cut short where
        a chain's top probability drops below `confidence`."""
        context_ids = self._view(context_ids)
        depth = min(self.length.maximum if prices is not None else self.length.current, budget)
        if depth <= 0:
            self.length.drafted(DraftTree.empty())
            return DraftTree.empty()
        if self.prompt_logits is not None and list(context_ids) == self.cached_ids:  # right after begin
            last_logits = self.prompt_logits
        else:
            last_logits = self._catch_up(context_ids)  # [vocab]
        self.prompt_logits = None
        if self.tree_width == 1:
            tree = self._draft_chain(last_logits, len(context_ids), depth, prices)
        else:
            tree = self._draft_tree(last_logits, len(context_ids), depth, min(budget, self.max_nodes), prices)
        self.length.drafted(tree)
        return tree

    def accept(self, token_ids: Sequence[int]) -> None:
        self.length.committed(token_ids)

    @property
    def prices_nodes(self) -> bool:
        """Whether this generation drafts by node prices: where the drafter reads the target's text (the whole
        prompt, or a long one's head and tail), its top probabilities are the chance that the target agrees;
        a text drafter under an image prompt it cannot see overstates it, so it keeps the sized budget."""
        return not self.foreign_ids

    # ------------------------------------------------------------------ drafting
    def _view(self, token_ids: Sequence[int]) -> Sequence[int]:
        """The context as this drafter sees it: without the target's added and image tokens (foreign_ids), and
        of a windowed prompt only its head and the tail from window_start."""
        return self._windowed([t for t in token_ids if t not in self.foreign_ids] if self.foreign_ids else token_ids)

    def _windowed(self, visible: Sequence[int]) -> Sequence[int]:
        """Of a windowed prompt's context, the head and the tail from window_start (else all of it)."""
        return self.window.view(visible, self.window_start) if self.window is not None else visible

    def _forward(self, token_ids: Sequence[int], start: int, tree_mask=None, depths=None,
                 last_only: bool = False, images: EncodedPrompt | None = None) -> torch.Tensor:
        """Feed tokens at positions start.. (or start + depths for tree nodes); logits [q, vocab]
        in the target's width (only the last row with last_only). images: the whole image prompt, fed with
        its images' inputs at its own positions (a VLM drafter's prompt)."""
        ids = torch.tensor(token_ids, dtype=torch.long)  # [q]
        positions = start + (torch.arange(len(ids)) if depths is None else depths)  # [q]
        feed = {}
        if images is not None:
            positions = positions if images.positions is None else images.positions  # [q] or [3, q]
            feed = dict(prefill=True, model_inputs=images.model_inputs)
        if self.head is not None:
            hidden = self.attention.forward(self.model, self.cache, ids, positions, tree_mask, hidden=True, **feed)
            return self.head.logits(hidden[-1:] if last_only else hidden, self.vocab_size)
        logits = self.attention.forward(self.model, self.cache, ids, positions, tree_mask,
                                        logits_to_keep=1 if last_only else 0, **feed)
        return self._fit_vocab(logits.float())

    def _fit_vocab(self, logits: torch.Tensor) -> torch.Tensor:
        """Cut or pad (with -inf) the drafter's logits [q, V_draft] to the target's width [q, V]."""
        width = logits.shape[-1]
        if width > self.vocab_size:
            return logits[:, : self.vocab_size]
        if width < self.vocab_size:
            return torch.nn.functional.pad(logits, (0, self.vocab_size - width), value=float("-inf"))
        return logits

    def _catch_up(self, context_ids: Sequence[int]) -> torch.Tensor:
        """Bring the cache to the context (minus nothing) and return the logits after its last token."""
        shared = 0
        limit = min(len(self.cached_ids), len(context_ids) - 1)  # always feed >= 1 token
        while shared < limit and self.cached_ids[shared] == context_ids[shared]:
            shared += 1
        self.cache.crop(shared)
        feed = list(context_ids[shared:])
        images = self.images if shared == 0 else None  # the prompt's first feed: with its images
        if self.twin is not None and shared == 0 and len(feed) >= TWIN_MIN_TOKENS and images is None:
            self._twin_prefill(feed[:-1])
            shared, feed = len(feed) - 1, feed[-1:]
        logits = self._forward(feed, shared, last_only=True, images=images)[-1]  # [vocab]
        self.cached_ids = list(context_ids)
        return logits

    def _twin_prefill(self, token_ids: Sequence[int]) -> None:
        """Fill the (empty) cache with `token_ids` computed by the fp32 twin, stored in the drafter's dtype."""
        cache = KVCache(self.twin)
        self.attention.forward(self.twin, cache, torch.tensor(token_ids, dtype=torch.long),
                               torch.arange(len(token_ids)), hidden=True)
        cache.cast(self.model.dtype)
        self.cache = cache

    def _draft_chain(self, logits: torch.Tensor, context_len: int, depth: int,
                     prices: NodePrices | None = None) -> DraftTree:
        """A chain of at most `depth` tokens. With `prices`, a token is kept while its path's chance (the
        product of the top probabilities so far) pays its verification row, and the next one is drafted
        while that chance times this token's top probability pays a drafter forward too; without, the
        chain stops where the top probability drops below `confidence`."""
        sampling = self.sampling
        tokens: list[int] = []
        rows: list[torch.Tensor] = []
        chance = 1.0  # of the path so far being accepted, by the drafter's own probabilities
        for step in range(depth):
            if sampling.greedy:
                probs = logits.softmax(-1)  # [vocab]
                token = int(probs.argmax())
            else:
                probs = warp_probs(logits, sampling)  # [vocab]
                token = sample_from(probs, float(torch.rand(1, generator=self.generator)))
                rows.append(probs)
            top = float(probs.max())
            worth = chance * top >= prices.keep(step) if prices is not None else top >= self.confidence
            if step > 0 and not worth:
                if rows:
                    rows.pop()
                break
            tokens.append(token)
            chance *= top
            if step == depth - 1 or (prices is not None and chance * top < prices.expand(step + 1)):
                break
            logits = self._forward([token], context_len + step, last_only=True)[-1]
            self.cached_ids.append(token)
        draft_probs = torch.stack(rows) if rows else None  # [n, vocab]
        return DraftTree.chain(tokens, draft_probs)

    def _draft_tree(self, logits: torch.Tensor, context_len: int, depth: int, max_nodes: int,
                    prices: NodePrices | None = None) -> DraftTree:
        """A best-first top-w tree. With `prices`, a level expands only the nodes whose children's chance
        (the node's path chance times its own top probability) pays a drafter forward, and the kept nodes
        are those whose path chance pays their verification rows (as in a chain)."""
        width = self.tree_width
        tokens: list[int] = []
        parents: list[int] = []
        scores: list[float] = []  # cumulative draft log-probability of each node's path
        node_depths: list[int] = []

        def add_children(parent: int, row_logits: torch.Tensor) -> None:
            logprobs = row_logits.log_softmax(-1)  # [vocab]
            best = torch.topk(logprobs, width)
            base = scores[parent] if parent >= 0 else 0.0
            for logprob, token in zip(best.values.tolist(), best.indices.tolist()):
                tokens.append(token)
                parents.append(parent)
                scores.append(base + logprob)
                node_depths.append(0 if parent < 0 else node_depths[parent] + 1)

        add_children(-1, logits)
        cached = self.cache.length  # the context's entries (a compressed cache may hold fewer than context_len)
        fed: list[int] = []  # tree nodes whose KV entries follow the context in the cache, in order
        level = [i for i in range(len(tokens))]
        for _ in range(depth - 1):
            frontier = sorted(level, key=lambda i: (-scores[i], i))[:width]
            if prices is not None:  # a child's chance: the node's path chance times its own probability
                own = [scores[i] - (scores[parents[i]] if parents[i] >= 0 else 0.0) for i in frontier]
                frontier = [i for i, logp in zip(frontier, own)
                            if math.exp(scores[i] + logp) >= prices.expand(len(tokens))]
                if not frontier:
                    break
            mask = torch.zeros(len(frontier), len(fed) + len(frontier), dtype=torch.bool)  # [q, m]
            for row, node in enumerate(frontier):
                ancestor = parents[node]
                while ancestor >= 0:
                    mask[row, fed.index(ancestor)] = True
                    ancestor = parents[ancestor]
                mask[row, len(fed) + row] = True
            frontier_depths = torch.tensor([node_depths[i] for i in frontier])
            level_logits = self._forward([tokens[i] for i in frontier], context_len, mask, frontier_depths)
            fed.extend(frontier)
            level = []
            for row, node in enumerate(frontier):
                first_child = len(tokens)
                add_children(node, level_logits[row])
                level.extend(range(first_child, len(tokens)))
        self.cache.crop(cached)  # drop the tree nodes; cached_ids still equals the context
        best = sorted(range(len(tokens)), key=lambda i: (-scores[i], i))[:max_nodes]  # a path's score <= its parent's
        if prices is not None:  # the first node always stays (the cost model chose to draft), then while they pay
            kept = 1
            while kept < len(best) and math.exp(scores[best[kept]]) >= prices.keep(kept):
                kept += 1
            best = best[:kept]
        return DraftTree(tokens, parents).subset(best)
