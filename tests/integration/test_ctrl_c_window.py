"""Ctrl-C at every moment of a guest command: a KeyboardInterrupt each time, and nothing left.

The end-to-end test sends SIGINT once, when the guest's ``sleep`` shows up;
it found a lost Ctrl-C once in 28 runs. Here the SIGINT is sent at every
Python line ``run_in_root`` runs before the guest command is waited for
(one run per line, deterministic), at random moments from another thread
(for what no traced line reaches: Popen's fork and exec), and, each made
deterministic, in the two ways a SIGINT can reach the process without
interrupting the main thread's wait. Each time the call must raise
KeyboardInterrupt promptly (not return, not time out, not raise something
else) and leave no child, no process in the guest and no mount.

The windows this closes:

* a SIGINT just before communicate's poll(2): its C handler has run, the
  interpreter's last check for it has passed, and poll sleeps until the
  command ends (a terminal's Ctrl-C as the guest command starts; under load
  the main thread is still on its way to the poll when the child's ``sleep``
  shows up);
* a KeyboardInterrupt raised inside a finalizer (a Popen's ``__del__`` run
  by the garbage collector), which Python prints and drops;
* ``deferred_signals`` putting the handlers back: a SIGINT between the two
  swaps raised there and left SIGTERM recorded for good (every later
  SIGTERM lost); a handler raising as the block began left SIGINT recorded
  for good (every later Ctrl-C lost);
* a SIGINT inside ``Popen``, after the fork: Popen raised without handing
  back the child, which nothing then killed, and which went on running the
  guest command (not yet chrooted, the reaper could not see it);
* a SIGINT as ``communicate`` began, before it had set itself up: the
  cleanup's second ``communicate()`` raised AttributeError or KeyError in
  place of the KeyboardInterrupt (``vmcraft run`` exited 1 with a traceback).
"""

from __future__ import annotations

import functools
import gc
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import psutil
import pytest

from tests.leaks import mount_table
from vmcraft import VMCraft
from vmcraft.chroot import reaper
from vmcraft.signals import deferred_signals

# Long enough that a lost Ctrl-C is a failure (the call would time out),
# short enough that it fails fast.
GUEST = ["sleep", "30"]
LOST_AFTER_S = 10.0


# -- deferred_signals, deterministically ---------------------------------------


@pytest.fixture
def sigterm_untouched() -> Iterator[signal.Handlers | Any]:
    """SIGTERM's handler before the test, put back after it whatever happened."""
    before = signal.getsignal(signal.SIGTERM)
    try:
        yield before
    finally:
        signal.signal(signal.SIGTERM, before)


def test_sigint_while_the_handlers_go_back_leaves_nothing_recorded(
    monkeypatch: pytest.MonkeyPatch, sigterm_untouched: Any
) -> None:
    real = signal.signal

    def ctrl_c_right_after_sigint_is_back(signum: int, handler: Any) -> Any:
        old = real(signum, handler)
        if signum == signal.SIGINT and handler is signal.default_int_handler:
            os.kill(os.getpid(), signal.SIGINT)  # SIGTERM is still being held back
        return old

    monkeypatch.setattr(signal, "signal", ctrl_c_right_after_sigint_is_back)
    with pytest.raises(KeyboardInterrupt), deferred_signals():
        pass
    monkeypatch.undo()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) == sigterm_untouched, "SIGTERM left recorded"


def test_a_handler_raising_as_the_block_begins_leaves_sigint_live(
    monkeypatch: pytest.MonkeyPatch, sigterm_untouched: Any
) -> None:
    class Stop(Exception):
        pass

    def stop(_signum: int, _frame: FrameType | None) -> None:
        raise Stop

    signal.signal(signal.SIGTERM, stop)
    real = signal.signal

    def sigterm_as_it_is_swapped(signum: int, handler: Any) -> Any:
        if signum == signal.SIGTERM and handler is not stop:
            os.kill(os.getpid(), signal.SIGTERM)  # runs `stop` before the swap
        return real(signum, handler)

    monkeypatch.setattr(signal, "signal", sigterm_as_it_is_swapped)
    with pytest.raises(Stop), deferred_signals():
        pytest.fail("the block must not run")  # pragma: no cover
    monkeypatch.undo()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, "SIGINT left recorded"
    with pytest.raises(KeyboardInterrupt):
        signal.raise_signal(signal.SIGINT)


