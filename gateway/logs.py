"""Log lines that repeat under a fault (every call during an outage) are said once per interval."""

from __future__ import annotations

import logging
import time


class Throttled:
    """A logger that says a message at most once per ``interval`` seconds; the next line it
    says counts the ones it held back."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self.logger = logger
        self.interval = interval
        self._last = -float("inf")
        self._held = 0

    def log(self, level: int, message: str, *args: object) -> bool:
        """Log now if the interval has passed (returns True), else count the line."""
        now = time.monotonic()
        if now - self._last < self.interval:
            self._held += 1
            return False
        if self._held:
            message += " (%d more like it in the last %.0f s)"
            args = (*args, self._held, now - self._last)
        self._last, self._held = now, 0
        self.logger.log(level, message, *args)
        return True

    def warning(self, message: str, *args: object) -> bool:
        return self.log(logging.WARNING, message, *args)

    def error(self, message: str, *args: object) -> bool:
        return self.log(logging.ERROR, message, *args)
