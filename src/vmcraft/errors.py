"""The one exception hierarchy of vmcraft.

Every error derives from :class:`VMCraftError`, which is a ``RuntimeError``:
libguestfs raises ``RuntimeError`` for everything, and migration scripts
written against it (hyper2kvm's fixers among them) catch exactly that.
"""

from __future__ import annotations

import enum
import errno
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager


def last_line(*texts: str | None, default: str) -> str:
    """The last non-blank line of the first text that has one.

    Tools put the reason for a failure last (qemu-img, lvm, mtools,
    cryptsetup, the guest's own), so that is what a one-line error quotes.
    """
    for text in texts:
        lines = [line for line in (text or "").strip().splitlines() if line.strip()]
        if lines:
            return lines[-1].strip()
    return default


class VMCraftError(RuntimeError):
    """Base of every error vmcraft raises."""


class UsageError(VMCraftError):
    """A call or command line that cannot mean anything (``--undo`` with several images)."""


class NotLaunchedError(VMCraftError):
    """A call needs a guest root, but the handle has none yet."""


class NotRootError(VMCraftError):
    """The operation mounts or chroots, and only root may do that."""


class HostFeatureError(VMCraftError):
    """Base of the errors a host without some tool, device or kernel feature causes.

    The CLI tells the user to run ``vmcraft doctor`` after these, and only
    these: doctor lists what the host offers and what vmcraft does without
    each thing, which the one failing call cannot say. Recognised by type
    (a class may derive from it beside its own base), never by message.
    """


class HostToolMissingError(HostFeatureError):
    """A program vmcraft runs on the host is not installed."""

    def __init__(self, tool: str, package: str | None = None) -> None:
        hint = f" (Debian package {package})" if package else ""
        super().__init__(f"host tool {tool!r} not found on PATH{hint}")
        self.tool = tool
        self.package = package


class HostToolTimeoutError(VMCraftError):
    """A host tool did not finish in the time it was given."""


class GuestRootError(VMCraftError):
    """The directory given as the guest root cannot be one."""


class UnsafePathError(VMCraftError):
    """A path inside the guest is not what it must be (a symlink, a file...).

    Raised before anything is mounted or created, because a guest disk is
    untrusted data and following its links would act on the host.
    """


class MountError(VMCraftError):
    """A mount the operation needs could not be made."""


class UnmountError(VMCraftError):
    """A mount vmcraft made could not be taken down, even lazily."""


class CommandError(VMCraftError):
    """A command in the guest exited non-zero; carries what it printed."""

    def __init__(
        self,
        argv: Sequence[str],
        returncode: int,
        stdout: str,
        stderr: str,
        message: str | None = None,
    ) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        if message is None:
            tail = last_line(stderr, stdout, default="no output")
            name = self.argv[0] if self.argv else "command"
            message = f"{name}: exited with status {returncode}: {tail}"
        super().__init__(message)


class CommandTimeoutError(CommandError):
    """A command in the guest ran past its timeout and was killed."""

    def __init__(self, argv: Sequence[str], timeout: float, stdout: str, stderr: str) -> None:
        super().__init__(
            argv,
            returncode=-9,
            stdout=stdout,
            stderr=stderr,
            message=f"{argv[0] if argv else 'command'}: killed after the {timeout:g} s timeout",
        )
        self.timeout = timeout


class UnsupportedGuestError(VMCraftError):
    """The guest is not one whose boot vmcraft knows how to repair."""


class DirtyFilesystemError(VMCraftError):
    """A guest filesystem needs its journal replayed; mounting it writable would change it."""


class NoSpaceError(VMCraftError):
    """The guest has no room for what a repair would write; nothing was changed."""


class SandboxUnavailableError(HostFeatureError):
    """The sandbox cannot run this command on this host (a missing tool, an architecture
    its syscall filter does not know, a mount it will not give a guest)."""


class NicPinError(UsageError):
    """A ``--nic NAME=MAC`` pin that names no interface or no NIC's address, or one twice."""


