"""specdecode: lossless speculative decoding for transformers causal LMs.

    import specdecode as sd
    target = sd.load_model("qwen2.5-coder-1.5b-instruct")
    gen = sd.SpeculativeGenerator(target, drafter=sd.drafters.LookupDrafter())
    out = gen.generate("Summarise: ...", max_new_tokens=128)

The names below are imported on first use (PEP 562), so `import specdecode` and the `specdecode`
command's `--help` do not pay for importing torch and transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from . import bench, drafters, multimodal, pipelines, policy, retrieval, verifiers
    from .engine import SpeculativeGenerator
    from .errors import IncompatibleDrafterError, ModelLoadError, SpecDecodeError
    from .models.load import LoadedModel, load_model
    from .multimodal.vlm import load_vlm
    from .outputs import Divergence, GenerationOutput, GenerationStats, first_divergence
    from .sampling import SamplingParams
    from .tree import DraftTree

_EXPORTS = {  # public name -> the module (relative to this package) that defines it
    "Divergence": ".outputs",
    "DraftTree": ".tree",
    "GenerationOutput": ".outputs",
    "GenerationStats": ".outputs",
    "IncompatibleDrafterError": ".errors",
    "LoadedModel": ".models.load",
    "ModelLoadError": ".errors",
    "SamplingParams": ".sampling",
    "SpecDecodeError": ".errors",
    "SpeculativeGenerator": ".engine",
    "bench": None,  # subpackages and modules
    "drafters": None,
    "first_divergence": ".outputs",
    "load_model": ".models.load",
    "load_vlm": ".multimodal.vlm",
    "multimodal": None,
    "pipelines": None,
    "policy": None,
    "retrieval": None,
    "verifiers": None,
}

__all__ = sorted(_EXPORTS)

__version__ = "0.1.0"


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module_name = _EXPORTS[name]
    if module_name is None:
        value = importlib.import_module(f".{name}", __name__)
    else:
        value = getattr(importlib.import_module(module_name, __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
