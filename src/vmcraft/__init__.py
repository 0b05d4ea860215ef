"""vmcraft: repair offline virtual-machine disks with the guest's own tools."""

from vmcraft.chroot.run import CommandResult
from vmcraft.errors import (
    AlreadyLaunchedError,
    CommandError,
    CommandTimeoutError,
    DirtyFilesystemError,
    DriveError,
    GuestFileError,
    GuestMountError,
    GuestRootError,
    HostDeviceError,
    HostFeatureError,
    HostFileError,
    HostToolMissingError,
    HostToolTimeoutError,
    HostUnsupportedGuestError,
    ImageFormatError,
    ImageNotFoundError,
    MountError,
    MountOSError,
    NoSpaceError,
    NotLaunchedError,
    NotRootError,
    SandboxUnavailableError,
    UnknownDeviceError,
    UnmountError,
    UnsafePathError,
    UnsupportedGuestError,
    VMCraftError,
)
from vmcraft.handle import VMCraft
from vmcraft.mount.mountinfo import MountCheck
from vmcraft.mount.pseudofs import PseudoFS, PseudoFSMounter
from vmcraft.sandbox.isolation import Isolation
from vmcraft.version import package_version

__version__ = package_version()

__all__ = [
    "AlreadyLaunchedError",
    "CommandError",
    "CommandResult",
    "CommandTimeoutError",
    "DirtyFilesystemError",
    "DriveError",
    "GuestFileError",
    "GuestMountError",
    "GuestRootError",
    "HostDeviceError",
    "HostFeatureError",
    "HostFileError",
    "HostToolMissingError",
    "HostToolTimeoutError",
    "HostUnsupportedGuestError",
    "ImageFormatError",
    "ImageNotFoundError",
    "Isolation",
    "MountCheck",
    "MountError",
    "MountOSError",
    "NoSpaceError",
    "NotLaunchedError",
    "NotRootError",
    "PseudoFS",
    "PseudoFSMounter",
    "SandboxUnavailableError",
    "UnknownDeviceError",
    "UnmountError",
    "UnsafePathError",
    "UnsupportedGuestError",
    "VMCraft",
    "VMCraftError",
    "__version__",
]
