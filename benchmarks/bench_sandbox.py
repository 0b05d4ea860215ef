"""What a sandbox around each guest command costs, beside today's chroot, on one guest root.

Measures, interleaved round by round on the same debootstrapped root (an
overlay on the test fixture's cached tree) and in a private mount
namespace, the cost of running ``/bin/true`` in the guest:

* today: ``command()`` (a bare ``chroot(8)``, the baseline) and
  ``command_with_mounts()`` (the host's /proc, /dev, /sys bound around it);
* bubblewrap with the strict set (new PID, network, IPC, UTS and cgroup
  namespaces, a fresh read-only /proc, read-only /sys, a prepared guest-only /dev,
  ``--die-with-parent``, ``--new-session``, a capability allow-list and a
  seccomp filter), as root without a user namespace and with
  ``--unshare-user`` (uid 0 mapped to 0); and the same without the filter,
  and a minimal bwrap (just ``--bind ROOT /``), to show where the time goes;
* ``systemd-nspawn --register=no --keep-unit --private-network``;
* util-linux ``unshare --fork --pid --mount-proc --net --ipc --uts
  --kill-child -R ROOT``, and a hand-written sandbox: a Python
  ``preexec_fn`` (death signal, namespaces, binds, seccomp) exec'ing
  ``unshare --fork --pid --mount-proc``, ``setpriv`` (bounding set,
  no_new_privs) and ``chroot``.

The seccomp filter is assembled here by hand (no libseccomp binding needed):
errno EPERM for kernel modules, kexec, reboot, clock setting, keyrings, bpf,
perf, ptrace, process_vm_*, open_by_handle_at, and (``MOUNT_SYSCALLS``) the
mount API, unshare and setns; native x86_64 and i386 tables, x32 refused.

Run as root: ``python benchmarks/bench_sandbox.py [--runs N] [--json FILE]
[--print-argv]``.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_chroot import overlay_root
from benchmarks.common import isolate
from vmcraft import VMCraft
from vmcraft.chroot.run import guest_environment
from vmcraft.mount import devtree, syscalls

TRUE = ["/bin/true"]

# -- the seccomp filter -------------------------------------------------------

AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003
X32_SYSCALL_BIT = 0x40000000

# name: (x86_64, i386); None where the table has no such call.
BLOCKED_SYSCALLS: dict[str, tuple[int | None, int | None]] = {
    "init_module": (175, 128),
    "finit_module": (313, 350),
    "delete_module": (176, 129),
    "kexec_load": (246, 283),
    "kexec_file_load": (320, None),
    "reboot": (169, 88),
    "clock_settime": (227, 264),
    "clock_settime64": (None, 404),
    "settimeofday": (164, 79),
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
    "userfaultfd": (323, 374),
    "iopl": (172, 110),
    "ioperm": (173, 101),
    "swapon": (167, 87),
    "swapoff": (168, 115),
    "syslog": (103, 103),
    "acct": (163, 51),
}
MOUNT_SYSCALLS: dict[str, tuple[int | None, int | None]] = {
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

_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_RET_K = 0x06
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
EPERM = 1


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def seccomp_bpf(blocked: dict[str, tuple[int | None, int | None]]) -> bytes:
    """A classic-BPF program (``struct sock_filter[]``) as bwrap's ``--seccomp`` reads it.

    Listed calls fail with EPERM, everything else is allowed; an unknown
    architecture and the x32 ABI fail every call (EPERM too).
    """
    native = sorted({nrs[0] for nrs in blocked.values() if nrs[0] is not None})
    compat = sorted({nrs[1] for nrs in blocked.values() if nrs[1] is not None})
    # Layout: arch dispatch, native list, compat list, ALLOW, ERRNO.
    #   0 ld arch
    #   1 jeq x86_64 -> 4
    #   2 jeq i386   -> i386 block
    #   3 ret errno
    #   4 ld nr ; 5 jge x32 bit -> errno ; natives... ; ja allow
    body_native = len(native)
    body_compat = len(compat)
    # Index of the final two instructions.
    n_head = 4
    native_start = n_head  # ld nr
    compat_start = native_start + 2 + body_native + 1  # after native's "ret allow"
    allow_at = compat_start + 1 + body_compat
    errno_at = allow_at + 1
    prog = [
        _insn(_LD_W_ABS, 0, 0, 4),
        _insn(_JEQ_K, native_start - 2, 0, AUDIT_ARCH_X86_64),
        _insn(_JEQ_K, compat_start - 3, 0, AUDIT_ARCH_I386),
        _insn(_RET_K, 0, 0, SECCOMP_RET_ERRNO | EPERM),
    ]
    prog.append(_insn(_LD_W_ABS, 0, 0, 0))
    at = len(prog)
    prog.append(_insn(_JGE_K, errno_at - at - 1, 0, X32_SYSCALL_BIT))
    for nr in native:
        at = len(prog)
        prog.append(_insn(_JEQ_K, errno_at - at - 1, 0, nr))
    prog.append(_insn(_RET_K, 0, 0, SECCOMP_RET_ALLOW))
    assert len(prog) == compat_start
    prog.append(_insn(_LD_W_ABS, 0, 0, 0))
    for nr in compat:
        at = len(prog)
        prog.append(_insn(_JEQ_K, errno_at - at - 1, 0, nr))
    assert len(prog) == allow_at
    prog.append(_insn(_RET_K, 0, 0, SECCOMP_RET_ALLOW))
    prog.append(_insn(_RET_K, 0, 0, SECCOMP_RET_ERRNO | EPERM))
    return b"".join(prog)


def seccomp_fd(program: bytes) -> int:
    """A fresh fd holding ``program`` from offset 0 (bwrap reads it to the end)."""
    fd = os.memfd_create("vmcraft-seccomp", 0)
    os.write(fd, program)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


# -- the sandboxes -----------------------------------------------------------

CAPS = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SYS_CHROOT",
)
"""What dpkg's maintainer scripts, grub-install and the initramfs tools need as root."""