def test_signals_recorded_in_the_block_are_all_delivered(sigterm_untouched: Any) -> None:
    seen: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _frame: seen.append(signum))

    def both_during_the_block() -> None:
        with deferred_signals():
            signal.raise_signal(signal.SIGTERM)
            signal.raise_signal(signal.SIGINT)
            assert seen == []

    with pytest.raises(KeyboardInterrupt):
        both_during_the_block()
    assert seen == [signal.SIGTERM]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# -- a guest command, SIGINT at every line ------------------------------------


class _InterruptAt:
    """A trace function sending this process SIGINT at the n-th event in ``run_in_root``.

    One SIGINT per run, whoever sends it (this or the backstop): a second
    one, in the cleanup of the first, is another test.
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self.count = 0
        self.started = False
        self.where: str | None = None
        self._lock = threading.Lock()
        self._sent = False

    def claim(self) -> bool:
        """The right to send this run's one SIGINT."""
        with self._lock:
            sent, self._sent = self._sent, True
        return not sent

    def __call__(self, frame: FrameType, event: str, _arg: object) -> Any:
        if self._sent:
            sys.settrace(None)
            return None
        if not self.started:
            if event != "call" or frame.f_code.co_name != "run_in_root":
                return self
            self.started = True
        self.count += 1
        if self.count >= self.n and self.claim():
            self.where = f"{Path(frame.f_code.co_filename).name}:{frame.f_lineno} ({event})"
            sys.settrace(None)
            os.kill(os.getpid(), signal.SIGINT)
            return None
        return self


class _CountUntilWait:
    """Counts the events from ``run_in_root``'s start to communicate's wait (its select)."""

    def __init__(self) -> None:
        self.count = 0
        self.started = self.in_communicate = False
        self.at_wait: int | None = None

    def __call__(self, frame: FrameType, event: str, _arg: object) -> Any:
        name = frame.f_code.co_name
        if not self.started:
            if event != "call" or name != "run_in_root":
                return self
            self.started = True
        self.count += 1
        if event == "call" and self.at_wait is None:
            if name == "_communicate":
                self.in_communicate = True
            elif name == "select" and self.in_communicate:
                self.at_wait = self.count
        return self


Call = Callable[[VMCraft], object]


def _command(g: VMCraft) -> object:
    return g.command(GUEST, timeout=LOST_AFTER_S)


def _with_mounts(g: VMCraft) -> object:
    return g.command_with_mounts(GUEST, timeout=LOST_AFTER_S)


@pytest.fixture
def g(guest_root: Path) -> Iterator[VMCraft]:
    with VMCraft.from_root(guest_root) as handle:
        yield handle


