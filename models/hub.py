"""Model files from the Hugging Face Hub through the real ``huggingface_hub`` client.

Its cache, its endpoint and token conventions are read at each call (``HF_ENDPOINT``,
``HF_HUB_CACHE`` / ``HF_HOME``, ``HF_TOKEN``), so a test or a user can change them without a
restart. Downloads resume after a dropped connection (the client's own Range requests), are
checked for disk space first, verified as GGUF and against the Hub's sha256, and written to the
cache only whole: a file that fails verification is deleted before anyone sees it.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import threading
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Set, Tuple

from .errors import (ChecksumMismatch, DiskFull, ModelDownloadError, ModelNotReady, ModelRefError,
                     NotAModelFile)
from .gguf_info import is_gguf
from .refs import ModelRef, parse_ref, pick_file

DEFAULT_ENDPOINT = "https://huggingface.co"
DEFAULT_REVISION = "main"
#: free space kept beyond the file itself, so a download never fills the disk to the last byte
DISK_MARGIN_BYTES = 64 << 20
HASH_BLOCK = 1 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")

#: progress(bytes_done, bytes_total or None), called from the downloading thread
Progress = Callable[[int, Optional[int]], None]
FreeBytes = Callable[[Path], int]

_locks_guard = threading.Lock()
_locks: Dict[str, threading.Lock] = {}
#: references being downloaded or verified in this process: not ready, even once the file shows
_downloading: Set[str] = set()


# ---------------------------------------------------------------- conventions

def hub_endpoint() -> str:
    """The Hub's address: ``$HF_ENDPOINT`` or huggingface.co."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def hub_cache_dir() -> Path:
    """huggingface_hub's cache: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ~/.cache/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def repo_folder(repo_id: str) -> Path:
    """The cache folder of a model repository (huggingface_hub's layout)."""
    return hub_cache_dir() / ("models--" + repo_id.replace("/", "--"))


def free_bytes(path: Path) -> int:
    """Free bytes on the file system that holds ``path`` (or its nearest existing parent)."""
    for candidate in [path, *path.parents]:
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return 0


def _token() -> Optional[str]:
    return os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") or None


def _hide_token(text: str) -> str:
    token = _token()
    return text.replace(token, "***") if token else text


def _hub() -> Any:
    try:
        import huggingface_hub
    except ImportError as err:
        raise ModelDownloadError("hf:", "hf: model references need huggingface_hub: "
                                        "pip install 'ovos-skill-persona-fallback[models]'") from err
    return huggingface_hub


def logging_progress(ref: str, step: int = 10) -> Progress:
    """A ``progress`` callback that logs every ``step`` percent (for downloads in the background)."""
    from ovos_utils.log import LOG

    shown = [-step]

    def report(done: int, total: Optional[int]) -> None:
        if not total:
            return
        percent = 100 * done // total
        if percent >= shown[0] + step or (percent == 100 and shown[0] != 100):
            shown[0] = percent
            LOG.info("downloading model %s: %d%% of %s", ref, percent, _mb(total))

    return report


# ---------------------------------------------------------------- the cache, no network

def cached_snapshot_file(ref: ModelRef) -> Optional[Path]:
    """Return the cached file ``ref`` names, looked up offline in the cache's snapshots, or None."""
    folder = repo_folder(ref.repo_id or "")
    revision = ref.revision or DEFAULT_REVISION
    commit = revision
    ref_file = folder / "refs" / revision
    if ref_file.is_file():
        try:
            commit = ref_file.read_text(encoding="utf-8").strip()
        except OSError:
            return None
    snapshot = folder / "snapshots" / commit
    if not snapshot.is_dir():
        return None
    if ref.filename is not None:
        candidate = snapshot / ref.filename
        return candidate if candidate.is_file() else None
    files = [str(p.relative_to(snapshot)) for p in snapshot.rglob("*") if p.is_file()]
    try:
        return snapshot / pick_file(ref, files)
    except ModelRefError:
        return None  # the cached snapshot does not settle it: the Hub listing will


def resolve_model(ref: str) -> Path:
    """Return the local file for ``ref`` now: a path as given, or the cached ``hf:`` file.

    Raises ``ModelNotReady`` (a ``SolverUnavailable``) for an ``hf:`` file not downloaded yet,
    ``ModelRefError`` for a malformed reference; makes no network request.
    """
    parsed = parse_ref(ref)
    if not parsed.is_hub:
        assert parsed.path is not None
        return parsed.path
    with _locks_guard:
        if parsed.raw in _downloading:
            raise ModelNotReady(parsed.raw, f"model {parsed.raw} is being downloaded")
    path = cached_snapshot_file(parsed)
    if path is None or not is_gguf(path):
        raise ModelNotReady(parsed.raw)
    return path


# ---------------------------------------------------------------- downloading

def ensure_model(ref: str, progress: Optional[Progress] = None, *,
                 free_space: FreeBytes = free_bytes) -> Path:
    """Return the local file for ``ref``, downloading an ``hf:`` file first if needed (blocking).

    A cached file is returned with no request. Errors: ``ModelRefError`` (malformed, or no single
    file matches), ``ModelDownloadError`` (network, 401/403/404, server), ``DiskFull``,
    ``ChecksumMismatch``, ``NotAModelFile``; each names the reference, never the token.
    """
    parsed = parse_ref(ref)
    if not parsed.is_hub:
        assert parsed.path is not None
        if not parsed.path.is_file():
            raise ModelNotReady(parsed.raw, f"model file not found: {parsed.path}")
        if not is_gguf(parsed.path):
            raise NotAModelFile(parsed.raw, f"model {parsed.raw} is not a GGUF file")
        return parsed.path
    with _lock_for(parsed.raw):
        try:
            return resolve_model(parsed.raw)
        except ModelNotReady:
            pass
        with _locks_guard:
            _downloading.add(parsed.raw)
        try:
            return _download(parsed, progress, free_space)
        finally:
            with _locks_guard:
                _downloading.discard(parsed.raw)


def _lock_for(ref: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(ref, threading.Lock())


def _download(ref: ModelRef, progress: Optional[Progress], free_space: FreeBytes) -> Path:
    hf = _hub()
    endpoint, cache, token = hub_endpoint(), hub_cache_dir(), _token()
    repo_id = ref.repo_id or ""
    with _mapped_errors(ref, hf):
        expected_sha = None
        filename = ref.filename
        if filename is None:
            info = hf.HfApi(endpoint=endpoint).model_info(repo_id, revision=ref.revision, token=token,
                                                         files_metadata=True)
            siblings = {s.rfilename: s for s in (info.siblings or [])}
            filename = pick_file(ref, list(siblings))
            lfs = getattr(siblings[filename], "lfs", None)
            expected_sha = getattr(lfs, "sha256", None)
        url = hf.hf_hub_url(repo_id, filename, revision=ref.revision, endpoint=endpoint)
        meta = hf.get_hf_file_metadata(url, token=token, endpoint=endpoint)
        etag = (meta.etag or "").strip('"').lower()
        expected_sha = expected_sha or (etag if _SHA256.fullmatch(etag) else None)
        if meta.size is not None:
            needed = meta.size + DISK_MARGIN_BYTES
            cache.mkdir(parents=True, exist_ok=True)
            available = free_space(cache)
            if available < needed:
                raise DiskFull(ref.raw, f"not enough disk space for model {ref}: {_mb(meta.size)} needed "
                                        f"(+{_mb(DISK_MARGIN_BYTES)} kept free), {_mb(available)} free in {cache}")
        path = Path(hf.hf_hub_download(
            repo_id, filename, revision=ref.revision, cache_dir=str(cache), endpoint=endpoint, token=token,
            tqdm_class=_progress_class(progress) if progress else None))
    _verify(ref, path, meta.size, expected_sha)
    return path


def _verify(ref: ModelRef, path: Path, size: Optional[int], sha256: Optional[str]) -> None:
    """Delete the downloaded file and raise unless it is a GGUF of the Hub's size and sha256."""
    problem = None
    if size is not None and path.stat().st_size != size:
        problem = ChecksumMismatch(ref.raw, f"model {ref}: downloaded {path.stat().st_size} bytes, "
                                            f"the Hub says {size}; the file was deleted")
    elif sha256 is not None and _sha256(path) != sha256:
        problem = ChecksumMismatch(ref.raw, f"model {ref}: the download does not match the Hub's sha256 "
                                            f"({sha256[:12]}...); the file was deleted, pull it again")
    elif not is_gguf(path):
        problem = NotAModelFile(ref.raw, f"model {ref}: {path.name} is not a GGUF file; it was deleted")
    if problem is not None:
        _delete_cached(path)
        raise problem


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(HASH_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def _delete_cached(pointer: Path) -> None:
    """Remove a snapshot entry and the blob it points to."""
    blob = pointer.resolve()
    for item in (pointer, blob):
        try:
            item.unlink()
        except FileNotFoundError:
            pass


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


class _mapped_errors:
    """Turns the client's exceptions into model errors that name the reference, never the token."""

    def __init__(self, ref: ModelRef, hf: Any) -> None:
        self.ref, self.hf = ref, hf

    def __enter__(self) -> "_mapped_errors":
        return self

    def __exit__(self, kind: Any, err: Optional[BaseException], tb: Any) -> bool:
        if err is None or isinstance(err, (ModelRefError, DiskFull)):
            return False
        mapped = self._map(err)
        if mapped is None:
            return False
        raise mapped from err

    def _map(self, err: BaseException) -> Optional[Exception]:
        errors, ref = self.hf.errors, self.ref
        status = getattr(getattr(err, "response", None), "status_code", None)
        if isinstance(err, errors.GatedRepoError):
            return ModelDownloadError(ref.raw, f"model {ref}: {ref.repo_id} is gated: accept its terms on the "
                                               "Hub and set HF_TOKEN")
        if isinstance(err, errors.RepositoryNotFoundError):
            return ModelDownloadError(ref.raw, f"model {ref}: repository {ref.repo_id} not found (HTTP {status}); "
                                               "check the name, or HF_TOKEN for a private one")
        if isinstance(err, errors.RevisionNotFoundError):
            return ModelDownloadError(ref.raw, f"model {ref}: revision {ref.revision} not found")
        if isinstance(err, errors.EntryNotFoundError):
            return ModelDownloadError(ref.raw, f"model {ref}: file not found in {ref.repo_id}")
        if isinstance(err, errors.HfHubHTTPError) and status in (401, 403):
            return ModelDownloadError(ref.raw, f"model {ref}: the Hub refused access (HTTP {status}); "
                                               "check HF_TOKEN")
        if isinstance(err, errors.HfHubHTTPError):
            return ModelDownloadError(ref.raw, f"model {ref}: the Hub answered HTTP {status}")
        if isinstance(err, OSError) and err.errno == 28:  # ENOSPC while writing
            return DiskFull(ref.raw, f"model {ref}: the disk filled up during the download; "
                                     "the partial file was deleted")
        if isinstance(err, (OSError, *_client_errors())):
            # no network, a dropped connection past the client's retries, a size mismatch
            detail = _hide_token(str(err).splitlines()[0] if str(err) else type(err).__name__)
            return ModelDownloadError(ref.raw, f"model {ref}: download failed: {detail[:200]}")
        return None


def _client_errors() -> Tuple[type, ...]:
    """The HTTP library's base error, whichever one this huggingface_hub uses."""
    found = []
    for name in ("httpx2", "httpx", "requests"):
        try:
            module = __import__(name)
        except ImportError:
            continue
        base = getattr(module, "HTTPError", None) if name != "requests" else module.RequestException
        if isinstance(base, type):
            found.append(base)
    return tuple(found)


def _progress_class(callback: Progress) -> type:
    """A tqdm-shaped class huggingface_hub can drive, reporting to ``callback``."""

    class _Progress:
        def __init__(self, *args: Any, total: Optional[int] = None, initial: int = 0, **kwargs: Any) -> None:
            self.total, self.n = total, initial
            callback(self.n, self.total)

        def update(self, n: int = 1) -> None:
            self.n += n
            callback(self.n, self.total)

        def close(self) -> None:
            """Nothing to release."""

        def __enter__(self) -> "_Progress":
            return self

        def __exit__(self, *exc: Any) -> None:
            self.close()

    return _Progress
