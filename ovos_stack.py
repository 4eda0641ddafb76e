"""The real OVOS stack (ovos-messagebus + ovos-core) in isolation: the demo's, end-to-end tests' and
bus benchmarks' harness.

``OVOSStack`` starts both services as child processes in a throw-away root directory: their XDG
dirs, HOME and every config location point inside it, so the user's own OVOS install is neither
read nor touched. The harness's bus client also answers three queries that would otherwise stall
an offline ovos-core for a minute (see ``_RESPONDERS`` below).
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable, Deque, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from . import SKILL_ID  # the package (and so the skill module) is loaded first anyway

DEFAULT_TIMEOUT = 90.0
DEFAULT_ASK_TIMEOUT = 60.0
BUS_ROUTE = "/core"
END_OF_UTTERANCE = "ovos.utterance.handled"
STOP_GRACE = 5.0
LOG_TAIL_LINES = 60
HISTORY_SIZE = 20000

# Pipeline stages that exist in this install without any trainer: the ovos-core built-ins (stop,
# converse, fallback) and padacioso (regex, pure Python). ovos-core's default list names padatious,
# adapt, OCP and common_qa, which are not installed; core would only log and drop them.
DEFAULT_PIPELINE = [
    "stop_high",
    "converse",
    "padacioso_high",
    "fallback_high",
    "stop_medium",
    "padacioso_medium",
    "fallback_medium",
    "fallback_low",
]

# Nothing may leave the machine: every connectivity probe points at a closed local port, so a
# probe that still runs fails at once instead of waiting on DNS or a remote host.
_DEAD_URL = "http://127.0.0.1:9/"


class StackError(RuntimeError):
    """The stack failed to start or stopped answering; the message carries the log tails."""


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free a moment ago (bind to port 0, read it, release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_is_open(port: int, host: str = "127.0.0.1") -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def deep_merge(base: Dict[str, Any], override: Mapping[str, Any]) -> Dict[str, Any]:
    """Merge ``override`` into a copy of ``base``: dicts recursively, everything else replaced."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def installed_skill_ids() -> List[str]:
    """Skill ids registered under the ``ovos.plugin.skill`` entry point in this environment."""
    return sorted({ep.name for ep in entry_points(group="ovos.plugin.skill")})


def session_id_of(message: Any) -> Optional[str]:
    """The session id in a message's context, or None."""
    session = (message.context or {}).get("session")
    if isinstance(session, Mapping):
        return session.get("session_id")
    return None


def spoken(messages: Iterable[Any]) -> List[str]:
    """The ``utterance`` of every ``speak`` message, in order."""
    return [m.data.get("utterance", "") for m in messages if m.msg_type == "speak"]


def speaker_of(message: Any, default: str = "assistant") -> str:
    """Best-effort name of who spoke: the persona named in the speak message, else ``default``."""
    data = message.data or {}
    meta = data.get("meta") if isinstance(data.get("meta"), Mapping) else {}
    session = (message.context or {}).get("session") or {}
    for candidate in (meta.get("persona"), data.get("persona"), session.get("persona_id")):
        if isinstance(candidate, str) and candidate.strip():
            return candidate.strip()
    return default


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as err:
        return f"<cannot read {path}: {err}>"
    return "\n".join(text.splitlines()[-lines:])


class _Recorder:
    """Messages of one session during one ask(), closed by ``ovos.utterance.handled``."""

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self.messages: List[Any] = []
        self.done = threading.Event()


