"""The ``persona-fallback`` command: validate persona files, ask a persona with no bus, run the demo."""
from __future__ import annotations

import argparse
import sys
import uuid
from pathlib import Path
from typing import List, Optional, Sequence

from .persona import PersonaError, load_persona_file, persona_files
from .solvers import known_solver_ids

EXIT_OK, EXIT_BAD, EXIT_NO_ANSWER = 0, 1, 2


def _arg_text(value: str, errors: str = "replace") -> str:
    """Return a command-line argument as text SQLite accepts; bytes that are not UTF-8 are decoded
    with ``errors`` ("replace": U+FFFD; "backslashreplace": ``\\xff``, which keeps ids distinct).

    Python hands such bytes over as lone surrogates, which SQLite (the memory) refuses.
    """
    try:
        raw = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate no command line produces: cli.main called in-process
        raw = value.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", errors)


def cmd_validate(args: argparse.Namespace) -> int:
    """Print ``OK name`` or the problems for every persona file; 1 if any is bad."""
    known = known_solver_ids()
    status = EXIT_OK
    files = persona_files(args.paths)
    if not files:
        print("no persona files found in: " + ", ".join(map(str, args.paths)), file=sys.stderr)
        return EXIT_BAD
    for path in files:
        if not path.exists():
            print(f"{path}: does not exist", file=args.out)
            status = EXIT_BAD
            continue
        try:
            persona = load_persona_file(path, known)
        except PersonaError as err:
            for line in err.problems:
                print(line, file=args.out)
            status = EXIT_BAD
        else:
            print(f"OK {persona.name} ({path})", file=args.out)
    return status


def _engine(args: argparse.Namespace):
    from .engine import PersonaEngine
    from .memory import MemoryConfigError, open_memory
    from .translation import Translator

    dirs: List[Path] = list(args.personas_dir or [])
    persona = args.persona
    if persona and Path(persona).suffix.lower() in (".json", ".yaml", ".yml"):
        dirs.append(Path(persona))
    try:
        memory = open_memory(args.db or None, args.db_url or None)
    except MemoryConfigError as err:
        raise SystemExit(f"error: {err}") from None
    # plugins come from mycroft.conf's "language" section, loaded only if a question needs them
    engine = PersonaEngine(dirs, memory=memory, translator=Translator())
    if persona and Path(persona).suffix.lower() in (".json", ".yaml", ".yml"):
        try:
            persona = load_persona_file(Path(persona), known_solver_ids()).name
        except PersonaError as err:
            raise SystemExit("\n".join(err.problems)) from err
    return engine, persona


def cmd_ask(args: argparse.Namespace) -> int:
    """Stream the answer's sentences to stdout, one per line."""
    from .engine import NoPersonaError

    engine, persona = _engine(args)
    try:
        try:
            session_id = _arg_text(args.session, "backslashreplace")
            stream = engine.stream(_arg_text(args.question), session_id=session_id, persona=persona,
                                   lang=args.lang)
        except NoPersonaError as err:
            known = ", ".join(sorted(engine.personas)) or "none"
            print(f"error: {err} (known personas: {known})", file=sys.stderr)
            return EXIT_BAD
        for sentence in stream:
            print(sentence, file=args.out, flush=True)
        answer = stream.answer
        if not answer.sentences:
            print(f"error: {answer.persona} could not answer", file=sys.stderr)
            for failure in answer.failures:
                print(f"  {failure.describe()}", file=sys.stderr)
            return EXIT_NO_ANSWER
        return EXIT_OK
    finally:
        engine.close()


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser."""
    parser = argparse.ArgumentParser(prog="persona-fallback", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log everything to stderr")
    commands = parser.add_subparsers(dest="command", required=True)

    validate = commands.add_parser("validate", help="check persona files or folders")
    validate.add_argument("paths", nargs="+", type=Path)
    validate.set_defaults(func=cmd_validate)

    ask = commands.add_parser("ask", help="ask a persona (no messagebus needed)")
    ask.add_argument("question")
    ask.add_argument("--persona", help="persona name, or a persona file")
    ask.add_argument("--session", default=f"cli-{uuid.uuid4().hex[:8]}",
                     help="conversation id; reuse it to continue a conversation")
    ask.add_argument("--lang", help="the asker's language (default: the persona's)")
    ask.add_argument("--personas-dir", action="append", type=Path, help="extra persona folder (repeatable)")
    ask.add_argument("--db", help="conversation database (default: under XDG_DATA_HOME)")
    ask.add_argument("--db-url", help="shared memory in PostgreSQL: postgresql://user:password@host:port/db "
                                      "(default: $PERSONA_DB_URL unless --db is given)")
    ask.set_defaults(func=cmd_ask)

    demo = commands.add_parser("demo", add_help=False,
                               help="run ovos-messagebus + ovos-core with the skill (demo --help for options)")
    demo.add_argument("demo_args", nargs=argparse.REMAINDER)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the console script."""
    from ovos_utils.log import LOG

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["demo"]:
        # the demo has its own options; argparse would refuse those that start with "--"
        from . import demo

        return demo.main(argv[1:])
    args = build_parser().parse_args(argv)
    # OVOS's LOG writes to whatever sys.stdout is when a logger is made: keep stdout for answers
    args.out = sys.stdout
    sys.stdout = sys.stderr
    LOG.set_level("DEBUG" if args.verbose else "WARNING")
    try:
        return args.func(args)
    finally:
        sys.stdout = args.out


if __name__ == "__main__":
    sys.exit(main())
