"""The ``persona-fallback`` command: validate and convert persona files, ask a persona with no bus,
manage local models, run the demo."""
from __future__ import annotations

import argparse
import gc
import json
import signal
import sys
import threading
import uuid
from pathlib import Path
from typing import List, Optional, Sequence

from .persona import DEFAULT_SOLVERS, PERSONA_SUFFIXES, PersonaError, load_persona_file, persona_files
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
    """Print ``OK name`` or the problems for every persona file, then its warnings; 1 if any is bad
    (with ``--strict``, also if any has a warning)."""
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
            for line in persona.warnings:
                print(f"warning: {line}", file=args.out)
            if persona.warnings and args.strict:
                status = EXIT_BAD
    return status


def _default_solvers(text: str) -> list:
    """Parse ``--default-solvers``: JSON, a list of solver ids or {id: config} mappings."""
    from .formats.common import chain_entries

    try:
        value = json.loads(text)
        chain_entries(value)
    except ValueError as err:  # JSONDecodeError included
        raise argparse.ArgumentTypeError(f"not a solver chain: {err}") from err
    return value


def cmd_convert(args: argparse.Namespace) -> int:
    """Write the native YAML of a persona file of any readable format (stdout, or ``-o``)."""
    from .formats.native import to_yaml

    try:
        persona = load_persona_file(args.file, known_solver_ids(), args.default_solvers)
    except PersonaError as err:
        for line in err.problems:
            print(line, file=sys.stderr)
        return EXIT_BAD
    for line in persona.warnings:
        print(f"warning: {line}", file=sys.stderr)
    text = to_yaml(persona)
    if args.output is None:
        args.out.write(text)
        return EXIT_OK
    try:
        args.output.write_text(text, encoding="utf-8")
    except OSError as err:
        print(f"{args.output}: cannot be written: {err.strerror or err}", file=sys.stderr)
        return EXIT_BAD
    print(f"wrote {persona.name} to {args.output}", file=sys.stderr)
    return EXIT_OK


def _is_persona_file(value: Optional[str]) -> bool:
    return bool(value) and (Path(value).suffix.lower() in PERSONA_SUFFIXES or Path(value).is_file())


