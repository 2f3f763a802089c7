"""Retrieval: a FAISS datastore of document passages (embed, chunk, search, save/load)."""

from .datastore import INDEX_TYPES, Datastore, StoreSettings, build_or_load
from .documents import Document, Passage, Skipped, read_documents
from .embedder import DEFAULT_EMBEDDER, Embedder, load_embedder

__all__ = ["DEFAULT_EMBEDDER", "INDEX_TYPES", "Datastore", "Document", "Embedder", "Passage", "Skipped",
           "StoreSettings", "build_or_load", "load_embedder", "read_documents"]