def bwrap_argv(
    root: Path,
    dev: Path,
    argv: Sequence[str],
    *,
    userns: bool,
    seccomp: int | None,
    caps: Sequence[str] = CAPS,
    extra: Sequence[str] = (),
) -> list[str]:
    """The strict bwrap command line for ``argv`` in ``root`` with ``dev`` as its /dev."""
    cmd = ["bwrap"]
    if userns:
        cmd += ["--unshare-user", "--uid", "0", "--gid", "0"]
    cmd += [
        "--unshare-pid",
        "--unshare-net",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--hostname",
        "guest",
        "--die-with-parent",
        "--new-session",
        "--bind",
        os.fspath(root),
        "/",
        "--proc",
        "/proc",
        # bwrap 0.8 leaves /proc/sys (core_pattern!) and /proc/sysrq-trigger
        # writable for uid 0, with or without a user namespace.
        "--remount-ro",
        "/proc",
        "--ro-bind",
        "/sys",
        "/sys",
        "--dev-bind",
        os.fspath(dev),
        "/dev",
        "--tmpfs",
        "/run",
        *extra,
        "--cap-drop",
        "ALL",
    ]
    for cap in caps:
        cmd += ["--cap-add", cap]
    if seccomp is not None:
        cmd += ["--seccomp", str(seccomp)]
    return [*cmd, "--", *argv]


def run_quiet(argv: Sequence[str], *, pass_fds: Sequence[int] = ()) -> None:
    """Spawn as ``run_in_root`` does (pipes, communicate), so the cases compare with command()."""
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=guest_environment(),
        encoding="utf-8",
        errors="replace",
        pass_fds=pass_fds,
        start_new_session=True,
        close_fds=True,
    )
    _, stderr = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} exited {proc.returncode}: {stderr.strip()[-300:]}")


