"""Time, injected: the whole gateway reads `now` from one clock so that tests and replays move it.

Time is whole unix seconds, as SPEC uses: windows, holds and activity bounds all compare
integers, so an edge ("one second inside: counted; one second after: gone") is exact.
"""

from __future__ import annotations

import time
from typing import Protocol


class ClockError(ValueError):
    """A manual clock was asked to move backwards, which would reorder windows and holds."""


class Clock(Protocol):
    def now(self) -> int: ...


class SystemClock:
    """Wall time. Never jumps back on its own: a step back of the host clock holds at the last value."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last = 0

    def now(self) -> int:
        t = int(time.time())
        if t > self._last:
            self._last = t
        return self._last


class ManualClock:
    """A clock that moves only when told (`--manual-clock`, `POST /v1/admin/clock`)."""

    __slots__ = ("_now",)

    def __init__(self, start: int | None = None) -> None:
        self._now = int(time.time()) if start is None else start

    def now(self) -> int:
        return self._now

    def set(self, t: int) -> None:
        if t < self._now:
            raise ClockError(f"the clock cannot move backwards (now {self._now}, asked {t})")
        self._now = t

    def restore(self, t: int) -> None:
        """Continue from a restored state's time, so a restart does not move a test's clock."""
        self._now = t

    def advance(self, seconds: int) -> None:
        if seconds < 0:
            raise ClockError("advance must be zero or more seconds")
        self._now += seconds
