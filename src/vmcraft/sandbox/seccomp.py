"""The syscall filter every sandboxed guest command runs under.

A deny list, as a classic-BPF program for bubblewrap's ``--seccomp FD``:
the calls below fail with EPERM, everything else is allowed. What it
stops is what a guest's root could still reach with its capabilities
dropped, or what no boot tool needs and an attacker would: kernel modules,
kexec, reboot, the clock, the kernel keyrings (not namespaced), bpf, perf,
ptrace and cross-process memory, handle-based opens (``open_by_handle_at``
reaches the host's filesystem by inode), userfaultfd, port I/O, swap,
syslog, accounting, every mount call, and new namespaces (``unshare``,
``setns``, ``clone`` with ``CLONE_NEWUSER``: a new user namespace would
hand its creator a full capability set again). ``clone3`` answers ENOSYS,
so the C library falls back to ``clone``, whose flags the filter can see.

Written by hand on purpose: libseccomp's Python bindings are tied to the
system Python, and the maintained alternatives on PyPI wrap the same
library with no release since 2021; this is 100 lines, and its verdicts
are tested call by call, on every ABI the host runs (x86_64, i386, x32).
"""

from __future__ import annotations

import errno
import os
import platform
import struct

from vmcraft.errors import SandboxUnavailableError

AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003
X32_SYSCALL_BIT = 0x40000000
CLONE_NEWUSER = 0x10000000

# name: (x86_64 number, i386 number); None where that table has no such call.
BLOCKED: dict[str, tuple[int | None, int | None]] = {
    "init_module": (175, 128),
    "finit_module": (313, 350),
    "delete_module": (176, 129),
    "kexec_load": (246, 283),
    "kexec_file_load": (320, None),
    "reboot": (169, 88),
    "clock_settime": (227, 264),
    "clock_settime64": (None, 404),
    "settimeofday": (164, 79),
    "stime": (None, 25),
    "adjtimex": (159, 124),
    "clock_adjtime": (305, 343),
    "clock_adjtime64": (None, 405),
    "add_key": (248, 286),
    "request_key": (249, 287),
    "keyctl": (250, 288),
    "bpf": (321, 357),
    "perf_event_open": (298, 336),
    "ptrace": (101, 26),
    "process_vm_readv": (310, 347),
    "process_vm_writev": (311, 348),
    "open_by_handle_at": (304, 342),
    "name_to_handle_at": (303, 341),
    "userfaultfd": (323, 374),
    "iopl": (172, 110),
    "ioperm": (173, 101),
    "swapon": (167, 87),
    "swapoff": (168, 115),
    "syslog": (103, 103),
    "acct": (163, 51),
    "mount": (165, 21),
    "umount": (None, 22),
    "umount2": (166, 52),
    "pivot_root": (155, 217),
    "open_tree": (428, 428),
    "move_mount": (429, 429),
    "fsopen": (430, 430),
    "fsconfig": (431, 431),
    "fsmount": (432, 432),
    "fspick": (433, 433),
    "mount_setattr": (442, 442),
    "unshare": (272, 310),
    "setns": (308, 346),
}
CLONE = (56, 120)
CLONE3 = (435, 435)

# Classic BPF opcodes (linux/filter.h) and seccomp return values.
_LD_W_ABS, _JEQ_K, _JGE_K, _JSET_K, _RET_K = 0x20, 0x15, 0x35, 0x45, 0x06
_ALLOW = 0x7FFF0000
_ERRNO = 0x00050000
_ARCH_OFFSET, _NR_OFFSET, _ARG0_OFFSET = 4, 0, 16


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def _table(native: bool) -> list[int]:
    index = 0 if native else 1
    numbers = (nrs[index] for nrs in BLOCKED.values())
    return sorted({nr for nr in numbers if nr is not None})


def program() -> bytes:
    """The filter as ``struct sock_filter[]``, for x86_64 hosts (native, i386 and x32 ABIs).

    Layout: dispatch on the ABI; per ABI, the syscall number against the
    deny list, then ``clone``'s flags, then ``clone3``; the shared returns
    last. The x32 ABI and unknown ABIs are refused outright.
    """
    out: list[tuple[int, int | str, int | str, int]] = []
    # Each jump target is a label resolved below; the labels are the returns.
    out.append((_LD_W_ABS, 0, 0, _ARCH_OFFSET))
    out.append((_JEQ_K, "native", 0, AUDIT_ARCH_X86_64))
    out.append((_JEQ_K, "compat", 0, AUDIT_ARCH_I386))
    out.append((_RET_K, 0, 0, _ERRNO | errno.EPERM))
    labels: dict[str, int] = {}
    for abi, native in (("native", True), ("compat", False)):
        labels[abi] = len(out)
        out.append((_LD_W_ABS, 0, 0, _NR_OFFSET))
        if native:
            out.append((_JGE_K, "eperm", 0, X32_SYSCALL_BIT))
        for nr in _table(native):
            out.append((_JEQ_K, "eperm", 0, nr))
        out.append((_JEQ_K, "enosys", 0, CLONE3[0 if native else 1]))
        out.append((_JEQ_K, 0, "allow", CLONE[0 if native else 1]))
        out.append((_LD_W_ABS, 0, 0, _ARG0_OFFSET))
        out.append((_JSET_K, "eperm", "allow", CLONE_NEWUSER))
    labels["allow"] = len(out)
    out.append((_RET_K, 0, 0, _ALLOW))
    labels["eperm"] = len(out)
    out.append((_RET_K, 0, 0, _ERRNO | errno.EPERM))
    labels["enosys"] = len(out)
    out.append((_RET_K, 0, 0, _ERRNO | errno.ENOSYS))

    def offset(at: int, target: int | str) -> int:
        if isinstance(target, int):
            return target
        jump = labels[target] - at - 1
        if not 0 <= jump <= 255:
            raise AssertionError("seccomp program too long for a classic-BPF jump")
        return jump

    return b"".join(
        _insn(code, offset(at, jt), offset(at, jf), k) for at, (code, jt, jf, k) in enumerate(out)
    )


def program_fd() -> int:
    """A fresh memfd holding the program from offset 0; bwrap reads it to the end."""
    if platform.machine() != "x86_64":
        raise SandboxUnavailableError(
            f"the sandbox's syscall filter knows x86_64 hosts only, not {platform.machine()}"
        )
    fd = os.memfd_create("vmcraft-seccomp", os.MFD_CLOEXEC)
    try:
        os.write(fd, program())
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd
