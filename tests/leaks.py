"""What a test may not leave behind on the host, and how to see it."""

from __future__ import annotations

import glob
from pathlib import Path

import psutil

from vmcraft.disks.statedir import STATE_ROOT
from vmcraft.mount.mountinfo import read_mountinfo


def mount_table() -> list[tuple[int, str, str]]:
    """What a leak would change: every mount's id, place and type."""
    return [(e.mount_id, e.mount_point, e.fstype) for e in read_mountinfo()]


def loop_devices() -> set[tuple[str, str]]:
    """Attached loop devices, each with its backing file."""
    found = set()
    for backing in glob.glob("/sys/block/loop*/loop/backing_file"):
        name = backing.split("/")[3]
        try:
            found.add((name, Path(backing).read_text().strip()))
        except OSError:
            continue  # detached meanwhile
    return found


def image_daemons() -> set[int]:
    """Running (not zombie) qemu-storage-daemon / qemu-nbd processes."""
    found = set()
    for proc in psutil.process_iter(["name", "status"]):
        daemon = proc.info["name"] in ("qemu-storage-daemon", "qemu-storage-d", "qemu-nbd")
        if daemon and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.add(proc.pid)
    return found


def state_dirs() -> set[str]:
    return {p.name for p in Path(STATE_ROOT).glob("*")} if Path(STATE_ROOT).is_dir() else set()


def snapshot() -> dict[str, object]:
    return {
        "mounts": mount_table(),
        "loop devices": loop_devices(),
        "image daemons": image_daemons(),
        "state directories": state_dirs(),
    }
