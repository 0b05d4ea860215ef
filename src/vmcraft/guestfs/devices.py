"""Devices, filesystems and volumes on the handle's drives, as libguestfs names them.

Names are the guest's (``/dev/sda2``, ``/dev/VG/LV``), never the host's
loop or mapper nodes: those differ on every host, and a guest tool or a
report that saw one would carry a name the VM will not have.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

from vmcraft.disks import fsstate, lvm
from vmcraft.errors import HostDeviceError, VMCraftError, last_line
from vmcraft.guestfs.base import DIFFERS, EXTENSION, IMPLEMENTED, Conformance, HandleState
from vmcraft.host import host_tool, run_tool


class DeviceCalls(HandleState):
    """list_devices, blkid, vfs_*, findfs_*, LVM, LUKS and e2fsck."""

    CALLS: ClassVar[Conformance] = {
        "list_devices": (IMPLEMENTED, ""),
        "list_partitions": (IMPLEMENTED, ""),
        "list_filesystems": (IMPLEMENTED, ""),
        "blkid": (IMPLEMENTED, ""),
        "vfs_type": (IMPLEMENTED, ""),
        "vfs_uuid": (IMPLEMENTED, ""),
        "findfs_uuid": (IMPLEMENTED, ""),
        "findfs_label": (IMPLEMENTED, ""),
        "vgscan": (IMPLEMENTED, "the scan happens at launch; a no-op afterwards"),
        "vgchange_activate_all": (
            DIFFERS,
            "VGs are activated at launch (device-mapper, or linear LVs on loop devices); "
            "deactivating is refused while LVs are mounted",
        ),
        "vgs": (IMPLEMENTED, ""),
        "pvs": (IMPLEMENTED, ""),
        "lvs": (IMPLEMENTED, ""),
        "cryptsetup_open": (
            DIFFERS,
            "cryptsetup on the host, through device-mapper; raises RuntimeError where the host "
            "has none (as libguestfs raises when it cannot open the device)",
        ),
        "e2fsck": (IMPLEMENTED, "runs the host's e2fsck on the unmounted device"),
        "needs_journal_replay": (EXTENSION, "would a writable mount replay a journal first?"),
    }

    def needs_journal_replay(self, device: str) -> bool:
        """True when the ext3/ext4 filesystem on ``device`` has a journal to replay."""
        return fsstate.needs_journal_replay(self._attached().table.host_node(device))

    def list_devices(self) -> list[str]:
        return self._attached().table.list_devices()

    def list_partitions(self) -> list[str]:
        return self._attached().table.list_partitions()

    def lvs(self) -> list[str]:
        return self._attached().table.list_lvs()

    @property
    def lvm_method(self) -> str | None:
        """How the guest's LVs were reached: ``device-mapper``, ``loop``, or None (no LVM)."""
        return self._attached().lvm_method

    @property
    def unreachable_lvs(self) -> dict[str, str]:
        """LVs that could not be reached on this host, with the reason."""
        return dict(self._attached().unreachable)

    def list_filesystems(self) -> dict[str, str]:
        """Every device that can hold a filesystem -> its type (``unknown`` if none).

        Whole disks with a partition table and LVM physical volumes are left
        out, as libguestfs does.
        """
        disks = self._attached()
        found = {}
        for name in disks.table.all_devices():
            ids = disks.ids.get(name, {})
            if "PTTYPE" in ids and "TYPE" not in ids:
                continue
            if ids.get("TYPE") == "LVM2_member":
                continue
            if name in disks.table.list_devices() and not ids:
                continue
            found[name] = ids.get("TYPE", "unknown")
        return found

    def _ids(self, device: str) -> dict[str, str]:
        disks = self._attached()
        disks.table.host_node(device)  # raises UnknownDeviceError
        return disks.ids.get(disks.table.canonical(device), {})

    def vfs_type(self, mountable: str) -> str:
        return self._ids(mountable).get("TYPE", "")

    def vfs_uuid(self, mountable: str) -> str:
        return self._ids(mountable).get("UUID", "")

    def vfs_label(self, mountable: str) -> str:
        return self._ids(mountable).get("LABEL", "")

    def canonical_device_name(self, device: str) -> str:
        return self._attached().table.canonical(device)

    def blkid(self, device: str) -> dict[str, str]:
        disks = self._attached()
        disks.table.host_node(device)  # UnknownDeviceError for names not on the drives
        canon = disks.table.canonical(device)
        ids = dict(disks.ids.get(canon, {}))
        # Host names and numbers stay on the host: the guest's name, as libguestfs gives it.
        ids["DEVNAME"] = canon
        ids.pop("PART_ENTRY_DISK", None)
        return ids

    def _findfs(self, key: str, value: str) -> str:
        for name, ids in self._attached().ids.items():
            if ids.get(key) == value and ids.get("TYPE") != "LVM2_member":
                return name
        raise VMCraftError(f"findfs: unable to resolve '{key}={value}'")

    def findfs_uuid(self, uuid: str) -> str:
        return self._findfs("UUID", uuid)

    def findfs_label(self, label: str) -> str:
        return self._findfs("LABEL", label)

    def vgscan(self) -> None:
        self._attached()

    def vgchange_activate_all(self, activate: bool) -> None:
        if not activate and any(
            m.device in self._attached().table.volumes for m in self._mounts_or_empty()
        ):
            raise VMCraftError("vgchange_activate_all: logical volumes are still mounted")

    def vgs(self) -> list[str]:
        return sorted({name.split("/")[2] for name in self._attached().table.list_lvs()})

    def pvs(self) -> list[str]:
        disks = self._attached()
        return [n for n, ids in disks.ids.items() if ids.get("TYPE") == "LVM2_member"]

    def cryptsetup_open(
        self, device: str, key: str, mapname: str, readonly: bool = False, **_: object
    ) -> None:
        disks = self._attached()
        disks.table.host_node(device)
        if disks.ids.get(disks.table.canonical(device), {}).get("TYPE") != "crypto_LUKS":
            raise VMCraftError(f"cryptsetup_open: {device}: not a LUKS device")
        if not lvm.device_mapper_available():
            raise HostDeviceError(
                f"cryptsetup_open: {device}: this host has no device-mapper, "
                "which opening a LUKS device needs"
            )
        guest_name = f"/dev/mapper/{mapname}"
        if guest_name in disks.table.volumes:
            raise VMCraftError(f"cryptsetup_open: {guest_name} is already open")
        # The host-side name carries our pid: a guest's mapname never meets the host's own.
        host_name = f"vmcraft{os.getpid()}-{mapname}"
        tool = host_tool("cryptsetup", "cryptsetup-bin")
        argv = [tool, "open", "--type", "luks", "--key-file=-"]
        readonly = readonly or disks.readonly(device)
        if readonly:
            argv.append("--readonly")
        done = run_tool(
            [*argv, os.fspath(disks.table.host_node(device)), host_name],
            input=key,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            tail = last_line(done.stderr, default="cryptsetup failed")
            raise VMCraftError(f"cryptsetup_open: {device}: {tail}")
        disks.on_detach(
            lambda: run_tool([tool, "close", host_name], capture_output=True, timeout=120)
        )
        node = Path(os.path.realpath(f"/dev/mapper/{host_name}"))
        disks.add_volume(guest_name, node, readonly=readonly)

    def e2fsck(self, device: str, correct: bool = False, forceall: bool = False) -> None:
        if correct and forceall:
            raise VMCraftError("e2fsck: only one of correct or forceall may be set")
        disks = self._attached()
        node = disks.table.host_node(device)
        if any(m.node == node for m in self._mounts_or_empty()):
            raise VMCraftError(f"e2fsck: {device} is mounted")
        if disks.readonly(device) and (correct or forceall):
            raise VMCraftError(f"e2fsck: {device} is on a read-only drive")
        mode = "-p" if correct else "-y" if forceall else "-n"
        done = run_tool(
            [host_tool("e2fsck", "e2fsprogs"), "-f", mode, os.fspath(node)],
            capture_output=True,
            text=True,
            timeout=3600,
        )
        # e2fsck: 0 clean, 1 errors corrected; anything else is a failure.
        if done.returncode not in (0, 1):
            tail = last_line(done.stderr, done.stdout, default="failed")
            raise VMCraftError(f"e2fsck: {device}: {tail}")
