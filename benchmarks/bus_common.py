"""Helpers shared by the benchmarks that drive the real bus (bus_overhead, concurrency_stop) and
remote_path: statistics, a table printer, persona files, and a bus tap that timestamps messages.

``BusTap`` listens on the raw websocket of an ``OVOSStack``'s own client, so every timestamp is
"when this client received the message" (``time.perf_counter()``), the same clock for the message
that starts an interval and the one that ends it.
"""
from __future__ import annotations

import json
import math
import os
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parent.parent
TESTS_DIR = REPO_ROOT / "tests"


def add_tests_to_path() -> None:
    """Make ``tests/`` importable (``openai_server``, ``tiny_gguf``)."""
    if str(TESTS_DIR) not in sys.path:
        sys.path.insert(0, str(TESTS_DIR))


# ---------------------------------------------------------------------- statistics

def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, linear between closest ranks; nan if empty."""
    data = sorted(values)
    if not data:
        return math.nan
    if len(data) == 1:
        return data[0]
    pos = q * (len(data) - 1)
    low = math.floor(pos)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (pos - low)


def median(values: Sequence[float]) -> float:
    """Median of ``values``; nan if empty."""
    return statistics.median(values) if values else math.nan


def p90(values: Sequence[float]) -> float:
    """90th percentile of ``values``; nan if empty."""
    return percentile(values, 0.9)


def ms(seconds: float) -> str:
    """Seconds as milliseconds text with two decimals ("n/a" for nan)."""
    return "n/a" if seconds is None or math.isnan(seconds) else f"{seconds * 1000:.2f}"


def ratio(ours: float, theirs: float) -> float:
    """ours / theirs, nan when either is missing or theirs is 0."""
    if ours is None or theirs is None or math.isnan(ours) or math.isnan(theirs) or theirs == 0:
        return math.nan
    return ours / theirs


def machine_note() -> str:
    """CPU count and load average, printed with each result: other work on the machine skews timings."""
    try:
        one, five, _ = os.getloadavg()
        load = f"load average {one:.1f} (1 min) {five:.1f} (5 min)"
    except OSError:
        load = "load average unknown"
    return f"{os.cpu_count()} CPUs, {load}"


def print_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Print a plain aligned text table."""
    rows = [[str(cell) for cell in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    print(line)
    print("-" * len(line))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))


# ---------------------------------------------------------------------- files and messages

def write_json(folder: Path, name: str, data: Mapping[str, Any]) -> Path:
    """Write ``data`` as ``folder/name.json`` and return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(data, indent=2))
    return path


def utterance(text: str, session: Mapping[str, Any], lang: str = "en-us") -> Any:
    """A ``recognizer_loop:utterance`` message for ``session`` (a dict with at least session_id)."""
    from ovos_bus_client.message import Message

    session = dict(session)
    session.setdefault("lang", lang)
    return Message("recognizer_loop:utterance", {"utterances": [text], "lang": lang},
                   {"session": session, "lang": lang, "source": "benchmark", "destination": ["skills"]})


# ---------------------------------------------------------------------- the bus tap

@dataclass
class Stamp:
    """One message as received by the tap."""

    at: float  # time.perf_counter() when the client received it
    msg_type: str
    session_id: Optional[str]
    data: Dict[str, Any] = field(default_factory=dict)


class BusTap:
    """Timestamps every message the stack's bus client receives, and waits for them.

    Attach after ``stack.start()``. The handler runs on the websocket thread in arrival order;
    it only parses JSON and appends, so it adds the same few microseconds to every message.
    """

    def __init__(self, stack: Any, keep: Optional[Callable[[str], bool]] = None) -> None:
        self._stack = stack
        self._keep = keep
        self._cond = threading.Condition()
        self.stamps: List[Stamp] = []
        stack.client.on("message", self._on_raw)

    def _on_raw(self, raw: str) -> None:
        at = time.perf_counter()
        try:
            obj = json.loads(raw)
        except ValueError:
            return
        msg_type = obj.get("type", "")
        if self._keep is not None and not self._keep(msg_type):
            return
        context = obj.get("context") or {}
        session = context.get("session") if isinstance(context, dict) else None
        sid = session.get("session_id") if isinstance(session, dict) else None
        data = obj.get("data") if isinstance(obj.get("data"), dict) else {}
        with self._cond:
            self.stamps.append(Stamp(at, msg_type, sid, data))
            self._cond.notify_all()

    def mark(self) -> int:
        """Position in the stamp list, for ``wait``/``since``."""
        with self._cond:
            return len(self.stamps)

    def since(self, mark: int) -> List[Stamp]:
        """Every stamp after ``mark``."""
        with self._cond:
            return list(self.stamps[mark:])

    def clear(self) -> None:
        """Forget every stamp (keeps memory flat over long runs); marks taken before are invalid."""
        with self._cond:
            self.stamps.clear()

    def wait(self, msg_type: str, session_id: Optional[str] = None, *, since: int = 0,
             timeout: float = 10.0, predicate: Optional[Callable[[Stamp], bool]] = None) -> Optional[Stamp]:
        """First stamp of ``msg_type`` (for ``session_id``, matching ``predicate``) after ``since``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            index = since
            while True:
                while index < len(self.stamps):
                    stamp = self.stamps[index]
                    index += 1
                    if stamp.msg_type != msg_type:
                        continue
                    if session_id is not None and stamp.session_id != session_id:
                        continue
                    if predicate is not None and not predicate(stamp):
                        continue
                    return stamp
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)