def run_bwrap(
    root: Path, dev: Path, *, userns: bool, program: bytes | None, minimal: bool = False
) -> None:
    if minimal:
        run_quiet(["bwrap", "--bind", os.fspath(root), "/", "--", *TRUE])
        return
    fd = seccomp_fd(program) if program is not None else None
    try:
        argv = bwrap_argv(root, dev, TRUE, userns=userns, seccomp=fd)
        run_quiet(argv, pass_fds=() if fd is None else (fd,))
    finally:
        if fd is not None:
            os.close(fd)


NSPAWN = [
    "systemd-nspawn",
    "--quiet",
    "--register=no",
    "--keep-unit",
    "--private-network",
]


def run_nspawn(root: Path) -> None:
    run_quiet([*NSPAWN, "-D", os.fspath(root), *TRUE])


def run_unshare_r(root: Path) -> None:
    run_quiet(
        [
            "unshare",
            "--fork",
            "--pid",
            "--mount-proc",
            "--net",
            "--ipc",
            "--uts",
            "--kill-child",
            "-R",
            os.fspath(root),
            *TRUE,
        ]
    )


# The hand-written sandbox: namespaces and binds in the forked child before exec.
_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWNET = 0x40000000


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _prctl(option: int, arg: int | ctypes.c_void_p = 0) -> None:
    if _libc.prctl(option, arg, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), f"prctl({option})")


def hand_preexec(root: Path, dev: Path, program: bytes) -> Callable[[], None]:
    buf = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.cast(buf, ctypes.c_void_p))

    def pre() -> None:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        syscalls.unshare(
            syscalls.CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWCGROUP
        )
        syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
        sys_dir = os.fspath(root / "sys")
        syscalls.mount("/sys", sys_dir, None, syscalls.MS_BIND | syscalls.MS_REC)
        syscalls.mount(
            None,
            sys_dir,
            None,
            syscalls.MS_BIND | syscalls.MS_REMOUNT | syscalls.MS_RDONLY,
        )
        syscalls.mount(os.fspath(dev), os.fspath(root / "dev"), None, syscalls.MS_BIND)
        # The seccomp filter is loaded with the base list only: unshare(1)
        # below still has to mount /proc in the new PID namespace.
        if _libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), "seccomp")

    return pre


def hand_argv(root: Path, argv: Sequence[str], caps: Sequence[str] = CAPS) -> list[str]:
    bounding = ",".join(["-all", *(f"+{c.removeprefix('CAP_').lower()}" for c in caps)])
    return [
        "unshare",
        "--fork",
        "--pid",
        f"--mount-proc={root / 'proc'}",
        "--kill-child",
        "--",
        "setpriv",
        "--no-new-privs",
        f"--bounding-set={bounding}",
        "--",
        "chroot",
        os.fspath(root),
        *argv,
    ]


def run_hand(root: Path, dev: Path, program: bytes) -> None:
    proc = subprocess.Popen(
        hand_argv(root, TRUE),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=guest_environment(),
        encoding="utf-8",
        errors="replace",
        preexec_fn=hand_preexec(root, dev, program),  # noqa: PLW1509 - the point of the case
        close_fds=True,
    )
    _, stderr = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(
            f"hand-written sandbox exited {proc.returncode}: {stderr.strip()[-300:]}"
        )


# -- the run -------------------------------------------------------------------


@contextmanager
def guest_dev() -> Iterator[Path]:
    """A host-made tmpfs holding the guest-only /dev (no block devices for a plain root)."""
    with tempfile.TemporaryDirectory(prefix="vmcraft-bench-dev-") as tmp:
        syscalls.mount("tmpfs", tmp, "tmpfs", syscalls.MS_NOSUID | syscalls.MS_NOEXEC, "mode=0755")
        try:
            fd = os.open(tmp, os.O_PATH | os.O_DIRECTORY)
            try:
                devtree.populate(fd, ())
            finally:
                os.close(fd)
            yield Path(tmp)
        finally:
            syscalls.umount(tmp, syscalls.MNT_DETACH)


