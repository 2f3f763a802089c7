"""Drafters: everything that proposes draft trees (see `Drafter` for the protocol)."""

from .base import AdaptiveLength, Drafter
from .lookup import LookupDrafter
from .model import ModelDrafter

__all__ = ["AdaptiveLength", "Drafter", "LookupDrafter", "ModelDrafter"]
