"""Benchmark questions asked over a datastore (`specdecode bench --store STORE`).

Each turn's question goes through the RAG pipeline's own stages (Retrieve, then BuildPrompt), so a
turn's prompt is exactly what `specdecode ask` would send, and the retrieved passages are handed to
the drafters that copy from them (`set_passages`). Retrieval depends only on the turn's question, so
it runs once per question and is shared by every method; it is not part of the timed generation
(it costs every method the same).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import SpecDecodeError
from ..pipelines.base import PipelineState
from ..pipelines.rag import BuildPrompt, Retrieve


@dataclass(frozen=True)
class RagTurn:
    content: str  # the user message: sources + question, in the RAG template
    passages: tuple  # retrieval.Passage, in prompt order


class RagPrompts:
    """turn question -> RagTurn, retrieved once per distinct question."""

    def __init__(self, store, tokenizer, k: int, *, context_tokens: int | None, max_new_tokens: int):
        self.retrieve = Retrieve(store, k)
        self.build = BuildPrompt(tokenizer, context_tokens=context_tokens)
        self.max_new_tokens = max_new_tokens
        self.turns: dict[str, RagTurn] = {}

    def __call__(self, question: str) -> RagTurn:
        if question not in self.turns:
            state = PipelineState(question=question, options={"max_new_tokens": self.max_new_tokens})
            self.retrieve.run(state)
            self.build.run(state)
            if not isinstance(state.prompt, list):
                raise SpecDecodeError("bench --store needs a chat model (the RAG prompt is a chat message).")
            self.turns[question] = RagTurn(state.prompt[-1]["content"], tuple(state.passages))
        return self.turns[question]


def store_fingerprint(store_path: Path, k: int) -> str:
    """What identifies a store's content for the results folder's settings (its manifest's checksums)."""
    from ..retrieval.datastore import read_manifest

    manifest = read_manifest(Path(store_path))
    files = json.dumps(manifest.get("files", {}), sort_keys=True)
    return f"{hashlib.sha256(files.encode()).hexdigest()[:16]} k={k}"
