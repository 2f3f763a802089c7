"""Datastore: passages of your documents in a FAISS inner-product index over normalised
sentence-transformers embeddings (cosine similarity).

On disk (a folder): `manifest.json` (format, embedder, dimension, metric, index type, count, the
data files' names and sha256) + `index-<digest>.faiss` + `passages-<digest>.jsonl`. No pickle.
Saving writes the new data files under new names, then swaps the manifest in one atomic rename,
then removes the old files: a crash at any point leaves the previous store loadable.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from ..errors import SpecDecodeError
from ..files import write_atomic
from .documents import Passage, Skipped, check_chunking, chunk_document, read_documents
from .embedder import Embedder, load_embedder

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
INDEX_TYPES = ("flat", "hnsw", "ivf")
IVF_POINTS_PER_LIST = 39  # FAISS warns below 39 training points per list
HNSW_NEIGHBOURS = 32


@dataclass(frozen=True)
class StoreSettings:
    embedder: str
    dimension: int
    index: str = "flat"  # "flat" (exact) | "hnsw" | "ivf"
    chunk_tokens: int = 200
    overlap: int = 32
    nlist: int | None = None  # ivf: number of lists (None: sqrt of the passages at build)
    nprobe: int = 8  # ivf: lists searched per query
    ef_search: int = 64  # hnsw: candidates kept while searching


class Datastore:
    """Build with `Datastore.build(docs, ...)` or `Datastore.load(path)`; `search(query, k)`."""

    def __init__(self, embedder: Embedder, settings: StoreSettings, index, records: list[dict],
                 path: Path | None = None, skipped: list[Skipped] | None = None):
        self.embedder, self.settings, self.index, self.records = embedder, settings, index, records
        self.path = path
        self.skipped = skipped or []  # what the last build/add skipped, and why

    # ------------------------------------------------------------------ building
    @classmethod
    def build(cls, docs, *, embedder: str | Embedder | None = None, chunk_tokens: int = 200, overlap: int = 32,
              index: str = "flat", nlist: int | None = None, nprobe: int = 8, path: str | os.PathLike | None = None,
              progress: bool = False) -> Datastore:
        """Index `docs` (strings, files, folders); save to `path` when given."""
        if index not in INDEX_TYPES:
            raise SpecDecodeError(f"unknown index type {index!r}; use one of {', '.join(INDEX_TYPES)}.")
        check_chunking(chunk_tokens, overlap)
        if nprobe < 1 or (nlist is not None and nlist < 1):
            raise SpecDecodeError(f"nlist and nprobe must be >= 1, got nlist={nlist}, nprobe={nprobe}.")
        model = load_embedder(embedder)
        settings = StoreSettings(model.name, model.dimension, index, min(chunk_tokens, model.max_tokens - 2), overlap,
                                 nlist, nprobe)
        passages, skipped = cls._passages(docs, model, settings)
        if index == "ivf":
            settings = replace(settings, nlist=nlist or max(1, int(math.sqrt(len(passages)))))
            _check_ivf_training(settings, len(passages))  # before the (slow) embedding
        vectors = model.embed([p.text for p in passages], progress=progress)  # [n, dimension]
        faiss_index = _new_index(settings, vectors)
        faiss_index.add(vectors)
        store = cls(model, settings, faiss_index, [p.to_record(i) for i, p in enumerate(passages)], skipped=skipped)
        if path is not None:
            store.save(path)
        return store

    def add(self, docs, progress: bool = False) -> int:
        """Index more documents; returns the number of passages added. On error the store is unchanged."""
        passages, skipped = self._passages(docs, self.embedder, self.settings)
        vectors = self.embedder.embed([p.text for p in passages], progress=progress)  # [n, dimension]
        first = len(self.records)
        self.index.add(vectors)
        self.records.extend(p.to_record(first + i) for i, p in enumerate(passages))
        self.skipped = skipped
        return len(passages)

    @staticmethod
    def _passages(docs, model: Embedder, settings: StoreSettings) -> tuple[list[Passage], list[Skipped]]:
        documents, skipped = read_documents(docs)
        passages = [p for d in documents for p in chunk_document(d, model.tokenizer, settings.chunk_tokens,
                                                                 settings.overlap)]
        if not passages:
            reasons = "; ".join(f"{s.source}: {s.reason}" for s in skipped[:5]) or "no documents were given"
            raise SpecDecodeError(f"nothing to index: no text passages in the documents ({reasons}).")
        return passages, skipped

    # ------------------------------------------------------------------ searching
    def __len__(self) -> int:
        return len(self.records)

    def search(self, query: str, k: int = 4) -> list[Passage]:
        """The `k` passages most similar to `query` (cosine), best first."""
        if not isinstance(k, int) or k < 1:
            raise SpecDecodeError(f"k must be a whole number >= 1, got {k!r}.")
        if not isinstance(query, str) or not query.strip():
            raise SpecDecodeError("the query is empty; pass a question or some text to search for.")
        if not self.records:
            raise SpecDecodeError("this datastore is empty; add documents before searching.")
        vector = self.embedder.embed([query])  # [1, dimension]
        _tune_search(self.index, self.settings)
        scores, ids = self.index.search(vector, min(k, len(self.records)))  # [1, k] each
        return [Passage.from_record(self.records[i], float(s)) for s, i in zip(scores[0], ids[0]) if i >= 0]

    # ------------------------------------------------------------------ saving and loading
    def save(self, path: str | os.PathLike | None = None) -> Path:
        """Save atomically to `path` (default: where it was loaded from or last saved)."""
        import faiss

        target = Path(path) if path is not None else self.path
        if target is None:
            raise SpecDecodeError("this datastore has no path yet; pass save(path).")
        if target.exists() and (not target.is_dir() or (any(target.iterdir()) and not (target / MANIFEST).exists())):
            raise SpecDecodeError(f"{target} exists and is not a datastore; choose an empty or new folder.")
        target.mkdir(parents=True, exist_ok=True)
        index_bytes = faiss.serialize_index(self.index).tobytes()
        passages_bytes = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self.records).encode("utf-8")
        files = {"index": _write_content(target, "index", ".faiss", index_bytes),
                 "passages": _write_content(target, "passages", ".jsonl", passages_bytes)}
        manifest = {"format": FORMAT_VERSION, "metric": "inner_product", "normalized": True,
                    "count": len(self.records), **asdict(self.settings), "files": files}
        write_atomic(target / MANIFEST, json.dumps(manifest, indent=2))
        keep = {MANIFEST, *(f["name"] for f in files.values())}
        for old in target.iterdir():
            if old.name not in keep and old.name.startswith(("index-", "passages-", "span-")):
                old.unlink(missing_ok=True)
        self.path = target
        return target

    @classmethod
    def load(cls, path: str | os.PathLike, *, embedder: str | Embedder | None = None) -> Datastore:
        """Load a saved store; `embedder` defaults to the one it was built with."""
        import faiss

        path = Path(path)
        manifest = read_manifest(path)
        settings = StoreSettings(**{f: manifest[f] for f in StoreSettings.__dataclass_fields__})
        if embedder is not None:
            wanted = embedder.name if isinstance(embedder, Embedder) else str(embedder)
            if wanted != settings.embedder:
                raise SpecDecodeError(f"{path} was built with the embedder {settings.embedder!r}, not {wanted!r}: "
                                      "its vectors only match queries embedded by that model. Load it without "
                                      "embedder=, or rebuild the store with the new embedder.")
        index_bytes = _read_checked(path, manifest, "index")
        passages_bytes = _read_checked(path, manifest, "passages")
        try:
            index = faiss.deserialize_index(np.frombuffer(index_bytes, dtype=np.uint8))
        except RuntimeError as e:
            raise SpecDecodeError(f"{path}: the FAISS index cannot be read ({str(e).splitlines()[0]}).") from None
        records = [json.loads(line) for line in passages_bytes.decode("utf-8").splitlines() if line.strip()]
        if index.ntotal != len(records) or index.d != settings.dimension or len(records) != manifest["count"]:
            raise SpecDecodeError(f"{path} is inconsistent: manifest {manifest['count']} passages of dimension "
                                  f"{settings.dimension}, index {index.ntotal} of {index.d}, {len(records)} texts.")
        model = load_embedder(embedder or settings.embedder)
        if model.dimension != settings.dimension:
            raise SpecDecodeError(f"{path} holds {settings.dimension}-dimensional vectors but the embedder "
                                  f"{model.name!r} makes {model.dimension}-dimensional ones; use the store's "
                                  "own embedder or rebuild the store.")
        return cls(model, settings, index, records, path=path)


def read_manifest(path: Path) -> dict:
    if not path.is_dir():
        raise SpecDecodeError(f"{path} is not a datastore folder; build one with `specdecode index build`.")
    if not (path / MANIFEST).exists():
        raise SpecDecodeError(f"{path} has no {MANIFEST}, so it is not a datastore (or its save never finished); "
                              "rebuild it with `specdecode index build`.")
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        missing = [f for f in (*StoreSettings.__dataclass_fields__, "count", "files", "format") if f not in manifest]
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError):
        raise SpecDecodeError(f"{path / MANIFEST} is corrupt (not JSON); rebuild the store.") from None
    if missing:
        raise SpecDecodeError(f"{path / MANIFEST} lacks {', '.join(missing)}; rebuild the store.")
    if manifest["format"] != FORMAT_VERSION:
        raise SpecDecodeError(f"{path} has store format {manifest['format']}; this specdecode reads format "
                              f"{FORMAT_VERSION}. Rebuild the store with this version.")
    return manifest


def _new_index(settings: StoreSettings, vectors: np.ndarray):
    import faiss

    dimension = settings.dimension
    if settings.index == "flat":
        return faiss.IndexFlatIP(dimension)
    if settings.index == "hnsw":
        return faiss.IndexHNSWFlat(dimension, HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
    _check_ivf_training(settings, len(vectors))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dimension), dimension, settings.nlist, faiss.METRIC_INNER_PRODUCT)
    index.train(vectors)
    return index


def _check_ivf_training(settings: StoreSettings, passages: int) -> None:
    needed = IVF_POINTS_PER_LIST * settings.nlist
    if passages < needed:
        raise SpecDecodeError(
            f"an IVF index with nlist={settings.nlist} needs at least {needed} passages to train "
            f"({IVF_POINTS_PER_LIST} per list); these documents give {passages}. Use index='flat' (exact, "
            f"fast up to ~100k passages) or nlist <= {max(1, passages // IVF_POINTS_PER_LIST)}."
        )


def _tune_search(index, settings: StoreSettings) -> None:
    if settings.index == "ivf":
        index.nprobe = settings.nprobe
    elif settings.index == "hnsw":
        index.hnsw.efSearch = settings.ef_search


def _write_content(folder: Path, stem: str, suffix: str, data: bytes) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    name = f"{stem}-{digest[:16]}{suffix}"
    if not (folder / name).exists():
        write_atomic(folder / name, data)
    return {"name": name, "sha256": digest}


def _read_checked(path: Path, manifest: dict, key: str) -> bytes:
    entry = manifest["files"].get(key) if isinstance(manifest["files"], dict) else None
    if not entry or not (path / entry["name"]).is_file():
        raise SpecDecodeError(f"{path}: the {key} file named by the manifest is missing; rebuild the store.")
    data = (path / entry["name"]).read_bytes()
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise SpecDecodeError(f"{path}: {entry['name']} does not match its sha256 in the manifest (corrupt or "
                              "edited); rebuild the store.")
    return data


def build_or_load(path: str | os.PathLike, docs: Iterable | None = None, **build_options) -> Datastore:
    """Load the store at `path`, or build it from `docs` and save it there if it does not exist yet."""
    if (Path(path) / MANIFEST).exists():
        return Datastore.load(path)
    if docs is None:
        raise SpecDecodeError(f"no datastore at {path}; pass documents to build one.")
    return Datastore.build(docs, path=path, **build_options)
