"""A trial idmapped mount, run as a script in a child process of its own.

``vmcraft doctor`` runs this file with ``python -I -S`` (standard library
only, no vmcraft import, so it costs one interpreter start) rather than
trying in its own process: the trial needs a private mount namespace, a
fork for a user namespace, and nothing of either may touch the caller. It

1. moves into a private mount namespace (``unshare(CLONE_NEWNS)``, ``/``
   made private), so even a kernel bug could not reach the host's table;
2. forks a child that enters a new user namespace, and maps it
   (``0 1000000 1``) from here, as root in the initial namespace may;
3. makes a *detached* tmpfs (``fsopen``/``fsconfig``/``fsmount``): it is on
   no path, and goes with its last fd;
4. asks ``mount_setattr(MOUNT_ATTR_IDMAP)`` with the child's namespace.

Exit 0 and ``ok`` when the kernel took the idmapping; exit 1 and the step
and errno that refused it otherwise. The detached mount, the namespaces and
the child all end with this process; nothing is ever attached anywhere.
tmpfs takes idmappings from Linux 6.3 (ext4 from 5.12); the caller only
runs the trial where that answer means something.
"""

from __future__ import annotations

import ctypes
import os
import sys

CLONE_NEWNS = 0x20000
CLONE_NEWUSER = 0x10000000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
SYS_FSOPEN = 430
SYS_FSCONFIG = 431
SYS_FSMOUNT = 432
SYS_MOUNT_SETATTR = 442
FSOPEN_CLOEXEC = 0x1
FSCONFIG_CMD_CREATE = 6
FSMOUNT_CLOEXEC = 0x1
AT_EMPTY_PATH = 0x1000
MOUNT_ATTR_IDMAP = 0x00100000

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


class Refused(Exception):
    """A step the kernel refused, with its errno."""

    def __init__(self, step: str) -> None:
        err = ctypes.get_errno()
        super().__init__(f"{step}: {os.strerror(err)}")


def _call(result: int, step: str) -> int:
    if result < 0:
        raise Refused(step)
    return result


def _user_namespace() -> tuple[int, int]:
    """A mapped user namespace held by a forked child: (fd on it, the child's pid).

    The child waits on a pipe; it exits when this process closes the pipe or dies.
    """
    ready_r, ready_w = os.pipe()
    hold_r, hold_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(ready_r)
        os.close(hold_w)
        ok = _libc.unshare(CLONE_NEWUSER) == 0
        os.write(ready_w, b"1" if ok else b"0")
        os.read(hold_r, 1)
        os._exit(0)
    os.close(ready_w)
    os.close(hold_r)
    try:
        if os.read(ready_r, 1) != b"1":
            raise Refused("unshare(CLONE_NEWUSER)")
        for kind in ("uid_map", "gid_map"):
            with open(f"/proc/{pid}/{kind}", "w", encoding="ascii") as f:
                f.write("0 1000000 1\n")
        return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC), hold_w
    finally:
        os.close(ready_r)


def trial() -> None:
    _call(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _call(_libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "mount(/, MS_PRIVATE)")
    userns, hold = _user_namespace()
    try:
        fs = _call(
            _libc.syscall(ctypes.c_long(SYS_FSOPEN), b"tmpfs", ctypes.c_uint(FSOPEN_CLOEXEC)),
            "fsopen(tmpfs)",
        )
        _call(
            _libc.syscall(
                ctypes.c_long(SYS_FSCONFIG),
                ctypes.c_int(fs),
                ctypes.c_uint(FSCONFIG_CMD_CREATE),
                None,
                None,
                ctypes.c_int(0),
            ),
            "fsconfig(FSCONFIG_CMD_CREATE)",
        )
        mnt = _call(
            _libc.syscall(
                ctypes.c_long(SYS_FSMOUNT),
                ctypes.c_int(fs),
                ctypes.c_uint(FSMOUNT_CLOEXEC),
                ctypes.c_uint(0),
            ),
            "fsmount",
        )
        attr = _MountAttr(MOUNT_ATTR_IDMAP, 0, 0, userns)
        _call(
            _libc.syscall(
                ctypes.c_long(SYS_MOUNT_SETATTR),
                ctypes.c_int(mnt),
                b"",
                ctypes.c_uint(AT_EMPTY_PATH),
                ctypes.byref(attr),
                ctypes.c_size_t(ctypes.sizeof(attr)),
            ),
            "mount_setattr(MOUNT_ATTR_IDMAP)",
        )
    finally:
        os.close(hold)  # the namespace's holder exits
        os.wait()


def main() -> int:
    try:
        trial()
    except (Refused, OSError) as exc:
        print(exc)
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
