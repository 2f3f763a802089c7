"""Documents for the summarizer: text, text files, HTML files (markup stripped), several files at once;
and the cut of a long text into parts that fit a prompt, on paragraph boundaries.

    text, names = read_source(["notes.md", Path("page.html")])       # several files: names as headers
    parts = split_text(text, budget=2000, count=token_counter)        # each part <= 2000 tokens by count
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from html.parser import HTMLParser
from pathlib import Path

from ..errors import SpecDecodeError
from ..retrieval.documents import read_text_file

HTML_SUFFIXES = (".html", ".htm", ".xhtml")
TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".rst", ".text", *HTML_SUFFIXES)  # a bare name like these is a file
FILE_FIX = "pass a text, Markdown or HTML file (convert PDFs, Word files and the like to text first)"
SEPARATORS = ("\n\n", "\n", " ")  # paragraphs, then lines, then words
Count = Callable[[str], int]  # text -> its length in tokens


def read_source(source) -> tuple[str, list[str]]:
    """A string of text, a path (pathlib.Path, or a string naming an existing file) or a list of them ->
    (the text to summarize, the names of the files read). Several items are joined with blank lines, each
    file under a `# name` header. Any file that is not text raises SpecDecodeError naming it."""
    items = list(source) if isinstance(source, (list, tuple)) else [source]
    if not items:
        raise SpecDecodeError("nothing to summarize: the list of documents is empty; pass text or files.")
    texts, names = [], []
    for item in items:
        path = _as_path(item)
        if path is None:
            if not item.strip():
                raise SpecDecodeError("the text to summarize is empty; pass some text or a file.")
            texts.append(item.strip())
            continue
        text = read_file(path)
        texts.append(f"# {path.name}\n\n{text}" if len(items) > 1 else text)
        names.append(str(path))
    return "\n\n".join(texts), names


def _as_path(item) -> Path | None:
    """The path an item names, or None for a string of text."""
    if isinstance(item, os.PathLike):
        return Path(item)
    if not isinstance(item, str):
        raise SpecDecodeError(f"cannot summarize a {type(item).__name__}; pass text, a file path, or a list of them.")
    one_line = "\n" not in item and len(item) < 4096
    if one_line and os.path.exists(item):
        return Path(item)
    if one_line and " " not in item.strip() and item.strip().lower().endswith(TEXT_SUFFIXES):
        raise SpecDecodeError(f"{item.strip()} looks like a file name but does not exist; check the path (a "
                              "string is summarized as text only when it names no file).")
    return None


def read_file(path: Path) -> str:
    """The text of a text, Markdown or HTML file (HTML by its suffix or its first tag, stripped to text)."""
    if not path.exists():
        raise SpecDecodeError(f"{path} does not exist; {FILE_FIX}, or the text itself.")
    if path.is_dir():
        raise SpecDecodeError(f"{path} is a folder; pass the files in it to summarize, e.g. {path}/*.md.")
    try:
        text, reason = read_text_file(path)
    except OSError as e:
        raise SpecDecodeError(f"cannot read {path}: {e.strerror or e}; check its permissions.") from None
    if text is None:
        raise SpecDecodeError(f"cannot summarize {path}: {reason}; {FILE_FIX}.")
    if is_html(path, text):
        text = html_to_text(text)
        if not text.strip():
            raise SpecDecodeError(f"{path} has no text once its HTML markup is removed; pass a page with some text.")
    if not text.strip():
        raise SpecDecodeError(f"{path} is empty; pass a file with some text in it.")
    return text.strip()


def is_html(path: Path, text: str) -> bool:
    start = text.lstrip()[:64].lower()
    return path.suffix.lower() in HTML_SUFFIXES or start.startswith(("<!doctype html", "<html"))


class _TextOfHTML(HTMLParser):
    """Collects the visible text of a page: no script or style, a blank line at each block's edge."""

    SKIP = {"script", "style", "noscript", "template", "svg"}
    BLOCKS = {"p", "div", "br", "hr", "li", "ul", "ol", "dl", "dt", "dd", "tr", "table", "section", "article",
              "header", "footer", "nav", "aside", "main", "blockquote", "pre", "figure", "figcaption", "form",
              "h1", "h2", "h3", "h4", "h5", "h6", "title", "body"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.pieces: list[str] = []
        self.skipping = 0  # depth inside SKIP elements

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self.skipping += 1
        elif tag in self.BLOCKS:
            self.pieces.append("\n\n")

    def handle_startendtag(self, tag, attrs):
        if tag in self.BLOCKS:
            self.pieces.append("\n\n")

    def handle_endtag(self, tag):
        if tag in self.SKIP:
            self.skipping = max(0, self.skipping - 1)
        elif tag in self.BLOCKS:
            self.pieces.append("\n\n")

    def handle_data(self, data):
        if not self.skipping:
            self.pieces.append(data)


def html_to_text(html: str) -> str:
    """Visible text of an HTML page: scripts and styles dropped, whitespace inside a paragraph collapsed,
    one blank line between paragraphs (block elements), the title kept as the first paragraph."""
    parser = _TextOfHTML()
    parser.feed(html)
    parser.close()
    blocks = re.split(r"\n\s*\n", "".join(parser.pieces))
    return "\n\n".join(" ".join(block.split()) for block in blocks if block.strip())


# ----------------------------------------------------------------------------- splitting


def split_text(text: str, budget: int, count: Count) -> list[str]:
    """Cut `text` into parts of at most `budget` tokens (as `count` measures each piece), in order:
    whole paragraphs (split at blank lines) where they fit; a paragraph longer than a part is cut on
    lines, a line longer than a part on words, a word longer than a part in halves. Parts are packed
    greedily; the separators between pieces are kept (blank line, newline, space). Token counts of
    pieces are added, so a part's real count may differ by a token at a seam: check the prompt it makes."""
    if budget < 1:
        raise SpecDecodeError(f"a part must hold at least one token, got a budget of {budget}.")
    units = _units(text.strip(), 0, budget, count)  # [(separator before it, text, tokens)]
    parts: list[str] = []
    current: list[str] = []
    used = 0
    for separator, piece, tokens in units:
        cost = tokens + (1 if current else 0)  # a separator costs a token at most, mostly
        if current and used + cost > budget:
            parts.append("".join(current).strip())
            current, used, separator, cost = [], 0, "", tokens
        current.append((separator if current else "") + piece)
        used += cost
    if current:
        parts.append("".join(current).strip())
    return [part for part in parts if part]


def _units(text: str, level: int, budget: int, count: Count) -> list[tuple[str, str, int]]:
    """`text` as pieces of at most `budget` tokens, each with the separator that precedes it."""
    separator = SEPARATORS[level] if level < len(SEPARATORS) else ""
    pieces = re.split(r"\n[ \t]*\n\s*", text) if separator == "\n\n" else _cut(text, separator)
    units = []
    for piece in pieces:
        if not piece.strip():
            continue
        tokens = count(piece)
        if tokens <= budget or len(piece) == 1:
            units.append((separator, piece, tokens))
            continue
        inner = _units(piece, level + 1, budget, count)
        units.append((separator, *inner[0][1:]))
        units.extend(inner[1:])
    return units


def _cut(text: str, separator: str) -> Sequence[str]:
    if separator:
        return text.split(separator)
    return [text[: len(text) // 2], text[len(text) // 2 :]]  # a word longer than a part: halves
