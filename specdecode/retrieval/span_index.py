"""The token-level span index of a datastore: every passage in the TARGET's tokenizer, in a
SuffixIndex, so a RetrievalDrafter can copy continuations from the whole corpus (REST-style).

Built on first use for a (store, tokenizer) pair and cached in the store's folder as
`span-<digest>.npy` (the token ids; the suffix order is recomputed on load), so later runs skip
tokenising the corpus.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ..drafters.suffix import SuffixIndex
from ..files import atomic_file
from .datastore import Datastore

KEY_TOKENS = 8


def tokenizer_digest(tokenizer) -> str:
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()[:16]


def span_index(store: Datastore, tokenizer, key_tokens: int = KEY_TOKENS) -> SuffixIndex:
    """The store's passages as one SuffixIndex in `tokenizer`'s ids (cached next to a saved store)."""
    texts = [record["text"] for record in store.records]
    content = hashlib.sha256("\x00".join(texts).encode()).hexdigest()
    digest = hashlib.sha256(f"{tokenizer_digest(tokenizer)}:{content}".encode()).hexdigest()[:16]
    cache = Path(store.path) / f"span-{digest}.npy" if store.path is not None else None
    if cache is not None and cache.exists():
        return SuffixIndex.from_tokens(np.load(cache), key_tokens)
    index = SuffixIndex(tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else [], key_tokens)
    if cache is not None:
        with atomic_file(cache) as file:
            np.save(file, index.tokens[: index.size])
    return index
