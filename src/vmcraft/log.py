"""Logging for a library: structlog events when the application set structlog up.

vmcraft never configures logging itself. If the application configured
structlog, every event (with its ``duration_ms`` fields) goes through that
configuration. If not, events go to the standard ``logging`` logger of the
same name, so an unconfigured script or notebook sees warnings on stderr and
no debug chatter on stdout.
"""

from __future__ import annotations

import logging
import time

import structlog

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


class LibraryLogger:
    """A logger with structlog's call shape: ``log.info("event", key=value)``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._stdlib = logging.getLogger(name)

    def _emit(self, level: str, event: str, fields: dict[str, object]) -> None:
        if structlog.is_configured():
            getattr(structlog.get_logger(self.name), level)(event, **fields)
            return
        number = _LEVELS[level]
        if self._stdlib.isEnabledFor(number):
            rendered = " ".join(f"{key}={value!r}" for key, value in fields.items())
            self._stdlib.log(number, "%s %s", event, rendered)

    def debug(self, event: str, **fields: object) -> None:
        self._emit("debug", event, fields)

    def info(self, event: str, **fields: object) -> None:
        self._emit("info", event, fields)

    def warning(self, event: str, **fields: object) -> None:
        self._emit("warning", event, fields)

    def error(self, event: str, **fields: object) -> None:
        self._emit("error", event, fields)


def get_logger(name: str) -> LibraryLogger:
    return LibraryLogger(name)


def ms_since(start: float) -> float:
    """Milliseconds since ``start`` (a ``time.perf_counter()`` value), rounded."""
    return round((time.perf_counter() - start) * 1000, 3)
