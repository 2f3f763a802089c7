"""Models: loading a causal LM with its tokenizer (load.py) and the offline zoo of real weights (zoo.py).

`LoadedModel` and `load_model` are imported on first use, so the zoo's commands run without torch."""

from __future__ import annotations

import importlib

__all__ = ["LoadedModel", "load_model"]


def __getattr__(name: str):
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(".load", __name__), name)
