"""What GGUF models the Hugging Face cache holds, which personas use them, and removing one."""
from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, List, Mapping, Optional, Tuple

from .errors import ModelNotReady, ModelRefError
from .gguf_info import GGUFError, read_gguf_info
from .hub import hub_cache_dir
from .refs import GGUF_SUFFIX, ModelRef, parse_ref, pick_file, quant_of


@dataclass
class CachedModel:
    """One GGUF file in the cache."""

    repo_id: str
    filename: str
    commit: str
    path: Path
    size: int
    quantization: Optional[str]
    used_by: List[str] = field(default_factory=list)

    @property
    def ref(self) -> str:
        """The ``hf:`` reference that names exactly this file."""
        return f"hf:{self.repo_id}/{self.filename}"


def cached_models() -> List[CachedModel]:
    """Every ``.gguf`` file in the cache's model snapshots, sorted by reference."""
    found = []
    root = hub_cache_dir()
    for repo in sorted(root.glob("models--*--*")):
        repo_id = repo.name[len("models--"):].replace("--", "/", 1)
        for snapshot in sorted((repo / "snapshots").glob("*")):
            for pointer in sorted(snapshot.rglob("*")):
                if not pointer.name.lower().endswith(GGUF_SUFFIX) or not pointer.is_file():
                    continue
                filename = pointer.relative_to(snapshot).as_posix()
                found.append(CachedModel(repo_id, filename, snapshot.name, pointer, pointer.stat().st_size,
                                         _quantization(pointer, filename)))
    return found


def _quantization(path: Path, filename: str) -> Optional[str]:
    try:
        return read_gguf_info(path).quantization or quant_of(filename)
    except (GGUFError, OSError):
        return quant_of(filename)


def matches(ref: ModelRef, model: CachedModel) -> bool:
    """True when the ``hf:`` reference names the cached file (its revision, if given, is not checked)."""
    if ref.repo_id is None or ref.repo_id.lower() != model.repo_id.lower():
        return False
    try:
        return pick_file(ref, [model.filename]) == model.filename
    except ModelRefError:
        return False


def mark_users(models: Iterable[CachedModel], persona_refs: Mapping[str, str]) -> None:
    """Fill ``used_by`` from {persona name: model reference} (references that are not ``hf:`` ignored)."""
    parsed: List[Tuple[str, ModelRef]] = []
    for persona, raw in persona_refs.items():
        try:
            ref = parse_ref(raw)
        except ModelRefError:
            continue
        if ref.is_hub:
            parsed.append((persona, ref))
    for model in models:
        model.used_by = sorted(persona for persona, ref in parsed if matches(ref, model))


def remove_model(ref: str) -> List[Path]:
    """Delete the cached files ``ref`` names (every snapshot); return the snapshot paths removed.

    A blob still pointed to by another snapshot entry is kept; empty folders are tidied away.
    """
    parsed = parse_ref(ref)
    if not parsed.is_hub:
        raise ModelNotReady(parsed.raw, f"models rm takes an hf: reference, not a path: {parsed.raw}")
    doomed = [model for model in cached_models() if matches(parsed, model)]
    if not doomed:
        raise ModelNotReady(parsed.raw, f"model {parsed.raw} is not in the cache ({hub_cache_dir()})")
    blobs = {model.path.resolve() for model in doomed}
    for model in doomed:
        model.path.unlink()
    still_used = {pointer.resolve() for repo in hub_cache_dir().glob("models--*--*")
                  for pointer in (repo / "snapshots").rglob("*") if pointer.is_symlink()}
    for blob in blobs - still_used:
        if blob.exists():
            blob.unlink()
    for repo in {model.path.parents[len(Path(model.filename).parts)].parent for model in doomed}:
        if not any(item.is_file() for item in (repo / "snapshots").rglob("*")):
            shutil.rmtree(repo, ignore_errors=True)  # nothing left to use: refs and locks go too
    return [model.path for model in doomed]
