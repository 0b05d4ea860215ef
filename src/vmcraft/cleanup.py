"""Finding and removing what a killed vmcraft process left behind.

Every launched handle keeps all it makes under one directory,
``/run/vmcraft/<pid>-<random>``: the guest tree and its mounts, the
qemu-storage-daemon exports (whose command lines name the directory). So a
leftover is a directory whose process is gone, and cleaning it up touches
nothing outside it: processes rooted in it, mounts below it (deepest
first), daemons whose command line names it, loop devices backed by files
in it, then the directory. Loop devices on raw images need nothing: they
were attached with autoclear, and go as soon as their mounts do.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from vmcraft.chroot import reaper
from vmcraft.disks.loop import LOOP_CLR_FD
from vmcraft.disks.statedir import STATE_ROOT, remove_tree_safely
from vmcraft.errors import VMCraftError
from vmcraft.log import get_logger
from vmcraft.mount.mountinfo import mount_points
from vmcraft.mount.unmount import unmount

log = get_logger(__name__)


@dataclass
class Leftover:
    directory: Path
    pid: int
    mounts: list[str] = field(default_factory=list)
    daemons: list[int] = field(default_factory=list)
    loops: list[str] = field(default_factory=list)
    processes: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "directory": str(self.directory),
            "pid": self.pid,
            "mounts": self.mounts,
            "daemons": self.daemons,
            "loop_devices": self.loops,
            "processes": self.processes,
        }


def _owner_alive(directory: Path, pid: int) -> bool:
    """Is the process that made ``directory`` still running (and not a reused pid)?"""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return proc.create_time() <= directory.stat().st_ctime + 1
    except (psutil.NoSuchProcess, FileNotFoundError):
        return False


def _loops_backed_under(prefix: str) -> list[str]:
    found = []
    for sysdir in Path("/sys/block").glob("loop*"):
        with contextlib.suppress(OSError):
            backing = (sysdir / "loop" / "backing_file").read_text().strip()
            if backing.startswith(prefix):
                found.append(f"/dev/{sysdir.name}")
    return sorted(found)


def find_leftovers(state_root: Path = STATE_ROOT) -> list[Leftover]:
    if not state_root.is_dir():
        return []
    leftovers = []
    points = mount_points()
    for directory in sorted(state_root.iterdir()):
        head = directory.name.split("-", 1)[0]
        if not directory.is_dir() or not head.isdigit():
            continue
        pid = int(head)
        if _owner_alive(directory, pid):
            continue
        prefix = os.fspath(directory) + "/"
        daemons = [
            p.pid
            for p in psutil.process_iter(["cmdline"])
            if p.info["cmdline"] and prefix in " ".join(p.info["cmdline"])
        ]
        leftovers.append(
            Leftover(
                directory=directory,
                pid=pid,
                mounts=sorted(p for p in points if p.startswith(prefix)),
                daemons=daemons,
                loops=_loops_backed_under(prefix),
                processes=[p.pid for p in reaper.processes_rooted_in(directory)],
            )
        )
    return leftovers


def clean(leftover: Leftover) -> None:
    """Remove one leftover; raises VMCraftError if anything stays.

    Order as at shutdown: guest processes, guest mounts (deepest first),
    loop devices, daemons (each unmounts its own export), then whatever is
    still mounted below the directory, then the directory.
    """
    reaper.reap(leftover.directory)
    exports = {os.fspath(leftover.directory / name) for name in os.listdir(leftover.directory)}
    guest = [p for p in leftover.mounts if p not in exports]
    for point in sorted(guest, key=lambda p: p.count("/"), reverse=True):
        if point in mount_points():
            log.info("cleanup.unmount", target=point, lazy=unmount(point))
    for node in _loops_backed_under(os.fspath(leftover.directory) + "/"):
        with contextlib.suppress(OSError):
            fd = os.open(node, os.O_RDONLY | os.O_CLOEXEC)
            try:
                fcntl.ioctl(fd, LOOP_CLR_FD)
            finally:
                os.close(fd)
            log.info("cleanup.loop", device=node)
    for pid in leftover.daemons:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc = psutil.Process(pid)
            proc.terminate()
            if reaper.wait_gone([proc], 10):
                proc.kill()
            log.info("cleanup.daemon", pid=pid)
    prefix = os.fspath(leftover.directory) + "/"
    for point in sorted((p for p in mount_points() if p.startswith(prefix)), reverse=True):
        log.info("cleanup.unmount", target=point, lazy=unmount(point))
    remove_tree_safely(leftover.directory)
    if leftover.directory.exists():
        raise VMCraftError(f"{leftover.directory} could not be removed: something still uses it")
