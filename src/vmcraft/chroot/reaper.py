"""Ending processes that still run inside a guest root.

A postinst or dracut may start a daemon that outlives the command; it
keeps the bind mounts busy and the guest disk open. Like mock, we look
for processes whose root directory is the guest root (``/proc/PID/root``)
and end them, TERM first, then KILL.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import psutil

from vmcraft.log import get_logger

log = get_logger(__name__)


def processes_rooted_in(root: Path) -> list[psutil.Process]:
    """Processes whose root directory is ``root`` or below it."""
    prefix = os.fspath(root).rstrip("/")
    inside = prefix + "/"
    found = []
    me = os.getpid()
    for pid in psutil.pids():
        if pid == me:
            continue
        try:
            proc_root = os.readlink(f"/proc/{pid}/root")
        except OSError:
            continue  # gone, or a kernel thread we may not look at
        if proc_root == prefix or proc_root.startswith(inside):
            try:
                found.append(psutil.Process(pid))
            except psutil.NoSuchProcess:
                continue
    return found


def reap(root: Path, grace: float = 2.0) -> list[int]:
    """End every process rooted in ``root``; return the pids that were found."""
    procs = processes_rooted_in(root)
    if not procs:
        return []
    pids = [p.pid for p in procs]
    log.warning("reaper.terminate", root=str(root), pids=pids)
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    alive = wait_gone(procs, grace)
    if alive:
        log.warning("reaper.kill", root=str(root), pids=[p.pid for p in alive])
        for proc in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        wait_gone(alive, grace)
    return pids


def _running(proc: psutil.Process) -> bool:
    # A killed daemon stays a zombie until its parent (often init) reaps it;
    # it holds no mount and no file any more, so it counts as gone.
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait up to ``timeout`` s for the processes to end; return those still running."""
    deadline = time.monotonic() + timeout
    alive = [p for p in procs if _running(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.02)
        alive = [p for p in alive if _running(p)]
    return alive