class OVOSStack:
    """ovos-messagebus + ovos-core as isolated subprocesses, and a bus client to talk to them.

    Use as a context manager (``with OVOSStack() as stack: stack.ask("hello")``) or call
    ``start()``/``stop()``. ``skills`` lists the skill ids core may load (every other installed
    skill is blacklisted); ``None`` loads all. ``internet`` is what the harness answers to core's
    connectivity check: False (the default) loads only skills whose runtime requirements allow
    offline loading, which is the honest answer on an offline machine. ``env`` adds variables
    to the children's environment (applied last).
    """

    def __init__(self, *, config: Optional[Mapping[str, Any]] = None,
                 skill_settings: Optional[Mapping[str, Any]] = None,
                 skills: Optional[Sequence[str]] = (SKILL_ID,),
                 wait_for_skill: bool = True,
                 timeout: float = DEFAULT_TIMEOUT,
                 lang: str = "en-us",
                 internet: bool = False,
                 keep: bool = False,
                 log_level: str = "INFO",
                 env: Optional[Mapping[str, str]] = None,
                 progress: Optional[Callable[[str], None]] = None) -> None:
        self.extra_config = dict(config or {})
        self.skill_settings = dict(skill_settings) if skill_settings is not None else None
        self.skills = tuple(skills) if skills is not None else None
        self.wait_for_skill = wait_for_skill
        self.timeout = timeout
        self.lang = lang
        self.internet = internet
        self.keep = keep
        self.log_level = log_level
        self.extra_env = dict(env or {})
        self._progress = progress or (lambda text: None)

        self.root: Optional[Path] = None
        self.port: Optional[int] = None
        self.config: Dict[str, Any] = {}
        self.startup_seconds: Optional[float] = None
        self.bus_process: Optional[subprocess.Popen] = None
        self.core_process: Optional[subprocess.Popen] = None
        self.client = None

        self._cond = threading.Condition()
        self._seq = 0
        self._history: Deque[Tuple[int, Any]] = deque(maxlen=HISTORY_SIZE)
        self._recorders: Dict[str, _Recorder] = {}
        self._session_locks: Dict[str, threading.Lock] = {}
        self._sessions: Dict[str, Dict[str, Any]] = {}
        self._loaded: List[str] = []
        self._initialized = threading.Event()
        self._log_files: List[Any] = []
        self._stopped = True

    # ------------------------------------------------------------------ paths and config

    @property
    def config_home(self) -> Path:
        """XDG_CONFIG_HOME of the child processes."""
        return self._require_root() / "config"

    @property
    def config_path(self) -> Path:
        """The mycroft.conf the services read."""
        return self.config_home / "mycroft" / "mycroft.conf"

    @property
    def settings_path(self) -> Path:
        """settings.json of this project's skill."""
        return self.config_home / "mycroft" / "skills" / SKILL_ID / "settings.json"

    @property
    def log_paths(self) -> Dict[str, Path]:
        """Log file of each service (stdout and stderr together)."""
        root = self._require_root()
        return {"messagebus": root / "messagebus.log", "ovos-core": root / "ovos-core.log"}

    @property
    def loaded_skills(self) -> List[str]:
        """Skill ids core announced with ``mycroft.skill.loaded``."""
        with self._cond:
            return list(self._loaded)

    @property
    def running(self) -> bool:
        """True while both services are alive."""
        return all(p is not None and p.poll() is None for p in (self.bus_process, self.core_process))

    def _require_root(self) -> Path:
        if self.root is None:
            raise StackError("the stack has not been started")
        return self.root

    def build_config(self) -> Dict[str, Any]:
        """The mycroft.conf for the child processes (before the caller's ``config`` is merged)."""
        blacklist = ["skill-ovos-stop.openvoiceos"]
        if self.skills is not None:
            blacklist += [s for s in installed_skill_ids() if s not in self.skills]
        return {
            "lang": self.lang,
            "secondary_langs": [],
            "websocket": {"host": "127.0.0.1", "port": self.port, "route": BUS_ROUTE,
                          "ssl": False, "shared_connection": True},
            "intents": {"pipeline": list(DEFAULT_PIPELINE)},
            "skills": {"blacklisted_skills": blacklist},
            "network_tests": {"ip_url": _DEAD_URL, "web_url": _DEAD_URL,
                              "web_url_secondary": _DEAD_URL, "captive_portal_url": _DEAD_URL,
                              "dns_primary": "127.0.0.1", "dns_secondary": "127.0.0.1"},
            "open_data": {"intent_urls": []},
            "logging": {"log_level": self.log_level, "logs": {"path": "stdout"}},
        }

    def child_env(self) -> Dict[str, str]:
        """Environment of the child processes: every config and data location inside the root."""
        root = self._require_root()
        env = dict(os.environ)
        for name in ("OVOS_CONFIG_BASE_FOLDER", "OVOS_CONFIG_FILENAME", "OVOS_DEFAULT_CONFIG"):
            env.pop(name, None)
        env.update({
            "HOME": str(root / "home"),  # ~/.mycroft/mycroft.conf is still read by ovos-config
            "XDG_CONFIG_HOME": str(root / "config"),
            "XDG_DATA_HOME": str(root / "data"),
            "XDG_CACHE_HOME": str(root / "cache"),
            "XDG_STATE_HOME": str(root / "state"),
            "XDG_CONFIG_DIRS": str(root / "etc-xdg"),  # instead of /etc/xdg
            "XDG_DATA_DIRS": str(root / "share"),
            "MYCROFT_SYSTEM_CONFIG": str(root / "etc" / "mycroft.conf"),  # never created
            "OVOS_DISTRIBUTION_CONFIG": str(root / "usr-share" / "mycroft.conf"),  # never created
            "MYCROFT_WEB_CACHE": str(root / "config" / "mycroft" / "web_cache.json"),
            "PYTHONUNBUFFERED": "1",
        })
        env.update(self.extra_env)
        return env

    def _write_files(self) -> None:
        root = self._require_root()
        for sub in ("config/mycroft/skills", "data", "cache", "state", "home", "etc-xdg", "share"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self.config = deep_merge(self.build_config(), self.extra_config)
        self.config_path.write_text(json.dumps(self.config, indent=2))
        if self.skill_settings is not None:
            self.settings_path.parent.mkdir(parents=True, exist_ok=True)
            self.settings_path.write_text(json.dumps(self.skill_settings, indent=2))

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> "OVOSStack":
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def start(self) -> "OVOSStack":
        """Start messagebus and core; return once core is ready (and our skill loaded, if asked)."""
        if not self._stopped:
            raise StackError("the stack is already running")
        self._stopped = False
        atexit.register(self.stop)
        started = time.monotonic()
        deadline = started + self.timeout
        try:
            self.root = Path(tempfile.mkdtemp(prefix="ovos-stack-"))
            self.port = free_port()
            self._write_files()
            self._progress(f"starting messagebus on 127.0.0.1:{self.port}...")
            self.bus_process = self._spawn("ovos-messagebus", "messagebus")
            self._wait_for_port(deadline)
            self._connect(deadline)
            self._progress("starting ovos-core...")
            self.core_process = self._spawn("ovos-core", "ovos-core")
            self._wait_for_core(deadline)
            if self.wait_for_skill:
                self._wait_for_skills(deadline)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        self._progress(f"ready in {self.startup_seconds:.1f} s")
        return self

    def stop(self) -> None:
        """Stop core, then the bus (SIGTERM to the process group, SIGKILL after 5 s); clean up."""
        if self._stopped:
            return
        self._stopped = True
        atexit.unregister(self.stop)
        if self.client is not None:
            try:
                self.client.close()
            except Exception:  # closing a half-open websocket may raise anything; we are leaving
                pass
            self.client = None
        for process in (self.core_process, self.bus_process):
            if process is not None:
                self._terminate(process)
        for handle in self._log_files:
            handle.close()
        self._log_files.clear()
        with self._cond:
            for recorder in self._recorders.values():
                recorder.done.set()
            self._cond.notify_all()
        if self.root is not None and not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)

    @staticmethod
    def _terminate(process: subprocess.Popen) -> None:
        def signal_group(sig: int) -> None:
            try:
                os.killpg(process.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

        if process.poll() is None:
            signal_group(signal.SIGTERM)
            try:
                process.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                pass
        # the leader may be gone while helpers it started in its group are not
        signal_group(signal.SIGKILL)
        process.wait()

    def _spawn(self, executable: str, log_name: str) -> subprocess.Popen:
        path = Path(sys.executable).parent / executable
        if not path.exists():
            found = shutil.which(executable)
            if not found:
                raise StackError(f"{executable} not found next to {sys.executable} or on PATH")
            path = Path(found)
        log = open(self.log_paths[log_name], "wb")
        self._log_files.append(log)
        return subprocess.Popen([str(path)], cwd=self.root, env=self.child_env(), stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def logs(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines of each service's log."""
        if self.root is None:
            return ""
        parts = []
        for name, path in self.log_paths.items():
            parts.append(f"----- {name} ({path}) -----\n{_tail(path, lines)}")
        return "\n".join(parts)

    def _fail(self, reason: str) -> StackError:
        return StackError(f"{reason}\n{self.logs()}")

    def _check_alive(self) -> None:
        for name, process in (("ovos-messagebus", self.bus_process), ("ovos-core", self.core_process)):
            if process is not None and process.poll() is not None:
                raise self._fail(f"{name} exited with status {process.returncode}")

    def _wait_for_port(self, deadline: float) -> None:
        while not port_is_open(self.port):
            self._check_alive()
            if time.monotonic() > deadline:
                raise self._fail(f"messagebus did not open port {self.port} in {self.timeout:.0f} s")
            time.sleep(0.05)

    def _connect(self, deadline: float) -> None:
        from ovos_bus_client import MessageBusClient
        from pyee import EventEmitter

        # A synchronous emitter runs our handlers on the websocket thread in arrival order; the
        # default executor emitter would run them on a pool and could reorder what we record.
        emitter = EventEmitter()
        emitter.on("error", lambda err: None)
        self.client = MessageBusClient(host="127.0.0.1", port=self.port, route=BUS_ROUTE, ssl=False,
                                       emitter=emitter)
        self.client.on("message", self._on_raw)
        for msg_type, handler in self._responders().items():
            self.client.on(msg_type, self._guard(handler))
        self.client.on("mycroft.skill.loaded", self._guard(self._on_skill_loaded))
        self.client.on("mycroft.skills.initialized", self._guard(lambda m: self._initialized.set()))
        self.client.run_in_thread()
        if not self.client.connected_event.wait(max(0.1, deadline - time.monotonic())):
            raise self._fail("could not connect to the messagebus")

    # ------------------------------------------------------------------ bus handlers

    def _responders(self) -> Dict[str, Callable[[Any], None]]:
        """Answers to queries that nothing in this stack answers and core would wait for.

        * ``mycroft.skills.train``: after loading skills, SkillManager._load_new_skills waits up
          to 60 s for ``mycroft.skills.trained``; only trainer plugins (padatious) answer it, and
          padacioso, being regex only, does not. Nothing needs training here, so we confirm.
        * ``ovos.PHAL.internet_check``: with no PHAL connectivity plugin, core waits 3 s for
          the reply and then probes the web itself; we give the configured answer at once.
        * ``gui.status.request``: is_gui_connected() waits 3 s (twice during startup); no GUI.
        """
        def trained(message: Any) -> None:
            self.client.emit(message.reply("mycroft.skills.trained", {}))

        def internet_check(message: Any) -> None:
            self.client.emit(message.response({"internet_connected": self.internet,
                                                "network_connected": self.internet}))

        def gui_status(message: Any) -> None:
            self.client.emit(message.response({"connected": False}))

        return {"mycroft.skills.train": trained,
                "ovos.PHAL.internet_check": internet_check,
                "gui.status.request": gui_status}

    @staticmethod
    def _guard(handler: Callable[[Any], None]) -> Callable[[Any], None]:
        # an exception escaping a handler reaches websocket-client, whose on_error makes the
        # bus client drop the connection and reconnect: never let one through
        def guarded(message: Any) -> None:
            try:
                handler(message)
            except Exception as err:  # noqa: BLE001 - reported, never propagated (see above)
                print(f"ovos-stack: handler for {getattr(message, 'msg_type', '?')} failed: {err!r}",
                      file=sys.stderr)
        return guarded

    def _on_skill_loaded(self, message: Any) -> None:
        skill_id = message.data.get("skill_id")
        with self._cond:
            if skill_id and skill_id not in self._loaded:
                self._loaded.append(skill_id)
            self._cond.notify_all()

    def _on_raw(self, raw: str) -> None:
        from ovos_bus_client.message import Message

        try:
            message = Message.deserialize(raw)
        except Exception:  # noqa: BLE001 - a malformed frame from some client is not ours to die on
            return
        sid = session_id_of(message)
        with self._cond:
            self._seq += 1
            self._history.append((self._seq, message))
            recorder = self._recorders.get(sid) if sid else None
            if recorder is not None and not recorder.done.is_set():
                recorder.messages.append(message)
                if message.msg_type == END_OF_UTTERANCE:
                    recorder.done.set()
            self._cond.notify_all()

    # ------------------------------------------------------------------ talking to the stack

    def emit(self, message: Any) -> None:
        """Send a message on the bus."""
        if self.client is None:
            raise StackError("the stack is not running")
        self.client.emit(message)

    def mark(self) -> int:
        """A position in the message history, for ``wait_for(..., since=mark)``."""
        with self._cond:
            return self._seq

    def messages_since(self, mark: int = 0) -> List[Any]:
        """Every message seen after ``mark`` (the history keeps the latest 20000)."""
        with self._cond:
            return [m for seq, m in self._history if seq > mark]

    def wait_for(self, msg_type: str, predicate: Optional[Callable[[Any], bool]] = None,
                 timeout: float = 10.0, *, since: Optional[int] = None) -> Optional[Any]:
        """The first message of ``msg_type`` (matching ``predicate``) after ``since``, or None.

        ``since`` defaults to now; take a ``mark()`` before emitting to avoid missing a fast reply.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            last = self._seq if since is None else since
            while True:
                for seq, message in self._history:
                    if seq <= last:
                        continue
                    if message.msg_type == msg_type and (predicate is None or predicate(message)):
                        return message
                last = self._seq
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stopped:
                    return None
                self._cond.wait(remaining)

    def session(self, session_id: str) -> Dict[str, Any]:
        """The session sent with the next utterance of ``session_id``."""
        with self._cond:
            return dict(self._sessions.get(session_id) or {"session_id": session_id})

    def ask(self, utterance: str, *, session_id: str = "default", lang: str = "en-us",
            timeout: float = DEFAULT_ASK_TIMEOUT) -> List[Any]:
        """Send one utterance; return every message of its session until ``ovos.utterance.handled``.

        The first turn of a session sends only ``session_id`` and ``lang``, so core fills the rest
        from the stack's config (a full ``Session(...).serialize()`` here would carry this
        process's own config: the user's pipeline, location and blacklists). Later turns send the
        session core returned, as a real client (a HiveMind satellite) does. Utterances of one
        session are serialised; different sessions run concurrently. Raises ``TimeoutError``.
        """
        from ovos_bus_client.message import Message

        with self._cond:
            lock = self._session_locks.setdefault(session_id, threading.Lock())
        with lock:
            session = self.session(session_id)
            session["lang"] = lang
            recorder = _Recorder(session_id)
            with self._cond:
                self._recorders[session_id] = recorder
            try:
                self.emit(Message("recognizer_loop:utterance",
                                  {"utterances": [utterance], "lang": lang},
                                  {"session": session, "lang": lang, "source": "ovos-stack",
                                   "destination": ["skills"]}))
                finished = recorder.done.wait(timeout)
            finally:
                with self._cond:
                    self._recorders.pop(session_id, None)
            if self._stopped:
                raise StackError("the stack stopped during ask()")
            if not finished:
                raise TimeoutError(f"no {END_OF_UTTERANCE} for session {session_id!r} in {timeout} s; "
                                   f"got {[m.msg_type for m in recorder.messages]}")
            final = recorder.messages[-1].context.get("session")
            if session_id != "default" and isinstance(final, Mapping):
                with self._cond:
                    self._sessions[session_id] = dict(final)
            return list(recorder.messages)

    spoken = staticmethod(spoken)

    # ------------------------------------------------------------------ readiness

    def _core_reports_ready(self) -> bool:
        from ovos_bus_client.message import Message

        reply = self.client.wait_for_response(Message("mycroft.skills.is_ready"), timeout=1.0)
        return bool(reply and reply.data.get("status"))

    def _check_core_log(self) -> None:
        # a crash in SkillManager's thread (a skill class core cannot read, say) leaves the
        # process up but never ready: report it now instead of at the timeout
        try:
            text = self.log_paths["ovos-core"].read_text(errors="replace")
        except OSError:
            return
        if "Exception in thread" in text:
            raise self._fail("a thread of ovos-core crashed during startup")

    def _wait_for_core(self, deadline: float) -> None:
        next_poll = time.monotonic() + 2.0
        while not self._initialized.wait(0.1):
            self._check_alive()
            self._check_core_log()
            now = time.monotonic()
            if now > deadline:
                raise self._fail(f"ovos-core did not report ready in {self.timeout:.0f} s")
            if now >= next_poll:  # in case mycroft.skills.initialized went by unseen
                if self._core_reports_ready():
                    return
                next_poll = time.monotonic() + 2.0

    def _expected_skills(self) -> List[str]:
        return list(self.skills) if self.skills is not None else [SKILL_ID]

    def _skill_list(self) -> Dict[str, Any]:
        from ovos_bus_client.message import Message

        reply = self.client.wait_for_response(Message("skillmanager.list"), "mycroft.skills.list",
                                              timeout=3.0)
        return dict(reply.data) if reply else {}

    def _wait_for_skills(self, deadline: float) -> None:
        expected = self._expected_skills()
        installed = installed_skill_ids()
        missing = [s for s in expected if s not in installed]
        if missing:
            raise self._fail(f"not installed (no ovos.plugin.skill entry point): {missing}")
        while True:
            pending = [s for s in expected if s not in self.loaded_skills]
            if not pending:
                return
            self._check_alive()
            listing = self._skill_list()
            failed = [s for s in pending if s in listing and not listing[s].get("active")]
            if failed:
                raise self._fail(f"ovos-core failed to load {failed} (see the traceback in its log)")
            if all(s in listing for s in pending):
                return  # loaded and active; the mycroft.skill.loaded message went by unseen
            if not self.internet:
                # offline skills are loaded before mycroft.skills.initialized: these never will be
                raise self._fail(
                    f"ovos-core did not load {pending}: with no internet, core loads only skills whose "
                    "runtime_requirements have internet_before_load=False and network_before_load=False")
            if time.monotonic() > deadline:
                raise self._fail(f"{pending} not loaded in {self.timeout:.0f} s")
            with self._cond:
                self._cond.wait(0.5)
