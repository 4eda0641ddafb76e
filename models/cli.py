"""``persona-fallback models pull|list|rm|info``: the model cache from the command line."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, TextIO

from .cache import cached_models, mark_users, remove_model
from .errors import ModelError, ModelNotReady
from .gguf_info import GGUFError, format_parameters, read_gguf_info
from .hub import ensure_model, hub_cache_dir, resolve_model
from .refs import is_hub_ref

EXIT_OK, EXIT_BAD = 0, 1
BAR_WIDTH = 30
MODEL_ENV = "PERSONA_MODEL"


def add_commands(commands: Any) -> None:
    """Add the ``models`` command and its sub-commands to an argparse sub-parser set."""
    models = commands.add_parser("models", help="download, list, inspect and remove local GGUF models")
    actions = models.add_subparsers(dest="models_command", required=True)
    pull = actions.add_parser("pull", help="download a model (hf:OWNER/REPO/FILE.gguf or hf:OWNER/REPO:QUANT)")
    pull.add_argument("ref")
    pull.set_defaults(func=cmd_pull)
    listing = actions.add_parser("list", help="the GGUF models in the Hugging Face cache")
    listing.add_argument("--personas-dir", action="append", type=Path, help="extra persona folder (repeatable)")
    listing.set_defaults(func=cmd_list)
    remove = actions.add_parser("rm", help="delete a cached model")
    remove.add_argument("ref")
    remove.set_defaults(func=cmd_rm)
    info = actions.add_parser("info", help="what a model file is, from its header (no model load)")
    info.add_argument("ref", help="an hf: reference (already pulled) or a path")
    info.set_defaults(func=cmd_info)


class ProgressBar:
    """A one-line download bar on a stream (stderr), redrawn when the shown figure changes."""

    def __init__(self, label: str, stream: Optional[TextIO] = None) -> None:
        self.label, self.stream = label, stream or sys.stderr
        self._last = ""

    def __call__(self, done: int, total: Optional[int]) -> None:
        if total:
            filled = min(BAR_WIDTH, BAR_WIDTH * done // total)
            line = (f"\r{self.label} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] "
                    f"{100 * done // total:3d}% {done / 1e6:.1f}/{total / 1e6:.1f} MB")
        else:
            line = f"\r{self.label} {done / 1e6:.1f} MB"
        if line != self._last:
            self._last = line
            self.stream.write(line)
            self.stream.flush()

    def finish(self) -> None:
        """End the bar's line."""
        if self._last:
            self.stream.write("\n")
            self.stream.flush()


def cmd_pull(args: argparse.Namespace) -> int:
    """Download a model into the cache (a cached one is not fetched again); print its path."""
    bar = ProgressBar(args.ref)
    try:
        path = ensure_model(args.ref, progress=bar)
    except ModelError as err:
        bar.finish()
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD
    bar.finish()
    print(path, file=args.out)
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    """Print the cached GGUF models: reference, size, quantization, personas that use it."""
    models = cached_models()
    mark_users(models, _persona_model_refs(args.personas_dir or []))
    if not models:
        print(f"no GGUF models in {hub_cache_dir()}", file=sys.stderr)
        return EXIT_OK
    rows = [(model.ref, f"{model.size / 1e6:.1f} MB", model.quantization or "?",
             ", ".join(model.used_by) or "-") for model in models]
    header = ("MODEL", "SIZE", "QUANT", "USED BY")
    widths = [max(len(row[i]) for row in rows + [header]) for i in range(3)]
    for row in [header] + rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[3], file=args.out)
    return EXIT_OK


def cmd_rm(args: argparse.Namespace) -> int:
    """Delete a cached model's files."""
    try:
        removed = remove_model(args.ref)
    except ModelError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD
    for path in removed:
        print(f"removed {path}", file=args.out)
    return EXIT_OK


def cmd_info(args: argparse.Namespace) -> int:
    """Print what the header of a model file says."""
    try:
        path = resolve_model(args.ref)
        info = read_gguf_info(path)
    except ModelNotReady as err:
        hint = f"; run: persona-fallback models pull {args.ref}" if is_hub_ref(args.ref) else ""
        print(f"error: {err}{hint}", file=sys.stderr)
        return EXIT_BAD
    except (ModelError, GGUFError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD
    except OSError as err:
        print(f"error: cannot read {args.ref}: {err.strerror or err}", file=sys.stderr)
        return EXIT_BAD
    lines = [
        ("file", str(info.path)),
        ("size", f"{info.size / 1e6:.1f} MB"),
        ("architecture", info.architecture or "unknown"),
        ("name", info.name or "-"),
        ("parameters", f"{format_parameters(info.parameters)} ({info.parameters})"),
        ("context length", str(info.context_length) if info.context_length else "unknown"),
        ("quantization", info.quantization or "unknown"),
        ("chat template", "yes" if info.has_chat_template else "no"),
        ("GGUF version", str(info.version)),
    ]
    for label, value in lines:
        print(f"{label + ':':16}{value}", file=args.out)
    return EXIT_OK


def _persona_model_refs(extra_dirs: List[Path]) -> Dict[str, str]:
    """{persona name: its llama-cpp model reference} for the shipped personas and ``extra_dirs``."""
    from ..engine import SHIPPED_PERSONAS_DIR
    from ..persona import load_personas

    personas, _problems = load_personas([SHIPPED_PERSONAS_DIR, *extra_dirs])
    refs = {}
    for name, persona in personas.items():
        if "llama-cpp" not in persona.solvers:
            continue
        model = persona.solver_config("llama-cpp").get("model") or os.environ.get(MODEL_ENV)
        if isinstance(model, str) and model:
            refs[name] = model
    return refs