def _engine(args: argparse.Namespace):
    from .engine import PersonaEngine
    from .memory import MemoryConfigError, open_memory
    from .translation import Translator

    dirs: List[Path] = list(args.personas_dir or [])
    persona = args.persona
    if _is_persona_file(persona):
        dirs.append(Path(persona))
    try:
        memory = open_memory(args.db or None, args.db_url or None)
    except MemoryConfigError as err:
        raise SystemExit(f"error: {err}") from None
    # plugins come from mycroft.conf's "language" section, loaded only if a question needs them
    engine = PersonaEngine(dirs, memory=memory, translator=Translator(), default_solvers=args.default_solvers)
    if _is_persona_file(persona):
        try:
            persona = load_persona_file(Path(persona), known_solver_ids(), args.default_solvers).name
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


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the personas over HTTP until Ctrl-C / SIGTERM."""
    try:
        from .server.app import create_app
        from .server.auth import KeyFileError, KeyRing, is_loopback, read_keys
        from .server.run import PersonaServer
    except ImportError as err:
        print(f"error: the server needs its extra: pip install 'ovos-skill-persona-fallback[server]' ({err})",
              file=sys.stderr)
        return EXIT_BAD
    from .engine import DEFAULT_PERSONA, PersonaEngine
    from .memory import ConversationMemory
    from .translation import Translator

    try:
        keys = read_keys(args.api_key or [], args.api_keys_file)
    except KeyFileError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD
    if not keys and not args.no_auth and not is_loopback(args.host):
        print(f"error: refusing to serve on {args.host} with no API key: give --api-key, --api-keys-file "
              f"or $PERSONA_API_KEYS, or --no-auth to serve anyone who can connect", file=sys.stderr)
        return EXIT_BAD
    memory = ConversationMemory(args.db) if args.db else ConversationMemory()
    engine = PersonaEngine(list(args.personas_dir or []), memory=memory, translator=Translator(),
                           default_persona=args.default_persona or DEFAULT_PERSONA)
    try:
        if not engine.personas:
            print("error: no persona could be loaded", file=sys.stderr)
            return EXIT_BAD
        server = PersonaServer(create_app(engine, KeyRing([] if args.no_auth else keys)), args.host, args.port)
        shown_host = f"[{args.host}]" if ":" in args.host else args.host
        print(f"serving on http://{shown_host}:{args.port}/v1 (OpenAI) and /api (Ollama); "
              f"{'API key required' if keys and not args.no_auth else 'no API key'}", file=args.out, flush=True)
        for persona in engine.personas.values():
            print(f"  {persona.name}: {persona.description}", file=args.out, flush=True)
        # uvicorn re-raises the stop signal once it has shut down; by then the answers in progress
        # are cancelled and stored, so the signal just ends run() and the engine closes below
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for stop_signal in (signal.SIGINT, signal.SIGTERM):
                previous[stop_signal] = signal.signal(stop_signal, lambda _sig, _frame: None)
        # everything loaded so far lives as long as the server: keep it out of the collector's
        # full passes, which otherwise stall answers now and then on a heap this size
        gc.freeze()
        try:
            server.run()
        finally:
            for stop_signal, handler in previous.items():
                signal.signal(stop_signal, handler)
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
    validate.add_argument("--strict", action="store_true", help="treat warnings (unknown keys...) as errors")
    validate.set_defaults(func=cmd_validate)

    convert = commands.add_parser("convert", help="write the native YAML of a persona file of any format")
    convert.add_argument("file", type=Path)
    convert.add_argument("-o", "--output", type=Path, help="YAML file to write (default: stdout)")
    chain_help = ('solvers of personas whose file names none (cards, LoLLMs), as JSON: '
                  '\'["chitchat", "failure"]\' (default) or \'[{"openai": {"api_url": "http://..."}}, "failure"]\'')
    convert.add_argument("--default-solvers", type=_default_solvers, default=list(DEFAULT_SOLVERS), help=chain_help)
    convert.set_defaults(func=cmd_convert)

    ask = commands.add_parser("ask", help="ask a persona (no messagebus needed)")
    ask.add_argument("question")
    ask.add_argument("--persona", help="persona name, or a persona file")
    ask.add_argument("--session", default=f"cli-{uuid.uuid4().hex[:8]}",
                     help="conversation id; reuse it to continue a conversation")
    ask.add_argument("--lang", help="the asker's language (default: the persona's)")
    ask.add_argument("--personas-dir", action="append", type=Path, help="extra persona folder (repeatable)")
    ask.add_argument("--db", help="conversation database (default: under XDG_DATA_HOME)")
    ask.add_argument("--default-solvers", type=_default_solvers, default=list(DEFAULT_SOLVERS), help=chain_help)
    ask.add_argument("--db-url", help="shared memory in PostgreSQL: postgresql://user:password@host:port/db "
                                      "(default: $PERSONA_DB_URL unless --db is given)")
    ask.set_defaults(func=cmd_ask)

    from .models.cli import add_commands as add_model_commands

    add_model_commands(commands)
    serve = commands.add_parser("serve", help="serve the personas over OpenAI/Ollama-compatible HTTP")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8337, help="port (default 8337)")
    serve.add_argument("--personas-dir", action="append", type=Path, help="extra persona folder (repeatable)")
    serve.add_argument("--default-persona", help="persona answering requests that name no model")
    serve.add_argument("--db", help="conversation database (default: under XDG_DATA_HOME)")
    serve.add_argument("--api-key", action="append", help="accepted API key (repeatable; also $PERSONA_API_KEYS)")
    serve.add_argument("--api-keys-file", type=Path, help="file of accepted API keys, one a line")
    serve.add_argument("--no-auth", action="store_true", help="serve without keys even off loopback")
    serve.set_defaults(func=cmd_serve)

    demo = commands.add_parser("demo", add_help=False,
                               help="run ovos-messagebus + ovos-core with the skill (demo --help for options)")
    demo.add_argument("demo_args", nargs=argparse.REMAINDER)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the console script."""
    from ovos_utils.log import LOG

    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = False
    while argv[:1] and argv[0] in ("-v", "--verbose"):
        verbose, argv = True, argv[1:]
    if argv[:1] == ["demo"]:
        # the demo has its own options; argparse would refuse those that start with "--"
        from . import demo

        previous = LOG.level
        LOG.set_level("DEBUG" if verbose else "INFO")
        out, sys.stdout = sys.stdout, sys.stderr  # logs to stderr, the conversation to stdout
        try:
            return demo.main(argv[1:], out=out)
        finally:
            sys.stdout = out
            LOG.set_level(previous)
    if verbose:
        argv.insert(0, "--verbose")
    args = build_parser().parse_args(argv)
    # OVOS's LOG writes to whatever sys.stdout is when a logger is made: keep stdout for answers
    args.out = sys.stdout
    sys.stdout = sys.stderr
    previous = LOG.level  # main() also runs in-process (tests, embedding): leave the level as found
    LOG.set_level("DEBUG" if args.verbose else "WARNING")
    try:
        return args.func(args)
    finally:
        sys.stdout = args.out
        LOG.set_level(previous)


if __name__ == "__main__":
    sys.exit(main())
