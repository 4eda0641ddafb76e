"""Local model files: ``hf:`` references, the Hugging Face cache, GGUF headers. Plain Python, no bus.

``resolve_model(ref)`` answers at once (a local path, the cached file, or ``ModelNotReady``);
``ensure_model(ref)`` downloads (blocking) through the real ``huggingface_hub`` client. Every error
is a solver error (``SolverUnavailable`` or ``SolverConfigError``), so the chain moves on.
"""
from __future__ import annotations

from .errors import (ChecksumMismatch, DiskFull, ModelDownloadError, ModelError, ModelNotReady,
                     ModelRefError, NotAModelFile)
from .hub import ensure_model, resolve_model
from .refs import ModelRef, parse_ref

__all__ = ["ChecksumMismatch", "DiskFull", "ModelDownloadError", "ModelError", "ModelNotReady", "ModelRef",
           "ModelRefError", "NotAModelFile", "ensure_model", "parse_ref", "resolve_model"]
