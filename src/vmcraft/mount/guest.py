"""The guest's own filesystems, mounted in the handle's private tree.

Mount points are guest paths, opened inside the guest without following
its symlinks (a guest ``/boot`` that links to ``/etc`` on the host is
refused), and each mount is made through the checked fd, made private, and
taken down in reverse order.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
from dataclasses import dataclass, field
from pathlib import Path

from vmcraft.disks.blkid import probe
from vmcraft.errors import (
    GuestMountError,
    MountOSError,
    UnsafePathError,
    VMCraftError,
    os_error,
)
from vmcraft.log import get_logger
from vmcraft.mount import syscalls
from vmcraft.mount.fatstage import StagedFat
from vmcraft.mount.safepath import open_guest_dir
from vmcraft.mount.unmount import unmount
from vmcraft.signals import deferred_signals

log = get_logger(__name__)

_FAT = frozenset({"vfat", "msdos"})


def kernel_supports(fstype: str) -> bool:
    """Is ``fstype`` in /proc/filesystems (built in or loaded)?"""
    with open("/proc/filesystems", encoding="ascii") as f:
        return any(line.split()[-1] == fstype for line in f if line.strip())


# A read-only mount must not replay a journal: that writes to the disk.
NO_REPLAY = {"ext3": "noload", "ext4": "noload", "xfs": "norecovery"}


@dataclass(frozen=True)
class GuestMount:
    device: str
    """The guest name (``/dev/sda2``)."""
    node: Path
    mountpoint: str
    """The guest path (``/boot``)."""
    target: Path
    """Where it is on the host."""
    fstype: str
    readonly: bool
    driver: str = "kernel"
    """``kernel``, or ``mtools`` for FAT where the kernel has no FAT driver."""
    staged: StagedFat | None = field(default=None, compare=False, repr=False)


def normalize(mountpoint: str) -> str:
    if not mountpoint.startswith("/"):
        raise GuestMountError(f"mount point {mountpoint!r} must be an absolute guest path")
    norm = posixpath.normpath(mountpoint)
    if norm.startswith("//"):
        norm = norm[1:]
    if ".." in norm.split("/"):
        raise GuestMountError(f"mount point {mountpoint!r} must not contain '..'")
    return norm


class GuestMounts:
    """The stack of guest filesystems mounted under one root directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._stack: list[GuestMount] = []

    @property
    def mounts(self) -> list[GuestMount]:
        return list(self._stack)

    def mount(
        self,
        device: str,
        node: Path,
        mountpoint: str,
        *,
        readonly: bool,
        options: str = "",
        fstype: str | None = None,
    ) -> GuestMount:
        """Mount ``node`` at the guest path; an OSError on the way is a MountOSError."""
        point = normalize(mountpoint)
        with os_error("mount", point, error=MountOSError):
            return self._mount(
                device, node, point, readonly=readonly, options=options, fstype=fstype
            )

    def _mount(
        self,
        device: str,
        node: Path,
        point: str,
        *,
        readonly: bool,
        options: str,
        fstype: str | None,
    ) -> GuestMount:
        if any(m.mountpoint == point for m in self._stack):
            raise GuestMountError(f"{point} is already mounted")
        if point != "/" and not any(m.mountpoint == "/" for m in self._stack):
            raise GuestMountError(f"mount the guest's / before {point}")
        fstype = fstype or probe(node).get("TYPE")
        if not fstype:
            raise GuestMountError(f"{device}: no filesystem found")
        if fstype in ("swap", "LVM2_member", "crypto_LUKS"):
            raise GuestMountError(f"{device}: a {fstype} device cannot be mounted")
        root_fd = os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            if point == "/":
                fd = os.dup(root_fd)
            else:
                try:
                    fd = open_guest_dir(root_fd, point.lstrip("/"))
                except UnsafePathError as exc:
                    raise GuestMountError(f"cannot mount {device} on {point}: {exc}") from exc
        finally:
            os.close(root_fd)
        target = self.root if point == "/" else self.root / point.lstrip("/")
        if fstype in _FAT and not kernel_supports(fstype):
            try:
                return self._mount_staged_fat(device, node, point, fd, target, readonly=readonly)
            finally:
                os.close(fd)
        try:
            with deferred_signals():
                self._mount_fd(node, fd, fstype, readonly=readonly, options=options, device=device)
                # The fd still names the directory under the new mount; the
                # path (checked just now) reaches the mount itself.
                with contextlib.suppress(OSError):  # already private under a private parent
                    syscalls.mount(None, os.fspath(target), None, syscalls.MS_PRIVATE)
                entry = GuestMount(device, node, point, target, fstype, readonly)
                self._stack.append(entry)
        finally:
            os.close(fd)
        log.debug("guest.mount", device=device, mountpoint=point, fstype=fstype, ro=readonly)
        return entry

    def _mount_staged_fat(
        self, device: str, node: Path, point: str, fd: int, target: Path, *, readonly: bool
    ) -> GuestMount:
        """A FAT filesystem (the ESP) where the kernel has no FAT driver: see fatstage.py.

        Once loaded, a writable tmpfs is shrunk to what the FAT can take, so a
        write that would not fit fails then (ENOSPC), not at write-back.
        """
        with deferred_signals():
            syscalls.mount(
                "tmpfs",
                f"/proc/self/fd/{fd}",
                "tmpfs",
                syscalls.MS_NOSUID | syscalls.MS_NODEV,
                "mode=0700",
            )
            staged = StagedFat(node, target)
            entry = GuestMount(
                device, node, point, target, "vfat", readonly, "mtools", staged=staged
            )
            self._stack.append(entry)
        try:
            staged.load()
            # A remount sets the mount's flags anew: nosuid and nodev again.
            flags = syscalls.MS_REMOUNT | syscalls.MS_NOSUID | syscalls.MS_NODEV
            if readonly:
                syscalls.mount(None, os.fspath(target), None, flags | syscalls.MS_RDONLY)
            else:
                syscalls.mount(None, os.fspath(target), None, flags, f"size={staged.capacity()}")
        except BaseException:
            with deferred_signals():
                self._stack.remove(entry)
                unmount(target)
            raise
        log.info("guest.mount", device=device, mountpoint=point, fstype="vfat", driver="mtools")
        return entry

    @staticmethod
    def _mount_fd(
        node: Path, fd: int, fstype: str, *, readonly: bool, options: str, device: str
    ) -> None:
        # nodev: a hostile disk may carry device nodes naming the host's own
        # disks. The guest's tools get their /dev from a separate mount.
        flags = syscalls.MS_NODEV | (syscalls.MS_RDONLY if readonly else 0)
        where = f"/proc/self/fd/{fd}"
        tries = [options]
        if readonly and fstype in NO_REPLAY:
            tries.append(",".join(filter(None, [options, NO_REPLAY[fstype]])))
        failure = ""
        for data in tries:
            try:
                syscalls.mount(os.fspath(node), where, fstype, flags, data or None)
                return
            except OSError as exc:
                failure = exc.strerror or str(exc)
        raise GuestMountError(f"cannot mount {device} ({fstype}): {failure}")

    def umount(self, mountpoint: str) -> None:
        point = normalize(mountpoint)
        entry = next((m for m in self._stack if m.mountpoint == point), None)
        if entry is None:
            raise GuestMountError(f"{point} is not mounted")
        prefix = point.rstrip("/") + "/"
        below = [
            m.mountpoint for m in self._stack if m is not entry and m.mountpoint.startswith(prefix)
        ]
        if below:
            raise GuestMountError(f"{point} has mounts below it: {', '.join(below)}")
        with deferred_signals():
            self._unmount(entry)

    def umount_all(self) -> None:
        """Unmount everything in reverse order; keeps going past a failure."""
        errors = []
        with deferred_signals():
            while self._stack:
                entry = self._stack[-1]
                try:
                    self._unmount(entry)
                except (OSError, VMCraftError) as exc:
                    errors.append(f"{entry.mountpoint}: {exc}")
                if self._stack and self._stack[-1] is entry:
                    self._stack.pop()
        if errors:
            raise GuestMountError("; ".join(errors))

    def _unmount(self, entry: GuestMount) -> None:
        """Take ``entry`` down and off the stack; a failed write-back is raised after.

        It leaves the stack as soon as it is unmounted, write-back or not: a
        staged ESP still on the stack would be written back again later from
        the empty directory below it, and every file on the FAT deleted.
        """
        os.sync()  # ask the kernel to write back before the device goes
        failure: VMCraftError | None = None
        if entry.staged is not None and not entry.readonly:
            try:
                with os_error("umount", entry.mountpoint, error=MountOSError):
                    entry.staged.write_back()
            except VMCraftError as exc:
                failure = exc
        with os_error("umount", entry.mountpoint, error=MountOSError):
            lazy = unmount(entry.target)  # "not mounted" (EINVAL) is no error there
        self._stack.remove(entry)
        log.debug("guest.umount", mountpoint=entry.mountpoint, lazy=lazy)
        if failure is not None:
            raise GuestMountError(f"{entry.mountpoint}: changes not written back: {failure}")
