"""Model references: a local path, ``hf:OWNER/REPO/FILE.gguf[@REVISION]`` or ``hf:OWNER/REPO:QUANT[@REVISION]``.

``hf:OWNER/REPO`` alone names the repository's only GGUF file. Picking a file from a repository
listing (``pick_file``) is pure, so the rules are tested without a Hub.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from .errors import ModelRefError

HF_PREFIX = "hf:"
GGUF_SUFFIX = ".gguf"
#: Hub names: letters, digits, "-", "_", "." (not first), at most 96 characters
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
_QUANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_]{0,31}")
_REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,127}")
_SPLIT_PART = re.compile(r"-\d{5}-of-\d{5}\.gguf$", re.IGNORECASE)
#: how many candidate files an "ambiguous" error names
MAX_NAMED = 6


@dataclass(frozen=True)
class ModelRef:
    """A parsed model reference; ``repo_id`` is None for a local path."""

    raw: str
    repo_id: Optional[str] = None
    filename: Optional[str] = None
    quant: Optional[str] = None
    revision: Optional[str] = None
    path: Optional[Path] = None

    @property
    def is_hub(self) -> bool:
        """True for an ``hf:`` reference."""
        return self.repo_id is not None

    def __str__(self) -> str:
        return self.raw


def is_hub_ref(value: object) -> bool:
    """True when ``value`` is a string starting with ``hf:``."""
    return isinstance(value, str) and value.strip().lower().startswith(HF_PREFIX)


def parse_ref(ref: str) -> ModelRef:
    """Parse a reference; raise ``ModelRefError`` (a ``SolverConfigError``) if it is malformed."""
    if not isinstance(ref, (str, os.PathLike)):
        raise ModelRefError(str(ref), f"model reference must be a path or an hf: reference, not {ref!r}")
    text = os.fspath(ref).strip()
    if not text:
        raise ModelRefError(text, "model reference is empty")
    if not is_hub_ref(text):
        return ModelRef(raw=text, path=Path(os.path.expandvars(text)).expanduser())
    body = text[len(HF_PREFIX):]
    revision = None
    if "@" in body:
        body, revision = body.rsplit("@", 1)
        if not _REVISION.fullmatch(revision) or ".." in revision:
            raise ModelRefError(text, f"model reference {text}: bad revision {revision!r}")
    quant = None
    if ":" in body:
        body, quant = body.split(":", 1)
        if not _QUANT.fullmatch(quant):
            raise ModelRefError(text, f"model reference {text}: bad quantization {quant!r} (e.g. Q4_K_M)")
    parts = body.split("/")
    if len(parts) < 2 or not all(_NAME.fullmatch(part) for part in parts[:2]):
        raise ModelRefError(text, f"model reference {text}: expected hf:OWNER/REPO/FILE.gguf, "
                                  "hf:OWNER/REPO:QUANT or hf:OWNER/REPO")
    filename = "/".join(parts[2:]) or None
    if filename is not None:
        if quant is not None:
            raise ModelRefError(text, f"model reference {text}: give a file or a quantization, not both")
        if any(part in ("", ".", "..") for part in parts[2:]) or "\\" in filename:
            raise ModelRefError(text, f"model reference {text}: bad file name {filename!r}")
        if not filename.lower().endswith(GGUF_SUFFIX):
            raise ModelRefError(text, f"model reference {text}: the file must be a .gguf file")
    return ModelRef(raw=text, repo_id="/".join(parts[:2]), filename=filename, quant=quant, revision=revision)


def quant_of(filename: str) -> Optional[str]:
    """Guess the quantization written in a GGUF file name (``...-Q4_K_M.gguf`` -> ``Q4_K_M``)."""
    stem = _SPLIT_PART.sub(".gguf", Path(filename).name)[: -len(GGUF_SUFFIX)]
    match = re.search(r"(?:^|[-._])((?:I?Q\d[A-Z0-9_]*)|BF16|F16|F32|TQ\d_\d)$", stem, re.IGNORECASE)
    return match.group(1).upper() if match else None


def pick_file(ref: ModelRef, files: Sequence[str]) -> str:
    """Return the one GGUF file of ``files`` (a repository listing) that ``ref`` names.

    With a quantization: the model files whose name carries it (case-insensitive, between
    separators), projector files (``mmproj``) left out. Without: the only GGUF file. Raises
    ``ModelRefError`` naming the candidates when none or several match, or when the match is
    split in parts (not supported).
    """
    ggufs = [name for name in files if name.lower().endswith(GGUF_SUFFIX)]
    if ref.filename is not None:
        if ref.filename in files:
            return ref.filename
        raise ModelRefError(ref.raw, f"model reference {ref}: {ref.filename} is not in {ref.repo_id} "
                                     f"({_named(ggufs) or 'no GGUF files'})")
    models = [name for name in ggufs if not Path(name).name.lower().startswith("mmproj")]
    if ref.quant is not None:
        pattern = re.compile(rf"(?:^|[-._/]){re.escape(ref.quant.lower())}(?=[-.])")
        matches = [name for name in models if pattern.search(Path(name).name.lower())]
    else:
        matches = models
    if not matches:
        available = sorted({q for q in (quant_of(name) for name in models) if q})
        hint = f"; quantizations there: {', '.join(available)}" if available else ""
        what = f"{ref.quant} GGUF file" if ref.quant else "GGUF model file"
        raise ModelRefError(ref.raw, f"model reference {ref}: {ref.repo_id} has no {what}{hint}")
    if all(_SPLIT_PART.search(name) for name in matches):
        raise ModelRefError(ref.raw, f"model reference {ref}: the model is split in {len(matches)} parts "
                                     f"({_named(matches)}); split models are not supported")
    if len(matches) > 1:
        how = "" if ref.quant else " (hf:OWNER/REPO/FILE.gguf or hf:OWNER/REPO:QUANT)"
        raise ModelRefError(ref.raw, f"model reference {ref}: several files match, name one{how}: "
                                     f"{_named(matches)}")
    return matches[0]


def _named(names: Sequence[str]) -> str:
    shown = ", ".join(sorted(names)[:MAX_NAMED])
    return shown + (f" and {len(names) - MAX_NAMED} more" if len(names) > MAX_NAMED else "")
