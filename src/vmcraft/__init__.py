"""vmcraft: repair offline virtual-machine disks with the guest's own tools."""

from vmcraft.chroot.mountinfo import MountCheck
from vmcraft.chroot.pseudofs import PseudoFS, PseudoFSMounter
from vmcraft.chroot.run import CommandResult
from vmcraft.errors import (
    CommandError,
    CommandTimeoutError,
    GuestRootError,
    HostToolMissingError,
    MountError,
    NotLaunchedError,
    NotRootError,
    UnmountError,
    UnsafePathError,
    VMCraftError,
)
from vmcraft.handle import VMCraft

__version__ = "0.1.0"

__all__ = [
    "CommandError",
    "CommandResult",
    "CommandTimeoutError",
    "GuestRootError",
    "HostToolMissingError",
    "MountCheck",
    "MountError",
    "NotLaunchedError",
    "NotRootError",
    "PseudoFS",
    "PseudoFSMounter",
    "UnmountError",
    "UnsafePathError",
    "VMCraft",
    "VMCraftError",
    "__version__",
]
