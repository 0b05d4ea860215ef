"""``mount_local``: the guest tree shown at a host directory the caller names.

libguestfs serves the tree through FUSE; here the guest's filesystems are
already kernel mounts in the handle's private tree, so a recursive bind of
that tree is the same view at no cost. The bind is made private before it
is recorded, under held signals, and recorded before anything else can
fail, so an error or Ctrl-C between the two syscalls cannot leave it on the
host.
"""

from __future__ import annotations

import contextlib
import os
from contextlib import ExitStack
from pathlib import Path

from vmcraft.errors import GuestMountError, VMCraftError, os_error
from vmcraft.mount import syscalls
from vmcraft.mount.mountinfo import mount_points
from vmcraft.mount.unmount import unmount
from vmcraft.signals import deferred_signals


def _below(top: str) -> list[str]:
    """Mount points at or under ``top``, deepest first."""
    points = [p for p in mount_points() if p == top or p.startswith(top + "/")]
    return sorted(points, key=lambda p: p.count("/"), reverse=True)


def _take_down(top: str) -> None:
    for point in _below(top):
        try:
            unmount(point)
        except (VMCraftError, OSError):
            with contextlib.suppress(OSError):
                syscalls.umount(point, syscalls.MNT_DETACH)


class LocalMount:
    """One bind of a guest tree at a host directory; ``close()`` takes it down."""

    def __init__(self, root: Path, localmountpoint: str, *, readonly: bool) -> None:
        target = Path(localmountpoint)
        if not target.is_dir() or target.is_symlink():
            raise GuestMountError(f"mount_local: {localmountpoint}: not a directory")
        self.target = target
        where = os.fspath(target)
        with ExitStack() as stack, deferred_signals():
            with os_error("mount_local", where):
                syscalls.mount(os.fspath(root), where, None, syscalls.MS_BIND | syscalls.MS_REC)
            stack.callback(_take_down, where)
            with os_error("mount_local", where):
                syscalls.mount(None, where, None, syscalls.MS_REC | syscalls.MS_PRIVATE)
                if readonly:
                    # A bind remount is per mount: every guest mount under it too.
                    flags = syscalls.MS_BIND | syscalls.MS_REMOUNT | syscalls.MS_RDONLY
                    for point in _below(where):
                        syscalls.mount(None, point, None, flags)
            self._stack = stack.pop_all()

    def close(self) -> None:
        with deferred_signals():
            self._stack.close()
