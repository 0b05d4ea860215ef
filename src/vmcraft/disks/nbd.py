"""qemu-nbd, for hosts that have the nbd module but no FUSE.

qemu-storage-daemon's FUSE export is preferred (it needs neither a kernel
module nor a free device number); this is the path for hosts where
``/dev/fuse`` is missing and ``/dev/nbd0`` exists. Not exercised by this
project's CI, which has no nbd module; its test skips with the reason.
"""

from __future__ import annotations

import glob
import os
import time
from dataclasses import dataclass
from pathlib import Path

from vmcraft.errors import DriveError, HostDeviceError, ImageFormatError, last_line
from vmcraft.host import host_tool, run_tool
from vmcraft.log import get_logger

log = get_logger(__name__)


def nbd_available() -> bool:
    return os.path.exists("/dev/nbd0") and os.path.isdir("/sys/block/nbd0")


def _free_device() -> Path:
    for sysdir in sorted(glob.glob("/sys/block/nbd*"), key=lambda p: int(p[14:])):
        if not os.path.exists(f"{sysdir}/pid"):
            return Path("/dev") / os.path.basename(sysdir)
    raise HostDeviceError("no free nbd device")


@dataclass
class NbdConnection:
    image: Path
    device: Path

    def disconnect(self) -> None:
        run_tool(
            [host_tool("qemu-nbd", "qemu-utils"), "--disconnect", os.fspath(self.device)],
            capture_output=True,
            timeout=60,
        )
        log.debug("nbd.disconnect", device=str(self.device))


def connect(image: Path, fmt: str, *, readonly: bool) -> NbdConnection:
    tool = host_tool("qemu-nbd", "qemu-utils")
    for _ in range(8):
        device = _free_device()
        argv = [tool, f"--connect={device}", f"--format={fmt}", "--fork"]
        if readonly:
            argv.append("--read-only")
        done = run_tool([*argv, "--", os.fspath(image)], capture_output=True, text=True, timeout=60)
        if done.returncode == 0:
            deadline = time.monotonic() + 10
            while not os.path.exists(f"/sys/block/{device.name}/pid"):
                if time.monotonic() > deadline:
                    raise DriveError(f"{device} did not come up")
                time.sleep(0.01)
            log.debug("nbd.connect", image=str(image), device=str(device))
            return NbdConnection(image, device)
        if "Device or resource busy" not in done.stderr:
            reason = last_line(done.stderr, default="qemu-nbd failed")
            raise ImageFormatError(f"cannot open {os.fspath(image)!r} as {fmt}: {reason}")
    raise DriveError("no nbd device could be connected")
