"""``mount_local``: the guest tree shown at a host directory the caller names.

libguestfs serves the tree through FUSE; here the guest's filesystems are
already kernel mounts in the handle's private tree, so a recursive bind of
that tree is the same view at no cost. The bind is made private before it
is recorded, under held signals, and recorded before anything else can
fail, so an error or Ctrl-C between the two syscalls cannot leave it on the
host; a Ctrl-C held back meanwhile, delivered as the signals are let go,
takes the bind down again before it propagates.

What is taken down is exactly what the bind added to the mount table (by
mount id), never a host mount that was at or below the directory before.
"""

from __future__ import annotations

import contextlib
import os
from contextlib import ExitStack
from pathlib import Path

from vmcraft.errors import GuestMountError, MountOSError, VMCraftError, os_error
from vmcraft.mount import syscalls
from vmcraft.mount.mountinfo import read_mountinfo
from vmcraft.mount.unmount import unmount
from vmcraft.signals import deferred_signals

# statvfs's flags that a bind remount would otherwise clear (it sets the
# mount's flags anew): a guest's device nodes must stay unusable (nodev).
_KEPT = {
    os.ST_NOSUID: syscalls.MS_NOSUID,
    os.ST_NODEV: syscalls.MS_NODEV,
    os.ST_NOEXEC: syscalls.MS_NOEXEC,
    os.ST_NOATIME: 0x400,  # MS_NOATIME
    os.ST_NODIRATIME: 0x800,  # MS_NODIRATIME
    os.ST_RELATIME: 0x200000,  # MS_RELATIME
}


def _ours(top: str, before: set[int]) -> list[str]:
    """Mount points at or under ``top`` that are not in ``before``, deepest first."""
    points = {
        e.mount_point
        for e in read_mountinfo()
        if e.mount_id not in before
        and (e.mount_point == top or e.mount_point.startswith(top + "/"))
    }
    return sorted(points, key=lambda p: p.count("/"), reverse=True)


def _take_down(top: str, before: set[int]) -> None:
    for point in _ours(top, before):
        try:
            unmount(point)
        except (VMCraftError, OSError):
            with contextlib.suppress(OSError):
                syscalls.umount(point, syscalls.MNT_DETACH | syscalls.UMOUNT_NOFOLLOW)


def _make_readonly(points: list[str]) -> None:
    """Read-only for every mount of the bind (a bind remount is per mount), flags kept."""
    for point in points:
        kept = os.statvfs(point).f_flag
        flags = syscalls.MS_BIND | syscalls.MS_REMOUNT | syscalls.MS_RDONLY
        for st_flag, ms_flag in _KEPT.items():
            if kept & st_flag:
                flags |= ms_flag
        syscalls.mount(None, point, None, flags)


class LocalMount:
    """One bind of a guest tree at a host directory; ``close()`` takes it down."""

    def __init__(self, root: Path, localmountpoint: str, *, readonly: bool) -> None:
        with os_error("mount_local", localmountpoint, error=MountOSError):
            target = Path(localmountpoint)
            if not target.is_dir() or target.is_symlink():
                raise GuestMountError(f"mount_local: {localmountpoint}: not a directory")
            # The mount table names mounts by absolute, resolved path.
            where = os.path.realpath(target)
        self.target = Path(where)
        stack = ExitStack()
        try:
            with deferred_signals():
                with os_error("mount_local", where, error=MountOSError):
                    before = {e.mount_id for e in read_mountinfo()}
                    syscalls.mount(os.fspath(root), where, None, syscalls.MS_BIND | syscalls.MS_REC)
                stack.callback(_take_down, where, before)
                with os_error("mount_local", where, error=MountOSError):
                    syscalls.mount(None, where, None, syscalls.MS_REC | syscalls.MS_PRIVATE)
                    if readonly:
                        _make_readonly(_ours(where, before))
        except BaseException:
            # A failure, or a Ctrl-C held back above and delivered as the
            # signals were let go: either way, nothing of the bind stays.
            with deferred_signals():
                stack.close()
            raise
        self._stack = stack

    def close(self) -> None:
        with deferred_signals():
            self._stack.close()
