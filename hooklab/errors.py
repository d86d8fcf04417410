"""The errors hooklab raises about its users' input.

Every error a user can cause derives from :class:`HooklabError`, so notebooks and scripts
can catch one class. Each message names the argument, what was expected and what to do.
"""

from __future__ import annotations

__all__ = [
    "HooklabError",
    "UnsupportedArchitectureError",
    "CheckpointUnavailableError",
    "PairMismatchError",
    "GenerationCheckError",
]


class HooklabError(Exception):
    """Base class of every error hooklab raises about its input."""


class UnsupportedArchitectureError(HooklabError):
    """The checkpoint's architecture has no adapter in :mod:`hooklab.architectures`."""


class CheckpointUnavailableError(HooklabError):
    """A checkpoint could not be read: missing folder, no network, gated model, bad revision."""


class PairMismatchError(HooklabError):
    """The PT and IT checkpoints of a pair cannot be compared (different shapes or tokenizers).

    Attributes:
        differences: one ``(what, pt_value, it_value)`` triple per failed check.
    """

    def __init__(self, message: str, differences: list[tuple[str, object, object]]):
        super().__init__(message)
        self.differences = differences


class GenerationCheckError(HooklabError):
    """Decoding through a bridge is not what the model computes: cached decoding differs from
    uncached, or a history is not the model's own greedy continuation. Usually a library
    version hooklab has not been tested with (see docs/dependencies.md)."""
