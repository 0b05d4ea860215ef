"""Running argv inside the guest root with ``chroot(8)``.

The guest's tools get the guest's world, not the caller's: a fixed PATH,
``LANG=C`` (so their messages can be matched), stdin from /dev/null (a
prompting postinst must fail, not hang), and no host variables, which could
point them at host paths. A timeout, an exception or Ctrl-C kills the whole
process tree, including daemons that left the process group but stayed in
the root.

The result comes when the command itself exits. A daemon it started without
redirecting its output (a postinst starting a service) would otherwise hold
stdout open and keep ``communicate`` waiting for EOF until the timeout: a
watcher thread sees the command exit, and if anything still holds the pipes
then, ends the command's session and whatever runs in the guest root, and the
output written so far is returned with the command's own exit status.
"""

from __future__ import annotations

import _thread
import contextlib
import functools
import json
import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from vmcraft.chroot import reaper
from vmcraft.errors import CommandError, CommandTimeoutError, last_line
from vmcraft.host import SYSTEM_PATH, host_tool, require_privileges
from vmcraft.log import get_logger
from vmcraft.sandbox import seccomp
from vmcraft.signals import deferred_signals

if TYPE_CHECKING:
    from vmcraft.sandbox.bwrap import Sandbox

log = get_logger(__name__)

GUEST_ENV: Mapping[str, str] = {
    "PATH": SYSTEM_PATH,
    "HOME": "/root",
    "LANG": "C",
    "LC_ALL": "C",
}


def guest_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(GUEST_ENV)
    if extra:
        env.update(extra)
    return env


@dataclass(frozen=True)
class CommandResult:
    """What one command in the guest did."""

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    duration_ms: float = field(default=0.0, compare=False)

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def __repr__(self) -> str:
        tail = last_line(self.stderr, self.stdout, default="")
        return (
            f"<CommandResult {' '.join(self.argv)!r} exit={self.returncode} "
            f"{self.duration_ms:.0f}ms tail={tail[:80]!r}>"
        )


def _kill_tree(proc: subprocess.Popen[str], root: Path) -> None:
    try:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    for member in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    reaper.wait_gone(family, 5.0)
    # Whatever double-forked out of the tree but still lives in the guest.
    reaper.reap(root, grace=1.0)


# Signals that may have Python handlers. The watcher thread blocks them: one
# delivered to it rather than to the main thread would run its handler late,
# with the main thread still blocked in its wait.
_WATCHER_BLOCKS = frozenset(
    {
        signal.SIGINT,
        signal.SIGTERM,
        signal.SIGHUP,
        signal.SIGQUIT,
        signal.SIGALRM,
        signal.SIGUSR1,
        signal.SIGUSR2,
        signal.SIGCHLD,
    }
)

_WAITING, _ENDING, _DONE = "waiting", "ending", "done"


def _start_watcher(job: Callable[[], None]) -> None:
    """Run ``job`` on a thread of its own, which ends with it.

    A thread per command (about 0.1 ms) rather than a pool kept between
    commands: nothing of a call outlives it. The thread blocks the signals
    itself, not the main thread around its start: blocking them there, even
    for a moment, would send a Ctrl-C arriving then to whichever other
    thread does not block it, and the main thread's wait would not be
    interrupted.
    """

    def watcher() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, _WATCHER_BLOCKS)
        try:
            job()
        except Exception as exc:  # a thread of our own: nobody else would see it
            log.error("command.watch_failed", error=repr(exc))

    _thread.start_new_thread(watcher, ())