class DriveError(VMCraftError):
    """An image cannot be added or attached."""


class HostDeviceError(DriveError, HostFeatureError):
    """A device the host must provide is missing or refused: /dev/loop-control, a free
    loop or nbd device, /dev/fuse, device-mapper's control node."""


class ImageNotFoundError(DriveError):
    """The image file does not exist or cannot be read."""


class ImageFormatError(DriveError):
    """The image's format is unknown, corrupt, unsupported or unsafe to open."""


class HostUnsupportedGuestError(UnsupportedGuestError, HostFeatureError):
    """This guest needs something of this host that it lacks (``--reinstall-grub`` on a
    UEFI guest needs vfat); the exit status stays that of an unsupported guest."""


class UnknownDeviceError(VMCraftError):
    """A guest device name that names nothing on this handle's drives."""


class AlreadyLaunchedError(VMCraftError):
    """The call is only allowed before ``launch()``."""


class GuestMountError(MountError):
    """A guest filesystem cannot be mounted or unmounted as asked."""


class GuestFileError(VMCraftError):
    """A file call on a guest path failed; carries the errno."""

    def __init__(self, call: str, path: str, err: int) -> None:
        super().__init__(f"{call}: {path}: {os.strerror(err)}")
        self.call = call
        self.path = path
        self.errno = err


class MountOSError(GuestMountError, GuestFileError):
    """The OS refused a mount call (``mount``, ``umount``, ``mount_local``, the staged ESP).

    A :class:`GuestMountError` that carries ``call``, ``path`` and ``errno``
    like a :class:`GuestFileError`, so :func:`os_error` can raise it.
    """


class HostFileError(GuestFileError):
    """A file call on a host path (``upload``'s source, ``download``'s target) failed."""


@contextmanager
def os_error(
    call: str, path: str | os.PathLike[str], *, error: type[GuestFileError] = GuestFileError
) -> Iterator[None]:
    """Turn an ``OSError`` inside the block into ``error(call, path, errno)``.

    The one place where the OS's errors become vmcraft's: callers written
    against libguestfs catch ``RuntimeError``, which ``OSError`` is not, and
    a bare ``ENOSPC`` would not say which call on which guest path failed.
    """
    try:
        yield
    except OSError as exc:
        raise error(call, os.fspath(path), exc.errno or errno.EIO) from exc


class ExitCode(enum.IntEnum):
    """The ``vmcraft`` command's exit statuses, also written into every report."""

    OK = 0
    FAILED = 1
    """The repair (or the guest command) failed; the report says why."""
    USAGE = 2
    INPUT = 3
    """Bad input: a missing, unreadable or unsupported image, an unknown device."""
    ROOT = 4
    GUEST = 5
    """No Linux found, or a distribution vmcraft does not know."""
    HOST = 6
    """A missing tool, no loop device, a mount that failed."""
    INTERRUPTED = 130


# First match wins: subclasses before the classes they derive from.
_EXIT_CODES: tuple[tuple[tuple[type[BaseException], ...], ExitCode], ...] = (
    ((KeyboardInterrupt,), ExitCode.INTERRUPTED),
    ((UsageError,), ExitCode.USAGE),
    ((NotRootError,), ExitCode.ROOT),
    ((UnsupportedGuestError,), ExitCode.GUEST),
    (
        (
            ImageNotFoundError,
            ImageFormatError,
            UnknownDeviceError,
            GuestRootError,
            DirtyFilesystemError,
            NoSpaceError,
        ),
        ExitCode.INPUT,
    ),
    ((CommandError,), ExitCode.FAILED),
    ((VMCraftError,), ExitCode.HOST),
)


def exit_code_for(error: BaseException) -> ExitCode:
    """The exit status an error maps to, for the CLI and for reports."""
    for kinds, code in _EXIT_CODES:
        if isinstance(error, kinds):
            return code
    return ExitCode.FAILED
