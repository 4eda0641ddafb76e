"""hf: model references: the real huggingface_hub client against a loopback Hub (tests/hub_server.py)
serving a tiny GGUF generated here. HF_HOME and HF_ENDPOINT point into the test, always."""
import logging
import os
import subprocess
import uuid

import pytest

from ovos_skill_persona_fallback.models import (ChecksumMismatch, DiskFull, ModelDownloadError, ModelNotReady,
                                                ModelRefError, NotAModelFile, ensure_model, resolve_model)
from ovos_skill_persona_fallback.models.hub import DISK_MARGIN_BYTES
from ovos_skill_persona_fallback.solvers.base import SolverConfigError, SolverUnavailable

from hub_server import COMMIT, FakeHub, HubFile, HubRepo
from tiny_gguf import write_tiny_gguf

REPO = "tester/Tiny-GGUF"
FILE = "tiny-Q8_0.gguf"
REF = f"hf:{REPO}/{FILE}"
TOKEN = "hf_SECRETtoken_0123456789"


@pytest.fixture(scope="module")
def gguf_bytes(tmp_path_factory):
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf").read_bytes()


@pytest.fixture
def hub(tmp_path, monkeypatch, gguf_bytes):
    """A loopback Hub with one repo, HF_HOME in the test's tmp dir, no token."""
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_CACHE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with FakeHub() as server:
        server.repos[REPO] = HubRepo({FILE: HubFile(gguf_bytes), "README.md": HubFile(b"# tiny\n")})
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


def cache_files(tmp_path):
    root = tmp_path / "hf" / "hub"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and ".locks" not in p.parts
                  and p.name != "CACHEDIR.TAG") if root.exists() else []


# ------------------------------------------------------------------ pull and cache

def test_pull_downloads_into_the_hf_cache_and_reports_progress(hub, tmp_path, gguf_bytes):
    seen, meanwhile = [], []

    def progress(done, total):
        seen.append((done, total))
        try:
            resolve_model(REF)
        except ModelNotReady as err:  # what a solver asking during the download hears
            meanwhile.append(str(err))

    path = ensure_model(REF, progress=progress)
    assert meanwhile and set(meanwhile) == {f"model {REF} is being downloaded"}
    assert path == tmp_path / "hf" / "hub" / "models--tester--Tiny-GGUF" / "snapshots" / COMMIT / FILE
    assert path.read_bytes() == gguf_bytes
    assert seen[-1] == (len(gguf_bytes), len(gguf_bytes))
    assert [r.method for r in hub.file_requests()].count("GET") == 1
    assert all(r.path == f"/{REPO}/resolve/main/{FILE}" for r in hub.file_requests())
    assert not [p for p in cache_files(tmp_path) if "incomplete" in p]


def test_background_downloads_log_their_progress_in_steps(hub, caplog, gguf_bytes, monkeypatch):
    import huggingface_hub.constants
    from ovos_skill_persona_fallback.models.hub import logging_progress

    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", len(gguf_bytes) // 20 + 1)
    caplog.set_level(logging.INFO)
    ensure_model(REF, progress=logging_progress(REF, step=25))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("downloading model")]
    percents = [int(line.rsplit(": ", 1)[1].split("%")[0]) for line in lines]
    # 20 chunks of 5 %: one line at the start, then one each time 25 more percent have arrived
    assert percents == [0, 25, 50, 75, 100]
    assert all(line == f"downloading model {REF}: {p}% of {len(gguf_bytes) / 1e6:.1f} MB"
               for line, p in zip(lines, percents))


def test_cached_model_is_found_with_no_request(hub):
    with pytest.raises(ModelNotReady) as not_yet:
        resolve_model(REF)
    assert isinstance(not_yet.value, SolverUnavailable) and REF in str(not_yet.value)
    path = ensure_model(REF)
    hub.requests.clear()
    assert resolve_model(REF) == path
    assert ensure_model(REF) == path
    assert hub.requests == []


def test_quantization_shorthand_picks_the_one_matching_file(hub, gguf_bytes):
    hub.repos["tester/Multi-GGUF"] = HubRepo({
        "multi-Q4_K_M.gguf": HubFile(gguf_bytes), "multi-Q8_0.gguf": HubFile(gguf_bytes + b"\0"),
        "mmproj-multi-Q8_0.gguf": HubFile(b"GGUF projector"), "README.md": HubFile(b"hi")})
    path = ensure_model("hf:tester/Multi-GGUF:q8_0")
    assert path.name == "multi-Q8_0.gguf" and path.read_bytes() == gguf_bytes + b"\0"
    listings = [r for r in hub.requests if r.path.startswith("/api/models/")]
    assert [r.path for r in listings] == ["/api/models/tester/Multi-GGUF"]
    hub.requests.clear()
    assert resolve_model("hf:tester/Multi-GGUF:Q8_0") == path  # offline, from the cached snapshot
    assert hub.requests == []