class _CtrlC:
    """A Ctrl-C that the wait for the command cannot miss.

    The main thread waits in ``communicate``'s poll(2); Python runs the
    SIGINT handler when poll returns EINTR. A SIGINT whose C handler runs
    after the interpreter's last check but before poll(2) starts does not
    interrupt it, and the KeyboardInterrupt comes only when the command
    ends, which for a long command is never. (Python also drops a
    KeyboardInterrupt raised inside a finalizer, a Popen's ``__del__`` run
    by the garbage collector: "Exception ignored in ...".) The C handler
    writes every signal to the wakeup fd: the watcher reads it and, for a
    Ctrl-C, kills the command, so the wait returns and the interrupt is
    raised after it.

    Only in the main thread, with Python's own SIGINT handler in place, and
    when no wakeup fd is set already (asyncio's): a caller's own handler or
    loop is theirs to honour, and the command then waits as before.
    """

    def __init__(self, wanted: bool) -> None:
        self.read = self.write = -1
        if not wanted:
            return
        read, write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        previous = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        if previous != -1:  # someone else's: put it back and leave it
            signal.set_wakeup_fd(previous)
            _close((read, write))
            return
        self.read, self.write = read, write

    @staticmethod
    def wanted() -> bool:
        """Whether to arm: asked before deferred_signals() puts its own handler in."""
        return (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        )

    def close(self) -> None:
        if self.write >= 0:
            signal.set_wakeup_fd(-1)
            _close((self.read, self.write))
            self.read = self.write = -1


class _ExitWatch:
    """Ends what still holds the command's output once the command has exited.

    ``communicate`` returns at EOF on stdout and stderr, and EOF only comes
    when every process holding their write ends is gone. A thread waits on a
    pidfd for the direct child to exit (without reaping it: ``communicate``
    still does that), then looks at the pipes: if something else still has
    them open, the command's session and everything rooted in the guest is
    ended, and EOF follows. In the usual case, nothing holds them, and the
    thread only looks. Meanwhile it also reads the :class:`_CtrlC` wakeup
    fd, and a Ctrl-C kills the command's process group (``interrupted``).

    The thread owns the descriptors it is given, its own copies, and closes
    them: the caller closes its own when it likes, and a Ctrl-C landing while
    the watcher is set up can leak one, never close one twice.
    """

    def __init__(
        self,
        proc: subprocess.Popen[str],
        root: Path,
        sandbox_init: int | None = None,
        ctrl_c: _CtrlC | None = None,
    ) -> None:
        self._proc = proc
        self._root = root
        self._state = _WAITING
        self.interrupted = False
        """A Ctrl-C reached the watcher, which killed the command: raise it."""
        self._lock = _thread.allocate_lock()
        self._ended = _thread.allocate_lock()
        self._ended.acquire()  # released by the watcher once it has ended the leftovers
        owned: list[int] = []
        try:
            owned.append(os.pidfd_open(proc.pid))
            # Copies of the wakeup fd, of the read ends (communicate closes
            # its own at EOF, and the numbers could be reused meanwhile), and
            # of the sandbox's PID 1 (the sandbox is gone only once it is; the
            # caller closes its own as it returns).
            owned.append(os.dup(ctrl_c.read) if ctrl_c is not None and ctrl_c.read >= 0 else -1)
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    owned.append(os.dup(pipe.fileno()))
            if sandbox_init is not None:
                owned.append(os.dup(sandbox_init))
        except OSError:  # no pidfd (kernels before 5.3): EOF alone ends the wait, as before
            self._state = _DONE
            _close(owned)
            return
        except BaseException:
            self._state = _DONE
            _close(owned)
            raise
        try:
            _start_watcher(functools.partial(self._watch, owned, sandbox_init is not None))
        except BaseException:  # no thread: nobody else will close them
            self._state = _DONE
            _close(owned)
            raise

    def finish(self) -> None:
        """The command's call is over: let the watcher go, or wait while it ends leftovers."""
        with self._lock:
            ending = self._state == _ENDING
            self._state = _DONE
        if ending:
            self._ended.acquire()

    def _watch(self, owned: list[int], sandboxed: bool) -> None:
        pidfd, wake, pipes = owned[0], owned[1], owned[2 : len(owned) - sandboxed]
        try:
            if not self._wait_exited(pidfd, wake):
                return
            if sandboxed:
                # bwrap's outer process exits first; its PID 1 and with it the
                # whole namespace go a moment later, and let go of the pipes.
                wait_sandbox_gone(owned[-1])
            with self._lock:
                if self._state != _WAITING or not _held(pipes):
                    return
                # Until finish(), the caller reaps the child only once the
                # pipes are closed, so its pid (and session id) stays ours
                # while the tree is killed; pids are also allocated cyclically.
                self._state = _ENDING
            try:
                log.warning(
                    "command.output_held",
                    argv=self._proc.args,
                    pid=self._proc.pid,
                    note="the command exited; ending what it left holding its stdout/stderr",
                )
                _kill_tree(self._proc, self._root)
            finally:
                with self._lock:
                    self._state = _DONE
                self._ended.release()
        finally:
            _close(owned)

    def _wait_exited(self, pidfd: int, wake: int) -> bool:
        """Block until the child has exited; False when it is not (or no longer) ours."""
        try:
            if os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOWAIT | os.WNOHANG) is not None:
                return True  # exited already
        except ChildProcessError:
            return False  # reaped (communicate saw EOF and the exit), or not our child
        except OSError:  # no P_PIDFD (Linux 5.3): the pidfd polls readable at exit
            pass
        watched = [pidfd] if wake < 0 else [pidfd, wake]
        while True:
            ready, _, _ = select.select(watched, [], [])
            if wake in ready and signal.SIGINT in os.read(wake, 512):
                self._interrupt()
            if pidfd in ready:
                return True

    def _interrupt(self) -> None:
        with self._lock:
            if self._state != _WAITING:
                return
            self.interrupted = True
            # The group is the command's session (started_new_session); the
            # caller's KeyboardInterrupt then ends the rest of the tree.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)


