"""structlog helpers shared by every layer.

vmcraft is a library, so it never configures structlog itself: the caller's
configuration (or structlog's default) decides where events go.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import cast

import structlog
from structlog.typing import FilteringBoundLogger


def get_logger(name: str) -> FilteringBoundLogger:
    """Return a structlog logger named after the module that logs."""
    return cast(FilteringBoundLogger, structlog.get_logger(name))


def ms_since(start: float) -> float:
    """Milliseconds since ``start`` (a ``time.perf_counter()`` value), rounded."""
    return round((time.perf_counter() - start) * 1000, 3)


@contextmanager
def timed(timings: dict[str, float], phase: str) -> Iterator[None]:
    """Add the duration of the block, in ms, to ``timings[phase]``.

    The duration is recorded even when the block raises, so failed phases
    still show in the summary event.
    """
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[phase] = round(timings.get(phase, 0.0) + (time.perf_counter() - start) * 1000, 3)