@pytest.mark.parametrize("ref, message", [
    ("hf:tester/Multi-GGUF:Q5_K_M", "has no Q5_K_M GGUF file; quantizations there: Q4_K_M, Q8_0"),
    ("hf:tester/Multi-GGUF", "several files match, name one (hf:OWNER/REPO/FILE.gguf or hf:OWNER/REPO:QUANT): "
                             "multi-Q4_K_M.gguf, multi-Q8_0.gguf"),
])
def test_no_or_several_matching_files_is_a_config_error(hub, gguf_bytes, ref, message):
    hub.repos["tester/Multi-GGUF"] = HubRepo({"multi-Q4_K_M.gguf": HubFile(gguf_bytes),
                                              "multi-Q8_0.gguf": HubFile(gguf_bytes)})
    with pytest.raises(ModelRefError) as err:
        ensure_model(ref)
    assert isinstance(err.value, SolverConfigError) and message in str(err.value) and ref in str(err.value)


@pytest.mark.parametrize("ref", ["hf:", "hf:owner", "hf:owner/repo/model.bin", "hf:owner/repo/../x.gguf",
                                 "hf:owner/repo:Q4 K", "hf:owner/repo@..", "hf:own er/repo"])
def test_malformed_references_are_config_errors_without_a_request(hub, ref):
    with pytest.raises(ModelRefError) as err:
        ensure_model(ref)
    assert isinstance(err.value, SolverConfigError) and err.value.ref == ref
    assert hub.requests == []


# ------------------------------------------------------------------ faults

def test_dropped_connection_resumes_with_a_range_request(hub, gguf_bytes, monkeypatch):
    import huggingface_hub.constants
    # the client writes in 10 MB chunks: a test file of 0.4 MB needs smaller ones for a partial write
    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 1024)
    hub.repos[REPO].files[FILE].drop_after = 5 * 1024  # whole chunks: all of them reach the file before the cut
    path = ensure_model(REF)
    assert path.read_bytes() == gguf_bytes
    gets = hub.file_requests("GET")
    assert len(gets) == 2 and "range" not in gets[0].headers
    assert gets[1].headers["range"] == "bytes=5120-"


def test_checksum_mismatch_deletes_the_download(hub, tmp_path):
    hub.repos[REPO].files[FILE].corrupt = True
    with pytest.raises(ChecksumMismatch) as err:
        ensure_model(REF)
    assert isinstance(err.value, SolverUnavailable) and REF in str(err.value) and "sha256" in str(err.value)
    assert not [p for p in cache_files(tmp_path) if p.endswith(".gguf") or "/blobs/" in p]
    with pytest.raises(ModelNotReady):
        resolve_model(REF)


def test_a_file_that_is_not_gguf_is_refused_and_deleted(hub, tmp_path):
    hub.repos[REPO].files["fake.gguf"] = HubFile(b"<html>this is not a model</html>" * 4)
    with pytest.raises(NotAModelFile) as err:
        ensure_model(f"hf:{REPO}/fake.gguf")
    assert "not a GGUF file" in str(err.value)
    assert not [p for p in cache_files(tmp_path) if "/blobs/" in p or p.endswith(".gguf")]


def test_private_repo_needs_the_token_and_the_token_is_never_shown(hub, monkeypatch, gguf_bytes, caplog):
    caplog.set_level(logging.DEBUG)
    hub.repos[REPO].token = TOKEN
    with pytest.raises(ModelDownloadError) as err:
        ensure_model(REF)
    assert "HTTP 401" in str(err.value) and REF in str(err.value) and "HF_TOKEN" in str(err.value)
    monkeypatch.setenv("HF_TOKEN", "hf_WRONGtoken_9876543210")
    with pytest.raises(ModelDownloadError) as err:
        ensure_model(REF)
    assert "hf_WRONGtoken" not in str(err.value) and "HTTP 401" in str(err.value)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert ensure_model(REF).read_bytes() == gguf_bytes
    assert hub.file_requests("GET")[-1].headers["authorization"] == f"Bearer {TOKEN}"
    assert TOKEN not in caplog.text and "hf_WRONGtoken" not in caplog.text