@contextmanager
def nspawn_run_dir() -> Iterator[None]:
    """nspawn refuses to clean its propagation directory on a disk /run: give it a tmpfs."""
    path = Path("/run/systemd/nspawn")
    made = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    syscalls.mount("tmpfs", os.fspath(path), "tmpfs", syscalls.MS_NOSUID, "mode=0755")
    try:
        yield
    finally:
        syscalls.umount(os.fspath(path), syscalls.MNT_DETACH)
        if made:
            path.rmdir()


def measure(runs: int) -> dict[str, list[float]]:
    """Seconds per call of each case, interleaved round by round."""
    strict = seccomp_bpf(BLOCKED_SYSCALLS | MOUNT_SYSCALLS)
    base = seccomp_bpf(BLOCKED_SYSCALLS)
    have_nspawn = shutil.which("systemd-nspawn") is not None
    with overlay_root() as root, guest_dev() as dev, nspawn_run_dir():
        g = VMCraft.from_root(root, mount_check="mountpoint")
        gi = VMCraft.from_root(root, mount_check="mountinfo")
        cases: dict[str, Callable[[], object]] = {
            "command (bare chroot)": lambda: g.command(TRUE),
            "command_with_mounts, mountpoint -q check": lambda: g.command_with_mounts(TRUE),
            "command_with_mounts, mountinfo check": lambda: gi.command_with_mounts(TRUE),
            "bwrap strict, no userns, seccomp": lambda: run_bwrap(
                root, dev, userns=False, program=strict
            ),
            "bwrap strict, --unshare-user, seccomp": lambda: run_bwrap(
                root, dev, userns=True, program=strict
            ),
            "bwrap strict, no userns, no seccomp": lambda: run_bwrap(
                root, dev, userns=False, program=None
            ),
            "bwrap minimal (--bind ROOT / only)": lambda: run_bwrap(
                root, dev, userns=False, program=None, minimal=True
            ),
            "unshare -fpn --mount-proc -iu --kill-child -R ROOT": lambda: run_unshare_r(root),
            "hand: preexec ns+binds+seccomp, unshare -p, setpriv, chroot": lambda: run_hand(
                root, dev, base
            ),
        }
        if have_nspawn:
            cases["systemd-nspawn --register=no --private-network"] = lambda: run_nspawn(root)
        samples: dict[str, list[float]] = {name: [] for name in cases}
        for fn in cases.values():  # warm-up: page cache, imports
            fn()
        for _ in range(runs):
            for name, fn in cases.items():
                start = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - start)
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50, help="rounds (each case once a round)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--print-argv", action="store_true", help="print the strict bwrap argv and exit"
    )
    args = parser.parse_args()
    if args.print_argv:
        print(" ".join(bwrap_argv(Path("ROOT"), Path("DEV"), TRUE, userns=False, seccomp=3)))
        return 0
    if args.runs < 30:
        parser.error("--runs must be at least 30")
    if shutil.which("bwrap") is None:
        print("bwrap is missing: apt-get install -y bubblewrap", file=sys.stderr)
        return 2
    isolate("sandboxes")

    samples = measure(args.runs)
    med = {name: statistics.median(vals) * 1000 for name, vals in samples.items()}
    base = med["command (bare chroot)"]
    version = subprocess.run(
        ["bwrap", "--version"], check=False, capture_output=True, text=True
    ).stdout
    print(f"median of {args.runs} runs, {os.cpu_count()} cores, kernel {os.uname().release}")
    print(f"{version.strip()}; the 3 ms target is over today's command()")
    print()
    print("| case | median ms | over bare chroot ms |")
    print("|---|---:|---:|")
    for name, ms in med.items():
        print(f"| {name} | {ms:.2f} | {ms - base:+.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"runs": args.runs, "median_ms": med}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
