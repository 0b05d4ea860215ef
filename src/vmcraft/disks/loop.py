"""Loop devices, driven by ioctls as osbuild does.

Written by hand on purpose: ``losetup`` cannot set ``LO_FLAGS_AUTOCLEAR``
on a device it leaves configured, and that flag is what keeps a killed
vmcraft from leaking loop devices. The handle holds an fd on each device
for its lifetime; when the process dies, the fd closes and the kernel
detaches the device as soon as nothing else (a mount) still uses it.

A device is set up in one ioctl, ``LOOP_CONFIGURE`` (Linux 5.8+). Older
kernels answer it with EINVAL or ENOTTY; there the same set-up takes two,
``LOOP_SET_FD`` then ``LOOP_SET_STATUS64`` (as losetup does), with the same
result checked back: read-only where asked, autoclear, partition scanning.
Between the two the device has no autoclear yet: a failure there clears it
again, but a SIGKILL in that instant would leave it attached.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vmcraft.errors import DriveError, HostDeviceError
from vmcraft.host import host_tool, run_tool
from vmcraft.log import get_logger

log = get_logger(__name__)

LOOP_SET_FD = 0x4C00
LOOP_CLR_FD = 0x4C01
LOOP_SET_STATUS64 = 0x4C04
LOOP_GET_STATUS64 = 0x4C05
LOOP_CONFIGURE = 0x4C0A
LOOP_CTL_GET_FREE = 0x4C82
BLKRRPART = 0x125F

LO_FLAGS_READ_ONLY = 1
LO_FLAGS_AUTOCLEAR = 4
LO_FLAGS_PARTSCAN = 8

_LO_NAME_SIZE = 64

use_loop_configure = True
"""Set up devices with LOOP_CONFIGURE; False once the kernel showed it has none
(then LOOP_SET_FD + LOOP_SET_STATUS64). Tests set it to force the fallback."""

_NO_CONFIGURE = (errno.EINVAL, errno.ENOTTY)
"""What a kernel without LOOP_CONFIGURE answers it."""


class _LoopInfo64(ctypes.Structure):
    _fields_ = [
        ("lo_device", ctypes.c_uint64),
        ("lo_inode", ctypes.c_uint64),
        ("lo_rdevice", ctypes.c_uint64),
        ("lo_offset", ctypes.c_uint64),
        ("lo_sizelimit", ctypes.c_uint64),
        ("lo_number", ctypes.c_uint32),
        ("lo_encrypt_type", ctypes.c_uint32),
        ("lo_encrypt_key_size", ctypes.c_uint32),
        ("lo_flags", ctypes.c_uint32),
        ("lo_file_name", ctypes.c_char * _LO_NAME_SIZE),
        ("lo_crypt_name", ctypes.c_char * _LO_NAME_SIZE),
        ("lo_encrypt_key", ctypes.c_ubyte * 32),
        ("lo_init", ctypes.c_uint64 * 2),
    ]


class _LoopConfig(ctypes.Structure):
    _fields_ = [
        ("fd", ctypes.c_uint32),
        ("block_size", ctypes.c_uint32),
        ("info", _LoopInfo64),
        ("reserved", ctypes.c_uint64 * 8),
    ]


@dataclass
class LoopDevice:
    """An attached loop device; the open fd is what keeps it attached."""

    path: Path
    backing: Path
    readonly: bool
    offset: int = 0
    size: int = 0
    fd: int = field(default=-1, repr=False)

    @property
    def name(self) -> str:
        return self.path.name

    def partitions(self) -> list[Path]:
        """Partition nodes, in partition-number order."""
        sysdir = Path("/sys/block") / self.name
        found = []
        for entry in sysdir.glob(f"{self.name}p*"):
            number = int((entry / "partition").read_text())
            found.append((number, Path("/dev") / entry.name))
        return [node for _, node in sorted(found)]

    def detach(self) -> None:
        """Detach now if unused, else as soon as the last user lets go."""
        if self.fd < 0:
            return
        try:
            fcntl.ioctl(self.fd, LOOP_CLR_FD)
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # ENXIO: already detached
                log.warning("loop.detach_failed", device=str(self.path), error=exc.strerror)
        finally:
            os.close(self.fd)
            self.fd = -1
        _wait_until(lambda: not _is_attached(self.name), 5.0)
        log.debug("loop.detach", device=str(self.path))


def _is_attached(name: str) -> bool:
    return Path(f"/sys/block/{name}/loop/backing_file").exists()


def _wait_until(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)


def attach(
    backing: Path,
    *,
    readonly: bool,
    offset: int = 0,
    size: int = 0,
    partitions: bool = True,
) -> LoopDevice:
    """Attach ``backing`` (a file or a block device) to a free loop device."""
    flags = LO_FLAGS_AUTOCLEAR | (LO_FLAGS_READ_ONLY if readonly else 0)
    if partitions:
        flags |= LO_FLAGS_PARTSCAN
    try:
        backing_fd = os.open(backing, (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC)
    except OSError as exc:
        raise DriveError(f"cannot open {backing}: {exc.strerror}") from exc
    try:
        config = _LoopConfig()
        config.fd = backing_fd
        config.info.lo_flags = flags
        config.info.lo_offset = offset
        config.info.lo_sizelimit = size
        config.info.lo_file_name = os.fsencode(backing)[: _LO_NAME_SIZE - 1]
        device = _configure_free_device(config, readonly)
    finally:
        os.close(backing_fd)
    loop = LoopDevice(
        path=Path(f"/dev/loop{device[0]}"),
        backing=backing,
        readonly=readonly,
        offset=offset,
        size=size,
        fd=device[1],
    )
    try:
        if partitions:
            _scan_partitions(loop)
    except BaseException:
        loop.detach()
        raise
    log.debug("loop.attach", device=str(loop.path), backing=str(backing), readonly=readonly)
    return loop


def _loop_configure(fd: int, config: _LoopConfig) -> None:
    """LOOP_CONFIGURE: backing file, offset, size and flags in one ioctl (Linux 5.8+)."""
    fcntl.ioctl(fd, LOOP_CONFIGURE, bytes(config))


def _get_status(fd: int) -> _LoopInfo64:
    return _LoopInfo64.from_buffer_copy(fcntl.ioctl(fd, LOOP_GET_STATUS64, bytes(_LoopInfo64())))


def _set_fd_and_status(fd: int, config: _LoopConfig) -> None:
    """What LOOP_CONFIGURE does, in the two ioctls older kernels have.

    LOOP_SET_FD fails with EBUSY on a device someone else took meanwhile,
    as LOOP_CONFIGURE does. Read-only comes from the fds' modes (both are
    opened read-only for a read-only drive); autoclear and partition
    scanning from LOOP_SET_STATUS64, which answers EAGAIN while the
    device's page cache is still being dropped. The flags are read back:
    a device without autoclear would outlive a killed vmcraft.
    """
    fcntl.ioctl(fd, LOOP_SET_FD, config.fd)
    try:
        info = bytes(config.info)
        for attempt in range(50):
            try:
                fcntl.ioctl(fd, LOOP_SET_STATUS64, info)
                break
            except OSError as exc:
                if exc.errno != errno.EAGAIN or attempt == 49:
                    raise
                time.sleep(0.02)
        wanted = config.info.lo_flags & (LO_FLAGS_AUTOCLEAR | LO_FLAGS_READ_ONLY)
        if _get_status(fd).lo_flags & wanted != wanted:
            raise OSError(errno.EINVAL, "the kernel did not take the loop flags asked for")
    except BaseException:
        with contextlib.suppress(OSError):
            fcntl.ioctl(fd, LOOP_CLR_FD)
        raise


def _set_up(fd: int, config: _LoopConfig) -> None:
    """Configure the open loop device ``fd``: LOOP_CONFIGURE, or the older two ioctls."""
    global use_loop_configure  # noqa: PLW0603 - learnt once per process
    if not use_loop_configure:
        _set_fd_and_status(fd, config)
        return
    try:
        _loop_configure(fd, config)
    except OSError as exc:
        if exc.errno not in _NO_CONFIGURE:
            raise
        # EINVAL is also a new kernel refusing this config: the fallback then
        # fails the same way, and only its success marks the ioctl missing.
        _set_fd_and_status(fd, config)
        use_loop_configure = False
        log.info("loop.no_configure", reason=exc.strerror, using="LOOP_SET_FD+LOOP_SET_STATUS64")


def _configure_free_device(config: _LoopConfig, readonly: bool) -> tuple[int, int]:
    """Find a free loop device and configure it; returns (number, open fd)."""
    try:
        control = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise HostDeviceError(f"cannot open /dev/loop-control: {exc.strerror}") from exc
    try:
        for _ in range(32):
            try:
                number = fcntl.ioctl(control, LOOP_CTL_GET_FREE)
            except OSError as exc:
                raise HostDeviceError(f"no free loop device: {exc.strerror}") from exc
            try:
                fd = os.open(
                    f"/dev/loop{number}",
                    (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC,
                )
            except FileNotFoundError:
                time.sleep(0.01)  # the node appears a moment after GET_FREE
                continue
            except OSError as exc:
                raise DriveError(f"cannot open /dev/loop{number}: {exc.strerror}") from exc
            try:
                _set_up(fd, config)
            except OSError as exc:
                os.close(fd)
                if exc.errno == errno.EBUSY:
                    continue  # another process took it first
                raise DriveError(f"cannot configure /dev/loop{number}: {exc.strerror}") from exc
            except BaseException:
                os.close(fd)
                raise
            return number, fd
    finally:
        os.close(control)
    raise HostDeviceError("no free loop device could be configured")


def _scan_partitions(loop: LoopDevice) -> None:
    """Make the partition nodes appear, whether or not the host runs udev.

    LO_FLAGS_PARTSCAN alone did not create them on every kernel checked,
    ``partx -a`` (BLKPG) did; nodes then come from devtmpfs.
    """
    with contextlib.suppress(OSError):  # no table, or the kernel wants BLKPG: partx below
        fcntl.ioctl(loop.fd, BLKRRPART)
    if not loop.partitions():
        run_tool(
            [host_tool("partx", "util-linux"), "-a", os.fspath(loop.path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )  # its status is not checked: a disk without a partition table is fine
    for node in loop.partitions():
        if not _wait_until(node.exists, 5.0):
            raise DriveError(f"partition node {node} did not appear")
