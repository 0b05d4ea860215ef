"""Mounting the guest's filesystems in the handle's tree, and showing it on the host.

The mounts themselves are made in vmcraft.mount; these are the libguestfs
calls over them.
"""

from __future__ import annotations

from typing import ClassVar

from vmcraft.chroot import reaper
from vmcraft.errors import GuestMountError
from vmcraft.guestfs.base import DIFFERS, IMPLEMENTED, Conformance, HandleState
from vmcraft.mount.guest import GuestMount
from vmcraft.mount.local import LocalMount
from vmcraft.signals import deferred_signals


class MountCalls(HandleState):
    """mount, mount_ro, mount_options, umount, umount_all, mountpoints, mount_local."""

    CALLS: ClassVar[Conformance] = {
        "mount": (IMPLEMENTED, "guest filesystems are mounted nodev"),
        "mount_ro": (IMPLEMENTED, "no journal replay (noload/norecovery)"),
        "mount_options": (IMPLEMENTED, ""),
        "umount": (IMPLEMENTED, ""),
        "umount_all": (IMPLEMENTED, ""),
        "mount_local": (
            DIFFERS,
            "a bind mount of the guest tree (no FUSE server); readonly honoured",
        ),
        "mount_local_run": (DIFFERS, "returns at once: there is no FUSE loop to serve"),
        "umount_local": (IMPLEMENTED, ""),
    }

    _local: LocalMount | None = None

    def _holding_root(self) -> bool:
        raise NotImplementedError

    def mount_options(self, options: str, mountable: str, mountpoint: str) -> None:
        disks = self._attached()
        node = disks.table.host_node(mountable)
        self._guest_mounts().mount(
            disks.table.canonical(mountable),
            node,
            mountpoint,
            readonly=disks.readonly(mountable),
            options=options,
        )

    def mount(self, mountable: str, mountpoint: str) -> None:
        """Mount a guest device at a guest path (``/`` first); read-only drives mount ro."""
        self.mount_options("", mountable, mountpoint)

    def mount_ro(self, mountable: str, mountpoint: str) -> None:
        disks = self._attached()
        self._guest_mounts().mount(
            disks.table.canonical(mountable),
            disks.table.host_node(mountable),
            mountpoint,
            readonly=True,
        )

    def umount(self, pathordevice: str) -> None:
        mounts = self._guest_mounts()
        for entry in mounts.mounts:
            if entry.device in (pathordevice, self.canonical_device_name(pathordevice)):
                pathordevice = entry.mountpoint
                break
        if pathordevice == "/" and self._holding_root():
            raise GuestMountError("umount: the pseudo-filesystems are held on /")
        reaper.reap(mounts.root)
        mounts.umount(pathordevice)

    def _root_is(self, point: str) -> bool:
        return any(m.mountpoint == point for m in self._mounts_or_empty())

    def umount_all(self) -> None:
        mounts = self._guest_mounts()
        reaper.reap(mounts.root)
        mounts.umount_all()

    def guest_mounts(self) -> list[GuestMount]:
        """What is mounted in the guest tree: how (kernel, or mtools for FAT) and if read-only."""
        return self._mounts_or_empty()

    def mountpoints(self) -> dict[str, str]:
        """Guest device -> guest mount point, for what is mounted now."""
        return {m.device: m.mountpoint for m in self._mounts_or_empty()}

    def mounts(self) -> list[str]:
        return [m.device for m in self._mounts_or_empty()]

    def mount_local(self, localmountpoint: str, readonly: bool = False, **_: object) -> None:
        if self._local is not None:
            raise GuestMountError("mount_local: already mounted")
        # Held signals: a Ctrl-C between the bind and this assignment would
        # leave a bind nobody knows to take down; one held back until the
        # end takes it down again, so a failed call leaves nothing.
        local: LocalMount | None = None
        try:
            with deferred_signals():
                local = LocalMount(self.root, localmountpoint, readonly=readonly)
                self._local = local
        except BaseException:
            if local is not None and self._local is local:
                self._local = None
                local.close()
            raise

    def mount_local_run(self) -> None:
        if self._local is None:
            raise GuestMountError("mount_local_run: call mount_local first")

    def umount_local(self, **_: object) -> None:
        local, self._local = self._local, None
        if local is not None:
            local.close()
