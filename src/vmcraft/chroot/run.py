"""Running argv inside the guest root with ``chroot(8)``.

The guest's tools get the guest's world, not the caller's: a fixed PATH,
``LANG=C`` (so their messages can be matched), stdin from /dev/null (a
prompting postinst must fail, not hang), and no host variables, which could
point them at host paths. A timeout, an exception or Ctrl-C kills the whole
process tree, including daemons that left the process group but stayed in
the root.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from vmcraft.chroot import reaper
from vmcraft.errors import CommandError, CommandTimeoutError, last_line
from vmcraft.host import SYSTEM_PATH, host_tool, require_privileges
from vmcraft.log import get_logger

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


def run_in_root(
    root: Path,
    argv: Sequence[str],
    *,
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
) -> CommandResult:
    """Run ``argv`` in ``chroot root``; never raises for a non-zero exit."""
    if not argv:
        raise ValueError("empty command")
    require_privileges("running a command in the guest")
    chroot = host_tool("chroot", "coreutils")
    argv = [os.fspath(a) for a in argv]
    start = time.perf_counter()
    proc = subprocess.Popen(
        [chroot, "--", os.fspath(root), *argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=guest_environment(env),
        encoding="utf-8",
        errors="replace",
        start_new_session=True,
        close_fds=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_tree(proc, root)
        stdout, stderr = proc.communicate()
        log.warning("command.timeout", argv=argv, timeout_s=timeout)
        raise CommandTimeoutError(argv, timeout or 0.0, stdout, stderr) from None
    except BaseException:
        _kill_tree(proc, root)
        proc.communicate()
        raise
    return CommandResult(
        argv=argv,
        returncode=proc.returncode,
        stdout=stdout,
        stderr=stderr,
        duration_ms=round((time.perf_counter() - start) * 1000, 3),
    )


def check(result: CommandResult) -> str:
    """Return stdout, or raise :class:`CommandError` for a non-zero exit."""
    if result.returncode != 0:
        raise CommandError(result.argv, result.returncode, result.stdout, result.stderr)
    return result.stdout
