"""qcow2, vmdk, vhdx... as a raw file: a qemu-storage-daemon FUSE export.

Hosts without the nbd module (containers, this project's CI) cannot use
``qemu-nbd --connect``; qemu-storage-daemon can present any image qemu
reads as a regular file over FUSE, which a loop device then takes. Writes
go through qemu into the image. Read-only is set at both layers: the block
node and the export.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psutil

from vmcraft import syscalls
from vmcraft.chroot.mountinfo import mount_points
from vmcraft.chroot.reaper import wait_gone
from vmcraft.errors import DriveError, ImageFormatError
from vmcraft.host import host_tool
from vmcraft.log import get_logger

log = get_logger(__name__)


@dataclass
class StorageExport:
    """A running qemu-storage-daemon and the raw file it exports."""

    image: Path
    export: Path
    pid: int

    def stop(self, timeout: float = 10.0) -> None:
        """End the daemon (it unmounts its export), forcefully if it must."""
        proc: psutil.Process | None
        try:
            proc = psutil.Process(self.pid)
            if os.fspath(self.export) not in " ".join(proc.cmdline()):
                proc = None  # the pid was reused: not ours to signal
        except psutil.NoSuchProcess:
            proc = None
        if proc is not None:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.send_signal(signal.SIGTERM)
            if wait_gone([proc], timeout):
                log.warning("qsd.kill", pid=self.pid)
                with contextlib.suppress(psutil.NoSuchProcess):
                    proc.kill()
                wait_gone([proc], timeout)
        if os.fspath(self.export) in mount_points():
            log.warning("qsd.stale_export", export=str(self.export))
            with contextlib.suppress(OSError):
                syscalls.umount(os.fspath(self.export), syscalls.MNT_DETACH)
        log.debug("qsd.stop", image=str(self.image), pid=self.pid)


def start_export(image: Path, fmt: str, export: Path, *, readonly: bool) -> StorageExport:
    """Start a daemon exporting ``image`` as the raw file ``export``."""
    tool = host_tool("qemu-storage-daemon", "qemu-system-common")
    if not os.path.exists("/dev/fuse"):
        raise DriveError(f"/dev/fuse is missing: cannot attach {fmt} images on this host")
    export.touch(mode=0o600)
    pidfile = export.with_suffix(".pid")
    blockdev: dict[str, object] = {
        "driver": fmt,
        "node-name": "disk",
        "read-only": readonly,
        "file": {"driver": "file", "filename": os.fspath(image), "read-only": readonly},
    }
    if fmt in ("qcow2", "qed"):
        blockdev["backing"] = None  # never open a backing file named inside the image
    fuse = {
        "type": "fuse",
        "id": "export",
        "node-name": "disk",
        "mountpoint": os.fspath(export),
        "writable": not readonly,
    }
    argv = [
        tool,
        "--blockdev",
        json.dumps(blockdev),
        "--export",
        json.dumps(fuse),
        "--pidfile",
        os.fspath(pidfile),
        "--daemonize",
    ]
    # --daemonize returns once the export is up, or fails with the reason.
    done = subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if done.returncode != 0:
        reason = done.stderr.strip().splitlines()[-1:] or ["qemu-storage-daemon failed"]
        raise ImageFormatError(f"cannot open {os.fspath(image)!r} as {fmt}: {reason[0]}")
    pid = int(pidfile.read_text().strip())
    log.debug("qsd.start", image=str(image), fmt=fmt, export=str(export), pid=pid)
    return StorageExport(image=image, export=export, pid=pid)
