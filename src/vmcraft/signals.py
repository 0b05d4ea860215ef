"""Holding Ctrl-C back while a mount is being made or taken down.

A KeyboardInterrupt between ``mount(2)`` returning and the mount being put
on the cleanup stack, or halfway through unwinding that stack, would leave
a mount on the host. Inside :func:`deferred_signals` SIGINT and SIGTERM are
recorded and delivered again as soon as the block ends.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

_DEFERRED = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def deferred_signals() -> Iterator[None]:
    # Python only runs signal handlers in the main thread, and only it may
    # install them; elsewhere there is nothing to hold back.
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []

    def record(signum: int, _frame: FrameType | None) -> None:
        pending.append(signum)

    previous = {}
    for signum in _DEFERRED:
        # None: a handler not installed from Python, which could not be put
        # back; leave that signal as it is.
        if signal.getsignal(signum) is not None:
            previous[signum] = signal.signal(signum, record)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for received in dict.fromkeys(pending):
            signal.raise_signal(received)
