"""Holding Ctrl-C back while a mount is being made or taken down.

A KeyboardInterrupt between ``mount(2)`` returning and the mount being put
on the cleanup stack, or halfway through unwinding that stack, would leave
a mount on the host. Inside :func:`deferred_signals` SIGINT and SIGTERM are
recorded and delivered again as soon as the block ends.

Neither way in nor way out may lose a signal or leave the recording handler
behind. ``signal.signal()`` runs the Python handlers of signals already
received before it swaps, and one of them may raise: a Ctrl-C arriving just
after SIGINT's handler went back raises as SIGTERM's goes back (which would
leave SIGTERM recording into a list nobody reads any more), and a handler
raising as the block begins would leave SIGINT's recording. Every handler
noted is put back, each swap is done again until it happens, and what was
raised meanwhile, or recorded during the block, is raised once all are back.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

_DEFERRED = (signal.SIGINT, signal.SIGTERM)
# A swap fails only when a signal's handler raises just before it, once per
# signal received: a few tries are plenty.
_SWAP_TRIES = 8

# What signal.signal() takes and gives back.
_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


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

    previous: dict[int, _Handler] = {}
    try:
        for signum in _DEFERRED:
            current = signal.getsignal(signum)
            # None: a handler not installed from Python, which could not be
            # put back; leave that signal as it is.
            if current is not None:
                # Noted before the swap: put back even if the swap raises.
                previous[signum] = current
                signal.signal(signum, record)
        yield
    finally:
        _restore(previous, pending)


def _restore(previous: dict[int, _Handler], pending: list[int]) -> None:
    """Put every handler back, then deliver what was recorded; raise after, never halfway.

    No signal mask: blocking SIGINT in the main thread, even for a moment,
    sends a Ctrl-C arriving then to another thread, and the main thread's
    next blocking wait is not interrupted.
    """
    error: BaseException | None = None
    for signum, handler in previous.items():
        for _ in range(_SWAP_TRIES):
            try:
                signal.signal(signum, handler)
                break
            except BaseException as exc:  # raised below, once every handler is back
                # The handler of a signal received meanwhile (a Ctrl-C just
                # after SIGINT's went back) ran before the swap and raised;
                # the swap did not happen: do it again.
                error = error or exc
    for received in dict.fromkeys(pending):
        try:
            signal.raise_signal(received)
        except BaseException as exc:  # the first one raised wins, after the rest are sent
            error = error or exc
    if error is not None:
        raise error


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def terminate_as_interrupt() -> None:
    """Make SIGTERM end this process the way Ctrl-C does: everything put back and released.

    Without a handler, ``kill PID`` ends a vmcraft process on the spot, with
    its disks attached and its mounts in place. For the ``vmcraft`` command
    and batch children only: a library leaves the caller's signals alone.
    Only the main thread can install it; elsewhere this does nothing.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)
