"""Documents in, passages out: read strings, files and folders; cut them into overlapping chunks of
at most `chunk_tokens` embedder tokens, each with its source and character offsets."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import SpecDecodeError

MAX_FILE_BYTES = 20_000_000


@dataclass(frozen=True)
class Document:
    text: str
    source: str  # the file path, or "text:N" for the N-th string given


@dataclass(frozen=True)
class Passage:
    """One chunk of a document, as stored and as returned by a search."""

    text: str
    source: str
    chunk: int  # index of this chunk within its document
    start: int  # character offsets of the chunk in the document's text
    end: int
    score: float = 0.0  # similarity to the query (cosine), set by search

    def to_record(self, passage_id: int) -> dict:
        return {"id": passage_id, "text": self.text, "source": self.source, "chunk": self.chunk,
                "start": self.start, "end": self.end}

    @classmethod
    def from_record(cls, record: dict, score: float = 0.0) -> Passage:
        return cls(record["text"], record["source"], record["chunk"], record["start"], record["end"], score)


@dataclass(frozen=True)
class Skipped:
    source: str
    reason: str


def read_documents(docs: str | os.PathLike | Iterable[str | os.PathLike]) -> tuple[list[Document], list[Skipped]]:
    """Strings are documents; Paths (or strings naming an existing file or folder) are read, folders
    recursively. A file is text by its content, whatever its name (README, LICENSE, GPL-3 count): UTF-8
    without NUL bytes, as ripgrep tells them. Others are skipped, with the reason."""
    items = [docs] if isinstance(docs, (str, os.PathLike)) else list(docs)
    documents: list[Document] = []
    skipped: list[Skipped] = []
    for number, item in enumerate(items):
        path = Path(item) if isinstance(item, os.PathLike) or _names_a_path(item) else None
        if path is None:
            if not isinstance(item, str):
                raise SpecDecodeError(f"document {number} is a {type(item).__name__}; pass text, a file or a folder.")
            if item.strip():
                documents.append(Document(item, f"text:{number}"))
            else:
                skipped.append(Skipped(f"text:{number}", "empty text"))
            continue
        if not path.exists():
            raise SpecDecodeError(f"{path} does not exist; pass text, a file or a folder.")
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            document, reason = _read_file(file)
            if document is not None:
                documents.append(document)
            else:
                skipped.append(Skipped(str(file), reason))
    return documents, skipped


def _names_a_path(item) -> bool:
    return isinstance(item, str) and "\n" not in item and len(item) < 4096 and os.path.exists(item)


def _read_file(path: Path) -> tuple[Document | None, str]:
    if any(part.startswith(".") for part in path.parts[-1:]):
        return None, "hidden file"
    text, reason = read_text_file(path)
    if text is None:
        return None, reason
    if not text.strip():
        return None, "empty"
    return Document(text, str(path)), ""


def read_text_file(path: Path) -> tuple[str | None, str]:
    """(the file's text, "") when it is text by its content (UTF-8 without NUL bytes, at most
    MAX_FILE_BYTES), else (None, why not). An empty file is text: "". OSError (unreadable) propagates."""
    if path.stat().st_size > MAX_FILE_BYTES:
        return None, f"larger than {MAX_FILE_BYTES // 1_000_000} MB"
    data = path.read_bytes()
    if b"\x00" in data[:8192]:
        return None, "binary, not text (NUL bytes)"
    try:
        return data.decode("utf-8"), ""
    except UnicodeDecodeError as e:
        return None, f"binary or not UTF-8 text (byte {e.start})"


def chunk_document(document: Document, tokenizer, chunk_tokens: int, overlap: int) -> list[Passage]:
    """Cut a document into windows of at most `chunk_tokens` tokenizer tokens, consecutive windows
    sharing `overlap` tokens; offsets are characters of the document's text."""
    encoding = tokenizer(document.text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = encoding["offset_mapping"]  # [(start, end)] per token
    if not offsets:
        return []
    passages = []
    step = chunk_tokens - overlap
    for number, first in enumerate(range(0, max(1, len(offsets) - overlap), step)):
        window = offsets[first : first + chunk_tokens]
        start = window[0][0] if number else 0
        last = first + len(window) >= len(offsets)
        end = len(document.text) if last else offsets[first + len(window)][0]
        text = document.text[start:end]
        if text.strip():
            passages.append(Passage(text, document.source, len(passages), start, end))
        if last:
            break
    return passages


def check_chunking(chunk_tokens: int, overlap: int) -> None:
    if chunk_tokens < 8:
        raise SpecDecodeError(f"chunk_tokens must be >= 8, got {chunk_tokens}.")
    if not 0 <= overlap < chunk_tokens:
        raise SpecDecodeError(f"overlap must be >= 0 and smaller than chunk_tokens ({chunk_tokens}), got {overlap}.")
