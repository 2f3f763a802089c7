"""Drafters: everything that proposes draft trees (see `Drafter` for the protocol)."""

from .base import AdaptiveLength, Drafter
from .lookup import LookupDrafter
from .mixture import MixtureDrafter
from .model import ModelDrafter
from .retrieval import RetrievalDrafter, SourceWeights
from .suffix import SuffixIndex, frequency_tree

__all__ = ["AdaptiveLength", "Drafter", "LookupDrafter", "MixtureDrafter", "ModelDrafter", "RetrievalDrafter",
           "SourceWeights", "SuffixIndex", "frequency_tree"]
