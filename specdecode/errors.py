"""The one exception type users see: a clear message that names the problem and the fix.

Every check on user input raises a subclass of `SpecDecodeError` (itself a `ValueError`), so callers
can catch one type and the CLI can print the message without a traceback.
"""

from __future__ import annotations


class SpecDecodeError(ValueError):
    """Bad input or an unusable resource; the message says what is wrong and how to fix it."""


class ModelLoadError(SpecDecodeError):
    """A model spec that cannot be resolved or loaded (unknown zoo name, missing packages, corrupt file)."""


class IncompatibleDrafterError(SpecDecodeError):
    """A drafter that cannot draft for this target (e.g. a different vocabulary)."""
