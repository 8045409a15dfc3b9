"""A one-line progress display on a terminal; silent otherwise (logs, CI, tests)."""

from __future__ import annotations

import sys
import time

__all__ = ["ProgressLine"]


class ProgressLine:
    """Rewrites one stderr line at most every ``interval`` seconds.

    Parameters
    ----------
    enabled : bool, optional
        Show it; by default only when stderr is a terminal.
    interval : float, default 0.2
        Minimum seconds between two redraws (``force=True`` redraws anyway).
    """

    def __init__(self, enabled: bool | None = None, *, interval: float = 0.2):
        self.enabled = sys.stderr.isatty() if enabled is None else bool(enabled)
        self.interval = interval
        self.t0 = time.perf_counter()
        self._last = -float("inf")
        self._shown = False

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def show(self, text: str, *, force: bool = False) -> None:
        now = time.perf_counter()
        if not self.enabled or (now - self._last < self.interval and not force):
            return
        self._last = now
        self._shown = True
        sys.stderr.write("\r" + text)
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self._shown:
            sys.stderr.write("\n")
            sys.stderr.flush()
