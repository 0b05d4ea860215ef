"""Opening directories inside an untrusted guest root without leaving it.

A guest disk is hostile input: its ``proc`` may be a symlink to ``/etc`` or
``../../..``, and ``mount --bind /proc ROOT/proc`` would then follow it on
the host. Here every component is opened with ``O_PATH|O_NOFOLLOW``
relative to the previous one, anything that is not a plain directory is
refused, and the caller mounts onto the returned fd (``/proc/self/fd/N``),
so the mount lands on exactly the directory that was checked (the runc
CVE-2021-30465 remedy, as systemd-nspawn also does).
"""

from __future__ import annotations

import os
import stat
from pathlib import PurePosixPath

from vmcraft.errors import UnsafePathError

_O_PATH_NOFOLLOW = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


def guest_components(relpath: str) -> list[str]:
    """Split a path relative to the guest root, refusing ``..`` and the like."""
    parts = PurePosixPath(relpath.strip("/")).parts
    if not parts or any(p in (".", "..") for p in parts):
        raise UnsafePathError(f"not a plain path inside the guest: {relpath!r}")
    return list(parts)


def _describe(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISREG(mode):
        return "a regular file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device node"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a directory"


def open_guest_dir(root_fd: int, relpath: str, *, create: bool = False, mode: int = 0o755) -> int:
    """Return an ``O_PATH`` fd on the directory ``relpath`` inside the root.

    ``create`` makes missing components with ``mkdirat``, which never
    follows a symlink in the last component (a dangling link makes it fail
    with ``EEXIST``, and the link is then refused like any other).
    The caller closes the fd.
    """
    parts = guest_components(relpath)
    fd = os.dup(root_fd)
    try:
        for depth, name in enumerate(parts):
            shown = "/" + "/".join(parts[: depth + 1])
            while True:
                try:
                    child = os.open(name, _O_PATH_NOFOLLOW, dir_fd=fd)
                    break
                except FileNotFoundError:
                    if not create:
                        raise UnsafePathError(f"{shown} does not exist in the guest") from None
                    try:
                        os.mkdir(name, mode, dir_fd=fd)
                    except FileExistsError:
                        continue  # appeared meanwhile (a dangling symlink, say): look again
                    except OSError as exc:
                        raise UnsafePathError(
                            f"cannot create {shown} in the guest: {exc.strerror}"
                        ) from exc
            os.close(fd)
            fd = child
            st = os.fstat(fd)
            if not stat.S_ISDIR(st.st_mode):
                raise UnsafePathError(
                    f"{shown} in the guest is {_describe(st.st_mode)}, not a directory; "
                    "refusing to mount over it"
                )
        return fd
    except BaseException:
        os.close(fd)
        raise