@pytest.mark.parametrize("ref, message", [
    ("hf:tester/No-Such-Repo/x.gguf", "repository tester/No-Such-Repo not found"),
    (f"hf:{REPO}/missing.gguf", "file not found in tester/Tiny-GGUF"),
    (f"{REF}@v9", "revision v9 not found"),
])
def test_not_found_is_unavailable_and_names_the_reference(hub, ref, message):
    with pytest.raises(ModelDownloadError) as err:
        ensure_model(ref)
    assert isinstance(err.value, SolverUnavailable) and message in str(err.value) and ref in str(err.value)


def test_no_network_is_unavailable(hub, monkeypatch):
    import socket
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(ModelDownloadError) as err:
        ensure_model(REF)
    assert REF in str(err.value) and "download failed" in str(err.value)


def test_too_little_free_space_is_refused_before_downloading(hub, gguf_bytes):
    asked = []

    def free(path):
        asked.append(path)
        return len(gguf_bytes) + DISK_MARGIN_BYTES - 1

    with pytest.raises(DiskFull) as err:
        ensure_model(REF, free_space=free)
    assert isinstance(err.value, SolverUnavailable) and "not enough disk space" in str(err.value)
    assert asked and hub.file_requests("GET") == []


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 256 KiB tmpfs (needs root and mount rights; skipped elsewhere)."""
    mount_point = tmp_path / f"full-{uuid.uuid4().hex[:6]}"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount_point)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here: " + done.stderr.decode(errors="replace").strip())
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.mark.filterwarnings("ignore:Not enough free disk space")  # huggingface_hub's own check only warns
def test_a_disk_that_fills_up_mid_download_leaves_nothing_behind(hub, tiny_tmpfs, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tiny_tmpfs / "hf"))
    with pytest.raises(DiskFull) as err:
        ensure_model(REF, free_space=lambda path: 1 << 40)  # the check believes there is room
    assert "disk filled up" in str(err.value)
    leftovers = [p for p in (tiny_tmpfs / "hf").rglob("*") if p.is_file() and p.parent.name != "refs"
                 and ".locks" not in p.parts and p.name != "CACHEDIR.TAG"]
    assert leftovers == []  # no partial blob, no snapshot entry (refs/main only holds the commit id)
    with pytest.raises(ModelNotReady):
        resolve_model(REF)


def test_plain_paths_pass_through(tmp_path, gguf_bytes, monkeypatch):
    model = tmp_path / "m.gguf"
    model.write_bytes(gguf_bytes)
    monkeypatch.setenv("MODELS", str(tmp_path))
    assert resolve_model("$MODELS/m.gguf") == model
    assert ensure_model(str(model)) == model
    (tmp_path / "x.gguf").write_bytes(b"nope")
    with pytest.raises(NotAModelFile):
        ensure_model(str(tmp_path / "x.gguf"))
    with pytest.raises(ModelNotReady):
        ensure_model(str(tmp_path / "absent.gguf"))
    assert os.environ.get("HF_TOKEN") is None


# ------------------------------------------------------------------ picking a file (pure)

LISTING = ["README.md", "model-Q4_K_M.gguf", "model-Q4_K_M_L.gguf", "model.Q8_0.gguf", "mmproj-model-Q4_K_M.gguf",
           "big/big-Q5_K_M-00001-of-00002.gguf", "big/big-Q5_K_M-00002-of-00002.gguf"]


@pytest.mark.parametrize("ref, expected", [
    ("hf:o/r:Q4_K_M", "model-Q4_K_M.gguf"),  # not Q4_K_M_L, not the projector
    ("hf:o/r:q8_0", "model.Q8_0.gguf"),  # "." is a separator too, case does not matter
    ("hf:o/r:Q4_K_M_L", "model-Q4_K_M_L.gguf"),
    ("hf:o/r/model.Q8_0.gguf", "model.Q8_0.gguf"),
    ("hf:o/r:Q5_K_M", "the model is split in 2 parts (big/big-Q5_K_M-00001-of-00002.gguf, "
                      "big/big-Q5_K_M-00002-of-00002.gguf); split models are not supported"),
    ("hf:o/r:Q2_K", "has no Q2_K GGUF file; quantizations there: Q4_K_M, Q4_K_M_L, Q5_K_M, Q8_0"),
    ("hf:o/r/absent.gguf", "absent.gguf is not in o/r"),
])
def test_pick_file_from_a_listing(ref, expected):
    from ovos_skill_persona_fallback.models.refs import parse_ref, pick_file

    parsed = parse_ref(ref)
    if expected.endswith(".gguf"):
        assert pick_file(parsed, LISTING) == expected
    else:
        with pytest.raises(ModelRefError) as err:
            pick_file(parsed, LISTING)
        assert expected in str(err.value) and ref in str(err.value)
