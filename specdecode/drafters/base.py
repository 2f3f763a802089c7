"""The drafter protocol and the draft-length rule shared by the built-in drafters.

A drafter proposes a DraftTree after the committed tokens; the engine verifies it with the target
and reports back what was committed. A drafter may be wrong as often as it likes: verification keeps
only what the target itself would have produced, so a drafter can never change the output.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from ..errors import SpecDecodeError
from ..sampling import GREEDY, SamplingParams
from ..tree import DraftTree


class Drafter(Protocol):
    """The drafter protocol. Any object with `begin`, `propose` and `accept` is a drafter; subclassing
    Drafter is optional and gives the defaults below. The engine reaches every optional part by name
    (`optional_part`), so a plain class with the three methods works as it is.

    - `begin(prompt_ids, sampling=..., generator=...)`: a new generation starts; feed the prompt to
      whatever state you keep here (the engine counts it with the prefill, not as drafting time).
    - `propose(context_ids, budget) -> DraftTree`: draft at most `budget` nodes after `context_ids`
      (prompt + every committed token). A draft without probabilities (lookup, retrieval) simply
      has `draft_probs=None`. Under sampling, a draft WITH probabilities must have drawn each token
      from its row, independently of its earlier siblings.
    - `accept(token_ids)`: the tokens committed by the last step (accepted draft tokens + the
      target's next token); update adaptive state here.
    - `name` (optional): shown in stats and error messages (default: the class name).
    - `report() -> dict` (optional): statistics of the last generation, shown in the stats.
    - `check_target(target)` (optional): raise IncompatibleDrafterError for a target it cannot draft for.
    - `read_target_cache(cache)` (optional): the target's KVCache, handed over after the prefill and before
      `begin`; it holds an entry for every committed token but the last. Read it, never write it.
    - `read_images(images)` (optional): before `begin`, an image prompt's EncodedPrompt (its model inputs
      and positions), or None for a text prompt: for a drafter that is itself a vision-language model.
    - `prices_nodes` (optional, read after `begin`): True where the drafter's own probabilities say how
      likely the target accepts each node; the engine then calls `propose(context_ids, budget, prices=...)`
      with the step's policy.NodePrices and the largest budget, and the drafter drafts the nodes they pay
      for. Otherwise `budget` is the cost model's size.
    """

    name = "custom"

    def begin(
        self,
        prompt_ids: Sequence[int],
        *,
        sampling: SamplingParams = GREEDY,
        generator: torch.Generator | None = None,
    ) -> None:
        self.sampling = sampling
        self.generator = generator

    def propose(self, context_ids: Sequence[int], budget: int) -> DraftTree:
        raise NotImplementedError(f"{type(self).__name__} must implement propose(context_ids, budget)")

    def accept(self, token_ids: Sequence[int]) -> None:
        return None

    def report(self) -> dict:
        """Extra statistics of the last generation for GenerationStats.drafters (default: none)."""
        return {}

    def check_target(self, target) -> None:
        """Raise IncompatibleDrafterError if this drafter cannot draft for `target` (a LoadedModel)."""
        return None


class AdaptiveLength:
    """Draft length that follows observed acceptance (the rule of HF assisted generation).

    After each verification: if every drafted level was accepted, the length grows by 2; otherwise it
    shrinks by 1; always within [minimum, maximum]. With `adaptive=False` it stays at `initial`.
    A drafter reports its tree with `drafted(tree)` and the committed tokens with `committed(ids)`;
    only tokens along its OWN tree count as accepted, so inside a MixtureDrafter each drafter adapts
    to its own acceptance.
    """

    def __init__(self, initial: int, minimum: int = 1, maximum: int = 16, adaptive: bool = True):
        self.initial, self.minimum, self.maximum, self.adaptive = initial, minimum, max(maximum, initial), adaptive
        self.current = initial
        self.tree = DraftTree.empty()

    def reset(self) -> None:
        self.current = self.initial
        self.tree = DraftTree.empty()

    def drafted(self, tree: DraftTree) -> None:
        self.tree = tree

    def committed(self, token_ids: Sequence[int]) -> None:
        """The step's committed tokens (accepted draft tokens + the target's own)."""
        self.update(self.tree.depth, self.tree.matched_depth(token_ids[:-1]))
        self.tree = DraftTree.empty()  # consumed: a step the engine drafts nothing for leaves it empty

    def update(self, drafted_depth: int, accepted_depth: int) -> None:
        if not self.adaptive or drafted_depth == 0:
            return
        if accepted_depth >= drafted_depth:
            self.current = min(self.maximum, self.current + 2)
        else:
            self.current = max(self.minimum, self.current - 1)


PROTOCOL_METHODS = ("begin", "propose", "accept")


def check_drafter(drafter) -> None:
    """Raise SpecDecodeError, naming what is missing, if `drafter` lacks a method of the protocol."""
    missing = [method for method in PROTOCOL_METHODS if not callable(getattr(drafter, method, None))]
    if missing:
        raise SpecDecodeError(
            f"drafter {drafter_name(drafter)!r} has no {', '.join(missing)} method; a drafter implements "
            "begin(prompt_ids, **options), propose(context_ids, budget) and accept(token_ids).")


def optional_part(drafter, name: str, default=None):
    """A drafter's optional method or attribute (see Drafter), or `default` where it has none."""
    return getattr(drafter, name, default)


def drafter_name(drafter) -> str:
    return str(optional_part(drafter, "name", None) or type(drafter).__name__)
