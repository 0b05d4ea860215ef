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
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from vmcraft.errors import HostDeviceError, ImageFormatError, last_line
from vmcraft.host import host_tool
from vmcraft.log import get_logger
from vmcraft.mount import syscalls
from vmcraft.mount.mountinfo import mount_points

log = get_logger(__name__)


@dataclass
class StorageExport:
    """A running qemu-storage-daemon (our child) and the raw file it exports."""

    image: Path
    export: Path
    process: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self, timeout: float = 10.0) -> None:
        """End the daemon (it unmounts its export), forcefully if it must.

        The daemon is our child, so waiting for it also reaps it: nothing is
        left behind as a zombie for init to collect.
        """
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("qsd.kill", pid=self.pid)
                self.process.kill()
                self.process.wait()
        if os.fspath(self.export) in mount_points():
            log.warning("qsd.stale_export", export=str(self.export))
            with contextlib.suppress(OSError):
                syscalls.umount(os.fspath(self.export), syscalls.MNT_DETACH)
        log.debug("qsd.stop", image=str(self.image), pid=self.pid)


def start_export(image: Path, fmt: str, export: Path, *, readonly: bool) -> StorageExport:
    """Start a daemon exporting ``image`` as the raw file ``export``."""
    tool = host_tool("qemu-storage-daemon", "qemu-system-common")
    if not os.path.exists("/dev/fuse"):
        raise HostDeviceError(f"/dev/fuse is missing: cannot attach {fmt} images on this host")
    export.touch(mode=0o600)
    pidfile = export.with_suffix(".pid")
    errors = export.with_suffix(".log")
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
    ]
    with open(errors, "wb") as err:
        # A session of its own: a Ctrl-C at the terminal goes to vmcraft's
        # process group, and the daemon must outlive it until the guest's
        # filesystems are unmounted and the loop device is gone, or the
        # image loses what was not yet written.
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
    daemon = StorageExport(image=image, export=export, process=process)
    # The pid file is written once every option, the export included, is set up.
    deadline = time.monotonic() + 60
    while not (pidfile.exists() and os.fspath(export) in mount_points()):
        if process.poll() is not None or time.monotonic() > deadline:
            daemon.stop()
            reason = last_line(
                errors.read_text(errors="replace"), default="qemu-storage-daemon did not start"
            )
            raise ImageFormatError(f"cannot open {os.fspath(image)!r} as {fmt}: {reason}")
        time.sleep(0.005)
    log.debug("qsd.start", image=str(image), fmt=fmt, export=str(export), pid=process.pid)
    return daemon
