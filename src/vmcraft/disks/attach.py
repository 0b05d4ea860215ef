"""All of a handle's drives attached to the host, and the guest names of their devices.

raw images go straight onto a loop device; every other format through a
qemu-storage-daemon FUSE export under a loop device. Read-only is honoured
at each layer: the daemon's block node and export, the loop device, and
(by the handle) the mount.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from vmcraft.disks import blkid, loop, lvm, nbd, qsd
from vmcraft.disks.names import DeviceTable, dm_name
from vmcraft.errors import VMCraftError
from vmcraft.log import get_logger
from vmcraft.mount.devtree import BlockDevice

log = get_logger(__name__)


@dataclass(frozen=True)
class DriveSpec:
    """A drive as ``add_drive_opts`` recorded it."""

    path: Path
    format: str
    readonly: bool


class AttachedDisks:
    """Context manager: attach on enter, detach everything on exit (LIFO)."""

    def __init__(self, drives: list[DriveSpec], workdir: Path) -> None:
        self.drives = drives
        self.workdir = workdir
        self.table = DeviceTable()
        self.ids: dict[str, dict[str, str]] = {}
        """blkid's view of every guest device, by guest name."""
        self._readonly: dict[str, bool] = {}
        self._stack: ExitStack | None = None
        self.lvm_method: str | None = None
        """How LVs were reached: ``device-mapper``, ``loop`` (no dm), or None (no LVM)."""
        self.unreachable: dict[str, str] = {}
        """LVs that could not be reached, with the reason."""

    def __enter__(self) -> AttachedDisks:
        with ExitStack() as stack:
            for index, drive in enumerate(self.drives):
                backing, via = drive.path, "loop"
                if drive.format != "raw":
                    backing, via = self._raw_view(stack, index, drive)
                device = loop.attach(backing, readonly=drive.readonly)
                stack.callback(device.detach)
                name = self.table.add_disk(device.path, device.partitions())
                log.info(
                    "drive.attached",
                    drive=name,
                    image=str(drive.path),
                    format=drive.format,
                    readonly=drive.readonly,
                    node=str(device.path),
                    via=via,
                )
                for guest in [name, *self._partitions_of(name)]:
                    self._readonly[guest] = drive.readonly
            self.probe_all()
            pvs = [
                self.table.host_node(name)
                for name, ids in self.ids.items()
                if ids.get("TYPE") == "LVM2_member"
            ]
            if pvs:
                self._attach_volumes(stack, pvs)
            self._stack = stack.pop_all()
        return self

    def _raw_view(self, stack: ExitStack, index: int, drive: DriveSpec) -> tuple[Path, str]:
        """A raw view of a non-raw image: a FUSE export, or nbd where FUSE is missing."""
        if not os.path.exists("/dev/fuse") and nbd.nbd_available():
            connection = nbd.connect(drive.path, drive.format, readonly=drive.readonly)
            stack.callback(connection.disconnect)
            return connection.device, "qemu-nbd+loop"
        export = qsd.start_export(
            drive.path, drive.format, self.workdir / f"drive{index}.raw", readonly=drive.readonly
        )
        stack.callback(export.stop)
        return export.export, "qemu-storage-daemon+loop"

    def _attach_volumes(self, stack: ExitStack, pvs: list[Path]) -> None:
        volumes, pe_start = lvm.scan(pvs)
        pv_readonly = {node: self.readonly(self.table.guest_name(node)) for node in pvs}
        if lvm.device_mapper_available():
            self.lvm_method = "device-mapper"
            for vg in sorted({lv.vg for lv in volumes}):
                lvm.activate(vg, pvs)
                stack.callback(lvm.deactivate, vg, pvs)
            for lv in volumes:
                node = Path(os.path.realpath(f"/dev/mapper/{dm_name(lv.vg, lv.name)}"))
                if not node.exists():
                    self.unreachable[lv.guest_name] = "not activated by device-mapper"
                    continue
                readonly = any(pv_readonly[s.pv] for s in lv.segments)
                self.add_volume(lv.guest_name, node, readonly=readonly)
        else:
            self.lvm_method = "loop"
            for lv in volumes:
                span = lvm.linear_range(lv, pe_start)
                if isinstance(span, str):
                    self.unreachable[lv.guest_name] = span
                    log.warning("lvm.unreachable", lv=lv.guest_name, reason=span)
                    continue
                readonly = pv_readonly[span.pv]
                device = loop.attach(
                    span.pv, readonly=readonly, offset=span.offset, size=span.size, partitions=False
                )
                stack.callback(device.detach)
                self.add_volume(lv.guest_name, device.path, readonly=readonly)
        log.info(
            "lvm.volumes",
            method=self.lvm_method,
            reachable=self.table.list_lvs(),
            unreachable=self.unreachable,
        )

    def _partitions_of(self, disk: str) -> list[str]:
        return [p for p in self.table.list_partitions() if p.rstrip("0123456789") == disk]

    def probe_all(self) -> None:
        self.ids = {
            name: blkid.probe(self.table.host_node(name)) for name in self.table.all_devices()
        }

    def readonly(self, name: str) -> bool:
        return self._readonly.get(self.table.canonical(name), True)

    def on_detach(self, callback: Callable[[], object]) -> None:
        """Run ``callback`` at shutdown, after the guest's mounts, before the loop devices."""
        if self._stack is None:
            raise VMCraftError("the drives are not attached")
        self._stack.callback(callback)

    def add_volume(self, name: str, node: Path, *, readonly: bool) -> None:
        self.table.volumes[name] = node
        self._readonly[name] = readonly
        self.ids[name] = blkid.probe(node)

    def block_devices(self) -> tuple[BlockDevice, ...]:
        """Every guest device as the guest's /dev is to show it."""
        devices = []
        for name in self.table.all_devices():
            ids = self.ids.get(name, {})
            links = {}
            if ids.get("UUID") and ids.get("TYPE") not in ("LVM2_member", None):
                links["by-uuid"] = ids["UUID"]
            if ids.get("PART_ENTRY_UUID"):
                links["by-partuuid"] = ids["PART_ENTRY_UUID"]
            if ids.get("LABEL"):
                links["by-label"] = ids["LABEL"]
            aliases = [name.removeprefix("/dev/")]
            if name in self.table.volumes:
                vg, lv = name.removeprefix("/dev/").split("/", 1)
                aliases.append(f"mapper/{dm_name(vg, lv)}")
            devices.append(
                BlockDevice(os.fspath(self.table.host_node(name)), tuple(aliases), links)
            )
        return tuple(devices)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()