def _held(pipes: Sequence[int]) -> bool:
    """Whether anything still has the write end of one of these pipes open."""
    poller = select.poll()
    for fd in pipes:
        poller.register(fd, 0)  # POLLHUP is always reported: no writers left
    hung_up = sum(1 for _, events in poller.poll(0) if events & select.POLLHUP)
    return hung_up < len(pipes)


def _close(fds: Sequence[int]) -> None:
    for fd in fds:
        if fd >= 0:  # -1: a slot left empty (no wakeup fd)
            os.close(fd)


def _stop_watching(watch: _ExitWatch | None) -> None:
    if watch is not None:
        watch.finish()


def _discard(proc: subprocess.Popen[str]) -> None:
    """Reap a killed child and close its pipes.

    Not ``communicate()`` again: interrupted before it had set itself up,
    it cannot be resumed and raises an AttributeError in place of the Ctrl-C.
    """
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()
    proc.wait()


SANDBOX_GRACE = 5.0
"""Seconds a sandbox's PID namespace may take to go after its command exited."""


def _sandbox_init(info_fd: int) -> int | None:
    """A pidfd on the sandbox's PID 1, from bwrap's ``--info-fd`` JSON; None if it is gone."""
    data = b""
    while chunk := os.read(info_fd, 4096):
        data += chunk
    try:
        pid = int(json.loads(data)["child-pid"])
    except (ValueError, KeyError, TypeError):
        return None  # bwrap failed before it started the sandbox
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        return None  # already gone, namespace and all


def wait_sandbox_gone(pidfd: int) -> None:
    """Wait until a sandbox's PID 1 has exited: the kernel reports it only once every
    process of its namespace is gone. Past ``SANDBOX_GRACE`` it is killed, and so are they."""
    ready, _, _ = select.select([pidfd], [], [], SANDBOX_GRACE)
    if not ready:
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        select.select([pidfd], [], [], SANDBOX_GRACE)


class _SandboxFds:
    """The descriptors one sandboxed command needs: its syscall filter, bwrap's info pipe,
    and then a pidfd on the sandbox's PID 1; all closed by ``close()``."""

    def __init__(self, sandbox: Sandbox, argv: Sequence[str]) -> None:
        self.filter = seccomp.program_fd()
        self.info_read, self.info_write = os.pipe2(os.O_CLOEXEC)
        self.init: int | None = None
        self.command = sandbox.argv(argv, seccomp_fd=self.filter, info_fd=self.info_write)

    @property
    def passed(self) -> tuple[int, int]:
        return (self.filter, self.info_write)

    def started(self) -> int | None:
        """bwrap runs: drop our copies of what it was given, learn its PID 1."""
        for fd in self.passed:
            os.close(fd)
        self.filter = self.info_write = -1
        self.init = _sandbox_init(self.info_read)
        return self.init

    def close(self) -> None:
        for fd in (self.filter, self.info_read, self.info_write, self.init):
            if fd is not None and fd >= 0:
                os.close(fd)
        self.filter = self.info_read = self.info_write = -1
        self.init = None


