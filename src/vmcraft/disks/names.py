"""Guest device names as libguestfs gives them, and the host nodes behind them.

Drives are ``/dev/sda``, ``/dev/sdb``... in the order they were added,
partitions ``/dev/sdaN``, logical volumes ``/dev/VG/LV``. A name is only
ever looked up in this handle's own table, never on the host, so a guest
name can never reach one of the host's disks.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from pathlib import Path

from vmcraft.errors import UnknownDeviceError

# Guests and migration tools name disks vdX (virtio), hdX (IDE) or xvdX
# (Xen); libguestfs canonicalizes all of them to sdX.
_DISK_NAME = re.compile(r"^/dev/(?:sd|vd|hd|xvd)([a-z]+)([0-9]*)$")


def drive_letters(index: int) -> str:
    """0 -> a, 25 -> z, 26 -> aa: the kernel's scheme for sd names."""
    letters = ""
    index += 1
    while index:
        index, rem = divmod(index - 1, 26)
        letters = string.ascii_lowercase[rem] + letters
    return letters


def drive_index(letters: str) -> int:
    index = 0
    for ch in letters:
        index = index * 26 + (ord(ch) - ord("a") + 1)
    return index - 1


def dm_name(vg: str, lv: str) -> str:
    """device-mapper's name for an LV: dashes inside the VG or LV name are doubled."""
    return f"{vg.replace('-', '--')}-{lv.replace('-', '--')}"


def split_dm_name(name: str) -> tuple[str, str] | None:
    """(VG, LV) from a device-mapper name (``vg--a-lv`` -> ``vg-a``, ``lv``), or None."""
    parts = re.split(r"(?<!-)-(?!-)", name, maxsplit=1)
    if len(parts) != 2:
        return None
    vg, lv = (p.replace("--", "-") for p in parts)
    return vg, lv


@dataclass
class DeviceTable:
    """Guest names to host nodes for one handle."""

    disks: list[Path] = field(default_factory=list)
    partitions: list[list[Path]] = field(default_factory=list)
    volumes: dict[str, Path] = field(default_factory=dict)
    """``/dev/VG/LV`` -> host node."""

    def add_disk(self, node: Path, partitions: list[Path]) -> str:
        self.disks.append(node)
        self.partitions.append(partitions)
        return f"/dev/sd{drive_letters(len(self.disks) - 1)}"

    def list_devices(self) -> list[str]:
        return [f"/dev/sd{drive_letters(i)}" for i in range(len(self.disks))]

    def list_partitions(self) -> list[str]:
        return [
            f"/dev/sd{drive_letters(i)}{n}"
            for i, parts in enumerate(self.partitions)
            for n in range(1, len(parts) + 1)
        ]

    def list_lvs(self) -> list[str]:
        return sorted(self.volumes)

    def canonical(self, name: str) -> str:
        """The libguestfs spelling of a guest device name (vda1 -> sda1, mapper -> VG/LV)."""
        if name in self.volumes:
            return name
        match = _DISK_NAME.match(name)
        if match:
            number = str(int(match.group(2))) if match.group(2) else ""
            return f"/dev/sd{match.group(1)}{number}"
        if name.startswith("/dev/mapper/"):
            split = split_dm_name(name.removeprefix("/dev/mapper/"))
            if split is not None:
                return f"/dev/{split[0]}/{split[1]}"
        return name

    def host_node(self, name: str) -> Path:
        """The host block device behind a guest name, or UnknownDeviceError."""
        canon = self.canonical(name)
        if canon in self.volumes:
            return self.volumes[canon]
        match = _DISK_NAME.match(canon)
        if match:
            index = drive_index(match.group(1))
            if 0 <= index < len(self.disks):
                if not match.group(2):
                    return self.disks[index]
                number = int(match.group(2))
                if 1 <= number <= len(self.partitions[index]):
                    return self.partitions[index][number - 1]
        raise UnknownDeviceError(f"{name}: no such device on this handle's drives")

    def guest_name(self, node: Path) -> str:
        """The guest name of a host node this table holds."""
        for i, disk in enumerate(self.disks):
            if disk == node:
                return f"/dev/sd{drive_letters(i)}"
            for n, part in enumerate(self.partitions[i], start=1):
                if part == node:
                    return f"/dev/sd{drive_letters(i)}{n}"
        for name, lv in self.volumes.items():
            if lv == node:
                return name
        raise UnknownDeviceError(f"{node} is not one of this handle's devices")

    def all_devices(self) -> list[str]:
        """Every name that can hold a filesystem: whole disks, partitions, LVs."""
        return [*self.list_devices(), *self.list_partitions(), *self.list_lvs()]
