"""Ending processes that still run inside a guest root.

A postinst or dracut may start a daemon that outlives the command; it
keeps the bind mounts busy and the guest disk open. Like mock, we look
for processes whose root directory is the guest root (``/proc/PID/root``)
and end them, TERM first, then KILL.
"""

from __future__ import annotations

import contextlib
import os
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
    _, alive = psutil.wait_procs(procs, timeout=grace)
    if alive:
        log.warning("reaper.kill", root=str(root), pids=[p.pid for p in alive])
        for proc in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(alive, timeout=grace)
    return pids
