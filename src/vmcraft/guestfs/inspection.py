"""What operating system is on the drives: inspect_os and the inspect_get_* calls."""

from __future__ import annotations

from typing import ClassVar

from vmcraft.errors import GuestMountError
from vmcraft.guestfs.base import IMPLEMENTED, Conformance, HandleState
from vmcraft.inspect.inspector import OSInfo, inspect_all


class InspectionCalls(HandleState):
    """inspect_os, inspect_get_*; ``inspect()`` gives all of it as one value."""

    CALLS: ClassVar[Conformance] = {
        "inspect_os": (IMPLEMENTED, "Linux guests (os-release); no Windows"),
        "inspect_get_type": (IMPLEMENTED, ""),
        "inspect_get_distro": (IMPLEMENTED, ""),
        "inspect_get_product_name": (IMPLEMENTED, ""),
        "inspect_get_major_version": (IMPLEMENTED, ""),
        "inspect_get_minor_version": (IMPLEMENTED, ""),
        "inspect_get_mountpoints": (IMPLEMENTED, ""),
        "inspect_get_arch": (IMPLEMENTED, "from the ELF header of the guest's /bin/sh"),
    }

    _inspected: dict[str, OSInfo] | None = None

    def inspect_os(self) -> list[str]:
        """The root devices of the operating systems found on the drives."""
        disks = self._attached()
        if self._inspected is None:
            mounted = {m.device: m.target for m in self._mounts_or_empty()}
            self._inspected = inspect_all(disks, disks.workdir / "inspect", mounted)
        return sorted(self._inspected)

    def _os(self, root: str) -> OSInfo:
        self.inspect_os()
        inspected = self._inspected or {}
        canon = self.canonical_device_name(root)
        if canon not in inspected:
            raise GuestMountError(f"{root}: not an inspected root (call inspect_os first)")
        return inspected[canon]

    def inspect(self, root: str) -> OSInfo:
        """Everything inspection found about one root, as a value."""
        return self._os(root)

    def inspect_get_type(self, root: str) -> str:
        return self._os(root).type

    def inspect_get_distro(self, root: str) -> str:
        return self._os(root).distro

    def inspect_get_product_name(self, root: str) -> str:
        return self._os(root).product_name

    def inspect_get_major_version(self, root: str) -> int:
        return self._os(root).major_version

    def inspect_get_minor_version(self, root: str) -> int:
        return self._os(root).minor_version

    def inspect_get_mountpoints(self, root: str) -> dict[str, str]:
        """Guest mount point -> guest device, from the guest's fstab."""
        return dict(self._os(root).mountpoints)

    def inspect_get_arch(self, root: str) -> str:
        return self._os(root).arch
