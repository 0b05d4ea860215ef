"""The sandbox's syscall filter, run through a classic-BPF interpreter: every verdict."""

from __future__ import annotations

import errno
import struct

import pytest

from vmcraft.sandbox import seccomp

ALLOW = 0x7FFF0000
ERRNO = 0x00050000


def run(program: bytes, arch: int, nr: int, arg0: int = 0) -> int:
    """Evaluate ``program`` on a ``struct seccomp_data`` (nr, arch, ip, args)."""
    data = struct.pack("=iIQ6Q", nr, arch, 0, arg0, 0, 0, 0, 0, 0)
    insns = [struct.unpack("=HBBI", program[i : i + 8]) for i in range(0, len(program), 8)]
    acc, pc = 0, 0
    while True:
        code, jt, jf, k = insns[pc]
        if code == 0x20:  # ld w abs
            acc = int(struct.unpack_from("=I", data, k)[0])
            pc += 1
        elif code == 0x15:  # jeq
            pc += 1 + (jt if acc == k else jf)
        elif code == 0x35:  # jge
            pc += 1 + (jt if acc >= k else jf)
        elif code == 0x45:  # jset
            pc += 1 + (jt if acc & k else jf)
        elif code == 0x06:  # ret
            return int(k)
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")


PROGRAM = seccomp.program()
ABIS = [(seccomp.AUDIT_ARCH_X86_64, 0), (seccomp.AUDIT_ARCH_I386, 1)]


@pytest.mark.parametrize("name", sorted(seccomp.BLOCKED))
@pytest.mark.parametrize(("arch", "index"), ABIS, ids=["x86_64", "i386"])
def test_every_blocked_call_fails_with_eperm(name: str, arch: int, index: int) -> None:
    nr = seccomp.BLOCKED[name][index]
    if nr is None:
        pytest.skip(f"{name} does not exist on this ABI")
    assert run(PROGRAM, arch, nr) == ERRNO | errno.EPERM


@pytest.mark.parametrize(
    "nr",
    [0, 1, 2, 3, 9, 57, 59, 61, 62, 78, 217, 257, 262],  # read write open close mmap fork
    # execve wait4 kill getdents openat newfstatat
)
def test_ordinary_calls_are_allowed(nr: int) -> None:
    assert run(PROGRAM, seccomp.AUDIT_ARCH_X86_64, nr) == ALLOW


@pytest.mark.parametrize(("arch", "index"), ABIS, ids=["x86_64", "i386"])
def test_clone_is_allowed_but_not_into_a_new_user_namespace(arch: int, index: int) -> None:
    clone = seccomp.CLONE[index]
    assert run(PROGRAM, arch, clone, 0x01200011) == ALLOW  # what fork() passes
    assert run(PROGRAM, arch, clone, seccomp.CLONE_NEWUSER | 0x11) == ERRNO | errno.EPERM


@pytest.mark.parametrize(("arch", "index"), ABIS, ids=["x86_64", "i386"])
def test_clone3_says_enosys_so_libc_falls_back_to_clone(arch: int, index: int) -> None:
    assert run(PROGRAM, arch, seccomp.CLONE3[index]) == ERRNO | errno.ENOSYS


def test_x32_and_unknown_abis_are_refused() -> None:
    assert run(PROGRAM, seccomp.AUDIT_ARCH_X86_64, seccomp.X32_SYSCALL_BIT | 0) == ERRNO | 1
    assert run(PROGRAM, 0xC00000B7, 0) == ERRNO | errno.EPERM  # aarch64's arch value
