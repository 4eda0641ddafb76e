"""The model errors: each a branch of the solver error tree, each message names the reference."""
from __future__ import annotations

from ..solvers.base import SolverConfigError, SolverError, SolverUnavailable


class ModelError(SolverError):
    """Any problem with a model reference or its file."""

    def __init__(self, ref: str, message: str) -> None:
        super().__init__(message)
        self.ref = ref


class ModelRefError(ModelError, SolverConfigError):
    """The reference is malformed, or names no single file (none or several match)."""


class NotAModelFile(ModelError, SolverConfigError):
    """The reference's file exists but is not a GGUF model."""


class ModelNotReady(ModelError, SolverUnavailable):
    """An ``hf:`` model is not in the cache yet (being downloaded, or never pulled)."""

    def __init__(self, ref: str, message: str = "") -> None:
        super().__init__(ref, message or f"model {ref} is not downloaded yet")


class ModelDownloadError(ModelError, SolverUnavailable):
    """The Hub could not be reached or refused: network, 401/403, 404, server error."""


class DiskFull(ModelDownloadError):
    """Not enough free disk space for the download (checked first, or the disk filled up)."""


class ChecksumMismatch(ModelDownloadError):
    """The downloaded file does not match the Hub's sha256; it was deleted."""
