"""The agent's recent log, kept in memory for the console to show."""

from __future__ import annotations

import logging
from collections import deque

KEPT = 100
FORMAT = "%(asctime)s %(levelname)s %(message)s"


class Logbook(logging.Handler):
    """A logging handler that keeps the last `kept` formatted lines."""

    def __init__(self, kept: int = KEPT) -> None:
        super().__init__(level=logging.INFO)
        self.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
        self._lines: deque[str] = deque(maxlen=kept)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # a bad record must not take the agent down; logging's own policy
            self.handleError(record)
            return
        self._lines.append(line)

    def lines(self) -> list[str]:
        """Oldest first."""
        self.acquire()  # emit runs under the same lock: no copy of a half-appended deque
        try:
            return list(self._lines)
        finally:
            self.release()
