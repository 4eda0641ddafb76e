"""`pip install .` must carry every sub-package, every locale file, the personas and the entry points."""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "ovos_skill_persona_fallback"


def test_wheel_holds_the_whole_skill(tmp_path):
    # build from a clean copy: a build/ folder left in the checkout would hide a missing package
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".hypothesis", "tests", "benchmarks"))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path / "wheel"), str(source)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    [wheel] = (tmp_path / "wheel").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {path.relative_to(ROOT).as_posix() for path in ROOT.glob("*.py") if path.name != "setup.py"}
    sources |= {path.relative_to(ROOT).as_posix() for sub in ("solvers", "formats") for path in (ROOT / sub).glob("*.py")}
    data = {path.relative_to(ROOT).as_posix() for folder in ("locale", "personas")
            for path in (ROOT / folder).rglob("*") if path.is_file()} | {"settingsmeta.yaml"}
    missing = {f"{PACKAGE}/{name}" for name in sources | data} - names
    assert not missing, sorted(missing)
    [entry_points] = [name for name in names if name.endswith(".dist-info/entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert f"ovos-skill-persona-fallback.openpersona = {PACKAGE}:PersonaFallbackSkill" in text
    assert f"persona-fallback = {PACKAGE}.cli:main" in text
    # a skill installs into an existing OVOS: it must never pull, pin or downgrade ovos-core itself
    [metadata] = [name for name in names if name.endswith(".dist-info/METADATA")]
    requires = [line.split(":", 1)[1].strip() for line in zipfile.ZipFile(wheel).read(metadata).decode().splitlines()
                if line.startswith("Requires-Dist:")]
    core = [req for req in requires if req.startswith(("ovos-core", "ovos_core", "ovos-messagebus"))]
    assert core and all("extra ==" in req for req in core), core
    assert all("<" in req or "==" in req for req in requires if req.startswith("ovos")), requires