def _ctrl_c(may: Callable[[], bool] = lambda: True) -> None:
    """SIGINT to this process, as from outside: this thread does not take it itself.

    A thread that let the kernel hand it the signal would run Python's C
    handler there (see test_a_ctrl_c_the_main_thread_is_not_woken_for); a
    terminal's Ctrl-C comes from outside the process.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    if may():
        os.kill(os.getpid(), signal.SIGINT)


def _stop_after(seconds: float, may: Callable[[], bool] = lambda: True) -> threading.Timer:
    timer = threading.Timer(seconds, _ctrl_c, (may,))
    timer.start()
    return timer


def _events_until_the_wait(g: VMCraft, call: Call) -> int:
    """How many events ``run_in_root`` traces before it waits for the guest command."""
    counts = []
    for _ in range(2):  # the first call may import or look up what later ones find ready
        counter = _CountUntilWait()
        timer = _stop_after(0.5)
        try:
            sys.settrace(counter)
            try:
                call(g)
            except KeyboardInterrupt:
                pass
            finally:
                sys.settrace(None)
        finally:
            timer.cancel()
        assert counter.at_wait is not None
        counts.append(counter.at_wait)
    # select's own few lines come before the poll itself.
    return counts[-1] + 10


def _leftovers(g: VMCraft, mounts: object) -> str:
    """What the interrupted call left: a child, a process in the guest, a mount."""
    found = []
    try:
        pid, _ = os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        pid = -1  # no child at all: as it must be
    if pid == 0:
        alive = psutil.Process().children()
        found.append(f"child processes left: {[(p.pid, p.name()) for p in alive]}")
        for p in alive:
            p.kill()
        psutil.wait_procs(alive, timeout=5)
    elif pid > 0:
        found.append(f"child {pid} left unreaped")
    inside = reaper.processes_rooted_in(g.root)
    if inside:
        found.append(f"running in the guest: {[p.pid for p in inside]}")
        reaper.reap(g.root, grace=0.5)
    if mount_table() != mounts:
        found.append("the mount table changed")
    return "; ".join(found)


def _interrupted(g: VMCraft, call: Call, arm: Callable[[], object]) -> str:
    """Arm a SIGINT and run the call; what went wrong, or '' when all is as it must be."""
    mounts = mount_table()
    start = time.monotonic()
    outcome = ""
    try:
        arm()
        try:
            call(g)
        finally:
            sys.settrace(None)
        outcome = "the call returned: the Ctrl-C was lost"
    except KeyboardInterrupt:
        took = time.monotonic() - start
        if took > LOST_AFTER_S / 2:
            outcome = f"KeyboardInterrupt only after {took:.1f} s"
    except BaseException as exc:  # the outcome under test
        outcome = f"{type(exc).__name__} in place of KeyboardInterrupt: {exc!r}"
    return "; ".join(filter(None, [outcome, _leftovers(g, mounts)]))


@pytest.mark.root
@pytest.mark.parametrize(
    ("call", "stride"),
    [pytest.param(_command, 2, id="command"), pytest.param(_with_mounts, 11, id="with_mounts")],
)
def test_sigint_at_every_line_before_the_wait(g: VMCraft, call: Call, stride: int) -> None:
    last = _events_until_the_wait(g, call)
    failures = []
    n = 0
    for n in range(1, last + 1, stride):
        tracer = _InterruptAt(n)
        # Past the last line before the wait the tracer never fires: this does
        # (and only then: a second Ctrl-C is another test).
        backstop = _stop_after(2.0, may=tracer.claim)
        try:
            problem = _interrupted(g, call, functools.partial(sys.settrace, tracer))
        finally:
            backstop.cancel()
        if tracer.where is None:
            break  # the guest command was already being waited for
        if problem:
            failures.append(f"SIGINT at event {n}, {tracer.where}: {problem}")
    assert n > last - 4 * stride, f"the sweep stopped at event {n} of {last}"
    assert not failures, f"{len(failures)} of {n} offsets:\n" + "\n".join(failures[:20])


@pytest.mark.root
def test_sigint_from_another_thread_at_random_moments(g: VMCraft) -> None:
    """What no traced line reaches: Popen's fork and exec, the C code around them."""
    rng = random.Random(1)  # noqa: S311 - reproducible moments, not secrets
    failures = []
    for i in range(60):
        delay = rng.uniform(0, 0.004)
        timer = threading.Timer(delay, _ctrl_c)
        try:
            problem = _interrupted(g, _command, timer.start)
        finally:
            timer.cancel()
        if problem:
            failures.append(f"run {i}, SIGINT after {delay * 1000:.2f} ms: {problem}")
    assert not failures, "\n".join(failures[:20])


# -- a SIGINT the main thread's wait does not see -----------------------------


@pytest.mark.root
def test_a_ctrl_c_the_main_thread_is_not_woken_for(g: VMCraft) -> None:
    """The C handler runs, but not as an interruption of the main thread's poll.

    That is what a SIGINT landing just before poll(2) is: handled by the C
    handler, after the interpreter's last look and before the poll, which
    then sleeps. Made deterministic here by blocking SIGINT in the main
    thread, so that the kernel hands it to the (unblocked) sending thread.
    """

    def from_a_thread_that_takes_it() -> None:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        os.kill(os.getpid(), signal.SIGINT)

    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        # The command is being waited for by then.
        timer = threading.Timer(0.5, from_a_thread_that_takes_it)
        problem = _interrupted(g, _command, timer.start)
        timer.cancel()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    assert not problem


@pytest.mark.root
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_ctrl_c_dropped_in_a_finalizer_still_stops_the_command(g: VMCraft) -> None:
    """A KeyboardInterrupt raised while the garbage collector runs a finalizer is dropped.

    A gc callback stands in for the finalizer (a Popen's ``__del__``): it is
    run the same way, and what it raises is printed and dropped the same way.
    The SIGINT lands during it, as communicate sets itself up.
    """
    dropped: list[str] = []

    def during_a_collection(phase: str, _info: dict[str, int]) -> None:
        frame: FrameType | None = sys._getframe(1)
        while frame is not None and frame.f_code.co_name != "_communicate":
            frame = frame.f_back
        if phase != "start" or frame is None or dropped:
            return
        dropped.append("sent")
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):  # the KeyboardInterrupt is raised here, and dropped
            pass

    threshold = gc.get_threshold()
    gc.callbacks.append(during_a_collection)
    gc.set_threshold(1)  # a collection at (nearly) every allocation
    try:
        problem = _interrupted(g, _command, lambda: None)
    finally:
        gc.set_threshold(*threshold)
        gc.callbacks.remove(during_a_collection)
    assert dropped == ["sent"]
    assert not problem
