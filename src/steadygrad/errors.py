"""Exceptions a user can cause.

Every message is one line that names the thing, the value received and what to do; the CLI prints
``str(error)`` on stderr without a traceback.
"""

from __future__ import annotations

__all__ = ["CheckpointError", "DataError", "RunLocked", "SteadygradError", "TrainingDiverged"]


class SteadygradError(Exception):
    """Base class for errors caused by input, files or training dynamics (not by bugs)."""


class DataError(SteadygradError):
    """A data file is missing, truncated, corrupt, or does not match its checksum."""


class CheckpointError(SteadygradError):
    """A checkpoint cannot be written or is not a valid steadygrad checkpoint."""


class RunLocked(SteadygradError):
    """Another live process is training into the same run folder."""


class TrainingDiverged(SteadygradError):
    """The loss or a gradient became NaN or infinite.

    Attributes name where: ``epoch`` and ``step`` (1-based epoch, global step) and ``layer``
    (the first parameter, in model order, whose gradient was non-finite; ``None`` if only the loss
    was).
    """

    def __init__(self, message: str, *, epoch: int, step: int, layer: str | None) -> None:
        super().__init__(message)
        self.epoch = epoch
        self.step = step
        self.layer = layer
