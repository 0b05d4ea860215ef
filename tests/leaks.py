"""What a test may not leave behind on the host, and how to see it.

State directories and image daemons of *live* processes outside this test
process's tree are another vmcraft's (a second test run, a user's job on
the same host) and are not counted; those of dead processes are leaks
whoever left them. So are loop devices on another pytest run's temporary
files (``own_temp`` is set to this run's base by tests/conftest.py).
"""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path

import psutil

from vmcraft.disks.statedir import STATE_ROOT
from vmcraft.mount.mountinfo import read_mountinfo

own_temp: Path | None = None
"""This pytest run's base temporary directory, once the session has one."""

_PYTEST_TEMP = re.compile(r"^/tmp/pytest-of-[^/]+/pytest-\d+/")


def _another_runs_temp(path: str) -> bool:
    found = _PYTEST_TEMP.match(path)
    return found is not None and (own_temp is None or not path.startswith(f"{own_temp.resolve()}/"))


def mount_table() -> list[tuple[int, str, str]]:
    """What a leak would change: every mount's id, place and type."""
    return [(e.mount_id, e.mount_point, e.fstype) for e in read_mountinfo()]


def loop_devices() -> set[tuple[str, str]]:
    """Attached loop devices, each with its backing file."""
    found = set()
    for backing in glob.glob("/sys/block/loop*/loop/backing_file"):
        name = backing.split("/")[3]
        try:
            path = Path(backing).read_text().strip()
        except OSError:
            continue  # detached meanwhile
        # A guest image being built for the cache (under its lock, maybe by
        # another test run): the builder's own cleanup answers for it.
        if ".building/" in path or _owned_by_someone_else(path) or _another_runs_temp(path):
            continue
        found.add((name, path))
    return found


def _someone_elses(pid: int) -> bool:
    """A live process that is neither this one nor one of its descendants."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        ancestry = [proc.pid] + [p.pid for p in proc.parents()]
    except psutil.NoSuchProcess:
        return False
    return os.getpid() not in ancestry


def _owned_by_someone_else(path: str) -> bool:
    """A loop device on another live vmcraft's state directory (its qemu-storage-daemon export)."""
    prefix = f"{STATE_ROOT}/"
    if not path.startswith(prefix):
        return False
    pid = path.removeprefix(prefix).split("-", 1)[0]
    return pid.isdigit() and _someone_elses(int(pid))


def image_daemons() -> set[int]:
    """Running (not zombie) qemu-storage-daemon / qemu-nbd processes."""
    found = set()
    for proc in psutil.process_iter(["name", "status"]):
        daemon = proc.info["name"] in ("qemu-storage-daemon", "qemu-storage-d", "qemu-nbd")
        if daemon and proc.info["status"] != psutil.STATUS_ZOMBIE:
            # A daemon runs in a session of its own: its owner is its parent.
            try:
                owner = proc.ppid()
            except psutil.NoSuchProcess:
                continue
            if owner == 1 or not _someone_elses(owner):
                found.add(proc.pid)
    return found


def state_dirs() -> set[str]:
    if not Path(STATE_ROOT).is_dir():
        return set()
    found = set()
    for path in Path(STATE_ROOT).glob("*"):
        pid = path.name.split("-", 1)[0]
        if pid.isdigit() and _someone_elses(int(pid)):
            continue
        found.add(path.name)
    return found


def snapshot() -> dict[str, object]:
    return {
        "mounts": mount_table(),
        "loop devices": loop_devices(),
        "image daemons": image_daemons(),
        "state directories": state_dirs(),
    }
