"""Fair (first come, first served) admission: a semaphore whose waiters are served in arrival order.

``threading.Semaphore`` lets whichever thread wakes first win, so a busy moment could starve a
user who asked earlier. Here each waiter takes a ticket in a queue and only the head may take a
free slot. A waiter whose cancel token fires stops waiting at once; a bounded queue refuses
newcomers when full instead of growing without limit.
"""
from __future__ import annotations

import threading
from collections import deque
from typing import Deque, Optional

from .solvers.base import CancelToken


class QueueFull(RuntimeError):
    """Every slot is taken and the waiting line is at its limit."""


class FairSemaphore:
    """``slots`` holders at once; others wait in FIFO order, at most ``max_waiting`` of them."""

    def __init__(self, slots: int = 1, max_waiting: Optional[int] = None) -> None:
        if slots < 1:
            raise ValueError("a semaphore needs at least one slot")
        self._cond = threading.Condition(threading.Lock())
        self._queue: Deque[object] = deque()
        self._holders = 0
        self.slots = slots
        self.max_waiting = max_waiting

    @property
    def waiting(self) -> int:
        """How many callers are queued (not counting the holders)."""
        with self._cond:
            return len(self._queue)

    @property
    def held(self) -> int:
        """How many slots are taken."""
        with self._cond:
            return self._holders

    @property
    def locked(self) -> bool:
        """True while every slot is taken."""
        with self._cond:
            return self._holders >= self.slots

    def resize(self, slots: int, max_waiting: Optional[int] = None) -> None:
        """Change the limits; waiters are woken in case a slot opened."""
        with self._cond:
            self.slots, self.max_waiting = max(1, slots), max_waiting
            self._cond.notify_all()

    def acquire(self, cancel: Optional[CancelToken] = None) -> bool:
        """Wait for our turn; True once a slot is held, False if ``cancel`` fired first.

        Raises ``QueueFull`` at once when the line is at ``max_waiting``.
        """
        ticket = object()
        with self._cond:
            if cancel is not None and cancel.cancelled:
                return False
            if self._holders < self.slots and not self._queue:
                self._holders += 1
                return True
            if self.max_waiting is not None and len(self._queue) >= self.max_waiting:
                raise QueueFull(f"{self._holders} busy and {len(self._queue)} waiting")
            self._queue.append(ticket)
        # registered outside the condition: on_cancel runs the callback at once if already set
        unregister = cancel.on_cancel(self._wake) if cancel is not None else (lambda: None)
        try:
            with self._cond:
                while True:
                    if cancel is not None and cancel.cancelled:
                        self._queue.remove(ticket)
                        self._cond.notify_all()  # the next in line may be free to go now
                        return False
                    if self._holders < self.slots and self._queue[0] is ticket:
                        self._queue.popleft()
                        self._holders += 1
                        self._cond.notify_all()  # another slot may be free for the next one
                        return True
                    self._cond.wait()
        finally:
            unregister()

    def release(self) -> None:
        """Free a slot for the next caller in line."""
        with self._cond:
            if self._holders <= 0:
                raise RuntimeError("release of a FairSemaphore nobody holds")
            self._holders -= 1
            self._cond.notify_all()

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()


class FairLock(FairSemaphore):
    """A lock granted in arrival order; a waiter whose cancel token fires stops waiting."""

    def __init__(self) -> None:
        super().__init__(slots=1)