def run_in_root(
    root: Path,
    argv: Sequence[str],
    *,
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
    sandbox: Sandbox | None = None,
) -> CommandResult:
    """Run ``argv`` in ``chroot root``, or in ``sandbox``; never raises for a non-zero exit.

    Returns once the command exits, with what it wrote until then; anything
    it left holding its output open is ended first (see :class:`_ExitWatch`).
    A sandboxed command returns only once its sandbox is gone, every process
    in it included.
    """
    if not argv:
        raise ValueError("empty command")
    require_privileges("running a command in the guest")
    argv = [os.fspath(a) for a in argv]
    fds = _SandboxFds(sandbox, argv) if sandbox is not None else None
    command = (
        fds.command
        if fds is not None
        else [host_tool("chroot", "coreutils"), "--", os.fspath(root), *argv]
    )
    start = time.perf_counter()
    proc: subprocess.Popen[str] | None = None
    watch: _ExitWatch | None = None
    ctrl_c: _CtrlC | None = None
    try:
        # A Ctrl-C inside Popen, after the fork, would lose the child: Popen
        # raises without returning it, and nothing could kill it then. Held
        # back, it is raised here, once proc exists; and the wakeup fd, set
        # for the whole process, is never left behind half set.
        wanted = _CtrlC.wanted()
        with deferred_signals():
            ctrl_c = _CtrlC(wanted)
            proc = subprocess.Popen(
                command,
                pass_fds=fds.passed if fds is not None else (),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=guest_environment(env),
                encoding="utf-8",
                errors="replace",
                start_new_session=True,
                close_fds=True,
            )
        sandbox_init = fds.started() if fds is not None else None
        # Held back too: the watcher's setup takes locks (its own, the
        # worker pool's), and a KeyboardInterrupt raised between a lock's
        # acquire and the block that releases it would leave it taken for
        # good, and the next command hung.
        with deferred_signals():
            watch = _ExitWatch(proc, root, sandbox_init, ctrl_c)
        stdout, stderr = proc.communicate(timeout=timeout)
        if watch.interrupted:
            # The watcher killed the command for a Ctrl-C that this thread
            # has not raised (it landed just before the wait, or was dropped).
            raise KeyboardInterrupt
        returncode = proc.returncode
        if sandbox_init is not None:
            # The output can end before a daemon that closed it has: the
            # call returns only once the sandbox, and all in it, is gone.
            wait_sandbox_gone(sandbox_init)
    except subprocess.TimeoutExpired:
        if proc is None:  # only communicate times out
            raise
        with deferred_signals():  # as below: a Ctrl-C waits for the tree to be ended
            _stop_watching(watch)
            _kill_tree(proc, root)
            stdout, stderr = proc.communicate()
        log.warning("command.timeout", argv=argv, timeout_s=timeout)
        raise CommandTimeoutError(argv, timeout or 0.0, stdout, stderr) from None
    except BaseException:
        # A second Ctrl-C waits for this cleanup: halfway through it could
        # leave Popen's wait lock taken (and the next wait hung) or the tree alive.
        with deferred_signals():
            # The watcher first: it must be done with the child before the child is reaped.
            _stop_watching(watch)
            if proc is not None:
                _kill_tree(proc, root)
                _discard(proc)
        raise
    finally:
        # The same for letting the watcher go and closing what it was given.
        with deferred_signals():
            _stop_watching(watch)
            if ctrl_c is not None:
                ctrl_c.close()
            if fds is not None:
                fds.close()
    return CommandResult(
        argv=argv,
        returncode=returncode,
        stdout=stdout,
        stderr=stderr,
        duration_ms=round((time.perf_counter() - start) * 1000, 3),
    )


def check(result: CommandResult) -> str:
    """Return stdout, or raise :class:`CommandError` for a non-zero exit."""
    if result.returncode != 0:
        raise CommandError(result.argv, result.returncode, result.stdout, result.stderr)
    return result.stdout
