"""Drafters: everything that proposes draft trees (see `Drafter` for the protocol)."""

from .base import AdaptiveLength, Drafter
from .lookup import LookupDrafter
from .mixture import MixtureDrafter
from .model import ModelDrafter
from .retrieval import RetrievalDrafter, SourceWeights
from .self import KVPolicy, SelfDrafter
from .suffix import SuffixIndex, frequency_tree

CompressedKVDrafter = SelfDrafter  # the design card's name for it

__all__ = ["AdaptiveLength", "CompressedKVDrafter", "Drafter", "KVPolicy", "LookupDrafter", "MixtureDrafter",
           "ModelDrafter", "RetrievalDrafter", "SelfDrafter", "SourceWeights", "SuffixIndex", "frequency_tree"]
