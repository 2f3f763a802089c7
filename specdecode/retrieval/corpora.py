"""A real corpus that every machine has: the Python standard library's own documentation, as plain
text rendered by pydoc (the demo's datastore: a coder model answering questions about Python)."""

from __future__ import annotations

import importlib
import io
import os
import pydoc
import warnings
from collections.abc import Sequence
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

PYTHON_DOC_MODULES = (
    "builtins", "collections", "itertools", "functools", "os", "os.path", "pathlib", "shutil", "json", "csv", "re",
    "string", "datetime", "time", "math", "statistics", "random", "heapq", "bisect", "dataclasses", "enum", "typing",
    "argparse", "logging", "subprocess", "threading", "queue", "concurrent.futures", "asyncio", "contextlib", "io",
    "tempfile", "glob", "fnmatch", "hashlib", "base64", "zipfile", "tarfile", "gzip", "sqlite3", "urllib.parse",
    "textwrap", "difflib", "unittest", "doctest", "copy", "pprint", "operator", "abc", "inspect", "traceback",
    "secrets", "uuid", "decimal", "fractions", "array", "struct", "weakref", "socket", "http.client", "email.message",
    "xml.etree.ElementTree", "configparser", "shlex", "platform", "sys", "timeit", "pickle", "calendar", "locale",
)


def write_python_docs(folder: str | os.PathLike, modules: Sequence[str] = PYTHON_DOC_MODULES) -> list[Path]:
    """Render each module's pydoc text into `folder/<module>.txt`; returns the files written
    (modules that cannot be imported here are left out)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name in modules:
        try:
            with warnings.catch_warnings(), redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
                warnings.simplefilter("ignore")
                module = importlib.import_module(name)
                text = pydoc.render_doc(module, "Python library documentation: %s", renderer=pydoc.plaintext)
        except Exception:  # noqa: BLE001 - a module missing on this platform is simply not in the corpus
            continue
        path = folder / f"{name}.txt"
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
