"""What every call mixin needs from the handle it is mixed into."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from vmcraft.disks.attach import AttachedDisks
    from vmcraft.guest.files import GuestFiles
    from vmcraft.mount.guest import GuestMount, GuestMounts

IMPLEMENTED = "implemented with libguestfs semantics"
DIFFERS = "differs"
EXTENSION = "vmcraft extension"

Conformance = dict[str, tuple[str, str]]
"""call name -> (status, how it differs)."""


class HandleState:
    """The handle's parts the mixins reach; ``VMCraft`` provides them."""

    CALLS: ClassVar[Conformance] = {}

    def _attached(self) -> AttachedDisks:
        raise NotImplementedError

    def _guest_mounts(self) -> GuestMounts:
        raise NotImplementedError

    def _mounts_or_empty(self) -> list[GuestMount]:
        raise NotImplementedError

    def _files(self) -> GuestFiles:
        raise NotImplementedError

    def canonical_device_name(self, device: str) -> str:
        raise NotImplementedError

    @property
    def root(self) -> Path:
        raise NotImplementedError
