"""specdecode: lossless speculative decoding for transformers causal LMs.

    import specdecode as sd
    target = sd.load_model("qwen2.5-coder-1.5b-instruct")
    gen = sd.SpeculativeGenerator(target, drafter=sd.drafters.LookupDrafter())
    out = gen.generate("Summarise: ...", max_new_tokens=128)
"""

from . import drafters, verifiers
from .engine import SpeculativeGenerator
from .errors import IncompatibleDrafterError, ModelLoadError, SpecDecodeError
from .models import LoadedModel, load_model
from .outputs import Divergence, GenerationOutput, GenerationStats, first_divergence
from .sampling import SamplingParams
from .tree import DraftTree

__all__ = [
    "Divergence",
    "DraftTree",
    "GenerationOutput",
    "GenerationStats",
    "IncompatibleDrafterError",
    "LoadedModel",
    "ModelLoadError",
    "SamplingParams",
    "SpecDecodeError",
    "SpeculativeGenerator",
    "drafters",
    "first_divergence",
    "load_model",
    "verifiers",
]

__version__ = "0.1.0"
