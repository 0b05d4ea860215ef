"""Guest paths resolved inside the guest, never on the host.

A guest's ``/etc/resolv.conf`` may be a symlink to ``/run/...`` or
``../../../../etc/shadow``. Every path here is opened with ``openat2(2)``
and ``RESOLVE_IN_ROOT``: the kernel resolves absolute links and ``..``
against the guest root, as the guest itself would see them, and magic
links (``/proc/self/fd``) are refused. Written by hand with ctypes on
purpose: Python has no openat2 before 3.14 and no package wraps it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from pathlib import Path

from vmcraft.errors import GuestFileError

_SYS_OPENAT2 = 437  # x86_64 and aarch64 alike (the new syscall table)
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10


class _OpenHow(ctypes.Structure):
    _fields_ = [
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    ]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def openat2_in_root(root_fd: int, path: str, flags: int, mode: int = 0) -> int:
    """Open ``path`` (absolute or relative, as the guest sees it) inside the root."""
    how = _OpenHow(flags | os.O_CLOEXEC, mode, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
    fd = _libc.syscall(
        _SYS_OPENAT2,
        ctypes.c_int(root_fd),
        ctypes.c_char_p(os.fsencode(path)),
        ctypes.byref(how),
        ctypes.c_size_t(ctypes.sizeof(how)),
    )
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return int(fd)


class GuestFiles:
    """libguestfs-style file calls on a mounted guest tree."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _open(self, call: str, path: str, flags: int, mode: int = 0) -> int:
        if not path.startswith("/"):
            raise GuestFileError(call, path, errno.EINVAL)
        root_fd = os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            return openat2_in_root(root_fd, path, flags, mode)
        except OSError as exc:
            raise GuestFileError(call, path, exc.errno or errno.EIO) from exc
        finally:
            os.close(root_fd)

    def _stat(self, call: str, path: str, *, follow: bool) -> os.stat_result | None:
        flags = os.O_PATH | (0 if follow else os.O_NOFOLLOW)
        try:
            fd = self._open(call, path, flags)
        except GuestFileError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                return None
            raise
        try:
            return os.fstat(fd)
        finally:
            os.close(fd)

    def stat(self, path: str, *, follow: bool = True) -> os.stat_result:
        st = self._stat("stat", path, follow=follow)
        if st is None:
            raise GuestFileError("stat", path, errno.ENOENT)
        return st

    def exists(self, path: str) -> bool:
        return self._stat("exists", path, follow=True) is not None

    def is_file(self, path: str, followsymlinks: bool = False) -> bool:
        st = self._stat("is_file", path, follow=followsymlinks)
        return st is not None and stat.S_ISREG(st.st_mode)

    def is_dir(self, path: str, followsymlinks: bool = False) -> bool:
        st = self._stat("is_dir", path, follow=followsymlinks)
        return st is not None and stat.S_ISDIR(st.st_mode)

    @staticmethod
    def _require_regular(call: str, path: str, fd: int) -> None:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            raise GuestFileError(call, path, errno.EISDIR if stat.S_ISDIR(mode) else errno.EINVAL)

    def _open_regular(self, call: str, path: str, flags: int) -> int:
        """Open a regular file only: never a FIFO (it would block), a socket,
        or a device node (a hostile guest's node could name a host disk).

        The file is looked at through an O_PATH fd first, then that very
        inode is reopened, so nothing can be swapped in between.
        """
        probe = self._open(call, path, os.O_PATH)
        self._require_regular(call, path, probe)
        try:
            return os.open(f"/proc/self/fd/{probe}", flags | os.O_CLOEXEC | os.O_NOCTTY)
        except OSError as exc:
            raise GuestFileError(call, path, exc.errno or errno.EIO) from exc
        finally:
            os.close(probe)

    def read_file(self, path: str) -> bytes:
        fd = self._open_regular("read_file", path, os.O_RDONLY)
        with os.fdopen(fd, "rb") as f:
            return f.read()

    def write(self, path: str, content: bytes | str) -> None:
        data = content.encode() if isinstance(content, str) else content
        try:
            fd = self._open_regular("write", path, os.O_WRONLY | os.O_TRUNC)
        except GuestFileError as exc:
            if exc.errno != errno.ENOENT:
                raise
            # A new file (through a guest symlink too, resolved in the guest).
            # O_NONBLOCK: should a FIFO appear meanwhile, the open fails
            # instead of waiting for a reader; it is refused just below.
            fd = self._open(
                "write", path, os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK | os.O_NOCTTY, 0o644
            )
            self._require_regular("write", path, fd)
            os.set_blocking(fd, True)
            os.ftruncate(fd, 0)
        with os.fdopen(fd, "wb") as f:
            f.write(data)

    def ls(self, directory: str) -> list[str]:
        fd = self._open("ls", directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            return sorted(os.listdir(fd))
        finally:
            os.close(fd)
