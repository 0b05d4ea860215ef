"""The probes behind ``vmcraft doctor``, each asking the host what vmcraft itself would.

A probe changes nothing on the host. It reads /proc and /sys, opens a
control device and closes it again (``/dev/loop-control`` without asking it
for a free device, which would create one; ``/dev/fuse``;
``/dev/mapper/control``), finds programs as :func:`vmcraft.host.host_tool`
does, and asks a few for their version. Two things can only be known by
trying, and are tried where nothing outlives the trial:

- the sandbox: bwrap runs ``true`` with the sandbox's own command line and
  syscall filter (its root bound read-only); bwrap's namespaces die with it;
- idmapped mounts: ``idmap_trial.py`` in a child process, in a private
  mount namespace, on a detached tmpfs (see there).

Each probe's ``fallback`` says what the code does without the feature,
and is kept next to the code it describes: attach.py, qsd.py, nbd.py,
lvm.py, mount/guest.py, sandbox/. The probes run in threads: most of the
time is spent waiting on a child process, so the whole report takes
about as long as its slowest probe.
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from vmcraft.doctor.report import Feature, HostReport, Probe, Severity
from vmcraft.errors import HostFeatureError, HostToolTimeoutError, last_line
from vmcraft.host import SYSTEM_PATH, run_tool
from vmcraft.sandbox import seccomp
from vmcraft.sandbox.bwrap import Sandbox

TRIAL_TIMEOUT = 10.0
"""Seconds a trial run (bwrap, the idmap child, a --version) may take before it counts as failed."""

IDMAP_TRIAL = Path(__file__).with_name("idmap_trial.py")

OVMF_FILES = (Path("/usr/share/OVMF/OVMF_CODE_4M.fd"), Path("/usr/share/OVMF/OVMF_VARS_4M.fd"))
"""The firmware tests/boot.py boots UEFI guests with (Debian's ovmf package)."""


# -- what the probes read ---------------------------------------------------


def kernel_version(release: str | None = None) -> tuple[int, int]:
    """(major, minor) of the running kernel, from a release like ``6.18.44-fc-v1147``."""
    text = release if release is not None else os.uname().release
    parts = text.split("-", 1)[0].split(".")
    numbers = [int("".join(ch for ch in part if ch.isdigit()) or 0) for part in parts[:2]]
    padded = [*numbers, 0, 0]
    return padded[0], padded[1]


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _misc_devices() -> set[str]:
    """Names in /proc/misc: the misc drivers the kernel has (built in or loaded)."""
    text = _read("/proc/misc") or ""
    return {line.split()[1] for line in text.splitlines() if len(line.split()) == 2}


def _filesystems() -> set[str]:
    text = _read("/proc/filesystems") or ""
    return {line.split()[-1] for line in text.splitlines() if line.strip()}


def _open_device(path: str) -> str | None:
    """None if ``path`` opens read-write (then it is closed at once), else why not."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return exc.strerror or str(exc)
    os.close(fd)
    return None


def _which(name: str) -> str | None:
    """Where :func:`vmcraft.host.host_tool` would find ``name``, or None."""
    return shutil.which(name) or shutil.which(name, path=SYSTEM_PATH)


def _first_line(argv: list[str]) -> str:
    """The first line a tool prints for ``--version`` (its own or its error)."""
    try:
        done = run_tool(argv, capture_output=True, text=True, timeout=TRIAL_TIMEOUT)
    except (OSError, HostToolTimeoutError) as exc:
        return f"{argv[0]} did not answer: {exc}"
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0].strip() if lines else "no version printed"


def _is_root() -> bool:
    return os.geteuid() == 0


# -- the probes, in the order the report lists them -------------------------


def probe_root() -> Probe:
    uid = os.geteuid()
    return Probe(
        Feature.ROOT,
        uid == 0,
        Severity.REQUIRED,
        f"running as uid {uid}",
        "nothing can be attached, mounted or run in a guest: every command but doctor "
        "and conformance exits 4",
        "geteuid()",
    )


def probe_loop() -> Probe:
    fallback = (
        "no image can be attached: every image, raw or not, goes onto a loop device "
        "(qcow2 and the other formats too, on top of their FUSE or nbd view)"
    )
    if not os.path.exists("/dev/loop-control"):
        listed = "loop-control" in _misc_devices()
        why = "listed in /proc/misc, but no node" if listed else "the loop driver is not loaded"
        return Probe(
            Feature.LOOP,
            False,
            Severity.REQUIRED,
            f"no /dev/loop-control ({why})",
            fallback,
            "/dev/loop-control, /proc/misc",
        )
    if not _is_root():
        return Probe(
            Feature.LOOP,
            "loop-control" in _misc_devices(),
            Severity.REQUIRED,
            "/dev/loop-control exists (not opened: that needs root)",
            fallback,
            "/dev/loop-control, /proc/misc",
        )
    refused = _open_device("/dev/loop-control")
    attached = len(list(Path("/sys/block").glob("loop*/loop/backing_file")))
    return Probe(
        Feature.LOOP,
        refused is None,
        Severity.REQUIRED,
        f"/dev/loop-control opens; {attached} loop devices in use"
        if refused is None
        else f"/dev/loop-control does not open: {refused}",
        fallback,
        "open(/dev/loop-control)",
    )


def probe_loop_configure() -> Probe:
    major, minor = kernel_version()
    return Probe(
        Feature.LOOP_CONFIGURE,
        (major, minor) >= (5, 8),
        Severity.DEGRADED,
        f"Linux {major}.{minor} {'>=' if (major, minor) >= (5, 8) else '<'} 5.8",
        "loop devices are set up with LOOP_SET_FD then LOOP_SET_STATUS64, the flags read "
        "back; a SIGKILL between the two could leave one attached without autoclear",
        "kernel version (vmcraft learns it for sure at its first attach)",
    )


def probe_qemu_img() -> Probe:
    tool = _which("qemu-img")
    return Probe(
        Feature.QEMU_IMG,
        tool is not None,
        Severity.REQUIRED,
        _first_line([tool, "--version"]) if tool else "not on PATH (Debian package qemu-utils)",
        "no image can be added: each is vetted with 'qemu-img info' (format, backing "
        "file, extents) first",
        "PATH, --version",
    )


def probe_blkid() -> Probe:
    tool = _which("blkid")
    return Probe(
        Feature.BLKID,
        tool is not None,
        Severity.REQUIRED,
        tool or "not on PATH (Debian package util-linux)",
        "no image can be launched: every attached device is identified with blkid",
        "PATH",
    )


def probe_partx() -> Probe:
    tool = _which("partx")
    return Probe(
        Feature.PARTX,
        tool is not None,
        Severity.DEGRADED,
        tool or "not on PATH (Debian package util-linux)",
        "partition nodes come only from the kernel's own scan (BLKRRPART); where that "
        "makes none, as on hosts without udev, attaching fails naming partx",
        "PATH",
    )


def probe_fuse() -> Probe:
    fallback = (
        "raw images need none; the other formats (qcow2, vmdk, vhdx, vpc, vdi, qed) go "
        "through qemu-nbd when /dev/fuse does not exist and /dev/nbd0 does, and are refused "
        "otherwise"
    )
    if not os.path.exists("/dev/fuse"):
        return Probe(Feature.FUSE, False, Severity.DEGRADED, "no /dev/fuse", fallback, "/dev/fuse")
    if not _is_root():
        return Probe(
            Feature.FUSE,
            "fuse" in _misc_devices(),
            Severity.DEGRADED,
            "/dev/fuse exists (not opened: not root)",
            fallback,
            "/dev/fuse, /proc/misc",
        )
    refused = _open_device("/dev/fuse")
    return Probe(
        Feature.FUSE,
        refused is None,
        Severity.DEGRADED,
        "/dev/fuse opens"
        if refused is None
        else f"/dev/fuse exists but does not open ({refused}): qemu-storage-daemon's "
        "export will fail, and qemu-nbd is not tried while the node exists",
        fallback,
        "open(/dev/fuse)",
    )


def probe_qemu_storage_daemon() -> Probe:
    tool = _which("qemu-storage-daemon")
    return Probe(
        Feature.QEMU_STORAGE_DAEMON,
        tool is not None,
        Severity.DEGRADED,
        _first_line([tool, "--version"])
        if tool
        else "not on PATH (Debian package qemu-system-common)",
        "raw images need none; where /dev/fuse exists, attaching any other format fails "
        "naming qemu-system-common (qemu-nbd is used only where /dev/fuse does not exist)",
        "PATH, --version",
    )


def probe_nbd() -> Probe:
    node = os.path.exists("/dev/nbd0") and os.path.isdir("/sys/block/nbd0")
    tool = _which("qemu-nbd")
    if node:
        detail = f"/dev/nbd0; qemu-nbd {tool or 'not on PATH (qemu-utils)'}"
    elif os.path.isdir("/sys/module/nbd"):
        detail = "the nbd module is loaded, but there is no /dev/nbd0"
    else:
        detail = "no nbd module (vmcraft does not load modules)"
    return Probe(
        Feature.NBD,
        node and tool is not None,
        Severity.OPTIONAL,
        detail,
        "not needed while FUSE works: qcow2 and the other formats go through "
        "qemu-storage-daemon's FUSE export; qemu-nbd is only the path where /dev/fuse is missing",
        "/dev/nbd0, /sys/block/nbd0, /sys/module/nbd",
    )


def probe_device_mapper() -> Probe:
    listed = "device-mapper" in _misc_devices()
    if not os.path.exists("/dev/mapper/control"):
        detail = "no /dev/mapper/control" + (
            " (device-mapper is in /proc/misc)" if listed else " and no dm driver"
        )
        available = False
    elif not _is_root():
        detail = "/dev/mapper/control exists (not opened: not root)" + (
            "" if listed else "; no device-mapper in /proc/misc"
        )
        available = listed
    else:
        refused = _open_device("/dev/mapper/control")
        available = refused is None
        detail = (
            "/dev/mapper/control opens"
            if refused is None
            else f"/dev/mapper/control does not open: {refused}"
            + ("" if listed else " (no device-mapper in /proc/misc)")
        )
    return Probe(
        Feature.DEVICE_MAPPER,
        available,
        Severity.DEGRADED,
        detail,
        "LVM: a linear LV is reached by a loop device at its offset in its PV; "
        "striped, mirrored, thin or scattered LVs are listed as unreachable; LUKS devices "
        "cannot be opened (cryptsetup_open refuses)",
        "open(/dev/mapper/control), /proc/misc",
    )


def _tool_probe(
    feature: Feature, tool: str, package: str, severity: Severity, fallback: str
) -> Probe:
    found = _which(tool)
    return Probe(
        feature,
        found is not None,
        severity,
        found or f"not on PATH (Debian package {package})",
        fallback,
        "PATH",
    )


def probe_lvm() -> Probe:
    return _tool_probe(
        Feature.LVM,
        "lvm",
        "lvm2",
        Severity.DEGRADED,
        "a guest with LVM physical volumes cannot be launched: the error names lvm2 "
        "(guests without LVM never call it)",
    )


def probe_cryptsetup() -> Probe:
    return _tool_probe(
        Feature.CRYPTSETUP,
        "cryptsetup",
        "cryptsetup-bin",
        Severity.OPTIONAL,
        "cryptsetup_open on a LUKS device fails naming cryptsetup-bin; nothing else uses it",
    )


def probe_vfat() -> Probe:
    found = _filesystems()
    available = "vfat" in found
    return Probe(
        Feature.VFAT,
        available,
        Severity.DEGRADED,
        "vfat in /proc/filesystems" if available else "no vfat in /proc/filesystems",
        "a FAT ESP is staged in a private tmpfs with mtools and written back at unmount; "
        "fix-boot --reinstall-grub on a UEFI guest is refused (grub-install cannot use the "
        "staged ESP) and the fallback loader \\EFI\\BOOT\\BOOT<ARCH>.EFI is written instead",
        "/proc/filesystems (vmcraft does not load modules)",
    )


def probe_mtools() -> Probe:
    wanted = ("mcopy", "mdir", "mmd", "mdel", "mrd")
    missing = [tool for tool in wanted if _which(tool) is None]
    return Probe(
        Feature.MTOOLS,
        not missing,
        Severity.DEGRADED,
        f"{', '.join(wanted)} on PATH"
        if not missing
        else f"{', '.join(missing)} not on PATH (Debian package mtools)",
        "needed only where the kernel has no vfat: there a FAT filesystem (the ESP) cannot "
        "be mounted, and the error names mtools",
        "PATH",
    )


def probe_bubblewrap() -> Probe:
    fallback = (
        "guest commands on disk images run in the bubblewrap sandbox by default and fail "
        "without it; --isolation host (VMCraft(isolation='host')) runs them in the enhanced "
        "chroot with the host's /proc, /dev and /sys instead"
    )
    tool = _which("bwrap")
    if tool is None:
        return Probe(
            Feature.BUBBLEWRAP,
            False,
            Severity.DEGRADED,
            "bwrap not on PATH (Debian package bubblewrap)",
            fallback,
            "PATH",
        )
    version = _first_line([tool, "--version"])
    if not _is_root():
        return Probe(
            Feature.BUBBLEWRAP,
            True,
            Severity.DEGRADED,
            f"{version} (not tried: the sandbox is run as root)",
            fallback,
            "PATH, --version",
        )
    return _sandbox_trial(version, fallback)


def _sandbox_trial(version: str, fallback: str) -> Probe:
    """Run ``true`` in the sandbox as vmcraft would, with the guest root replaced by the
    host's, bound read-only."""
    method = "ran true in the sandbox's own bwrap command line and syscall filter"
    try:
        fd = seccomp.program_fd()
    except HostFeatureError as exc:
        return Probe(Feature.BUBBLEWRAP, False, Severity.DEGRADED, str(exc), fallback, method)
    try:
        argv = Sandbox("/").argv(["true"], seccomp_fd=fd)
        root = argv.index("--bind")
        argv[root] = "--ro-bind"
        start = time.perf_counter()
        try:
            done = run_tool(
                argv, pass_fds=(fd,), capture_output=True, text=True, timeout=TRIAL_TIMEOUT
            )
        except HostToolTimeoutError:
            return Probe(
                Feature.BUBBLEWRAP,
                False,
                Severity.DEGRADED,
                f"{version}; the trial did not finish within {TRIAL_TIMEOUT:g} s",
                fallback,
                method,
            )
        took = (time.perf_counter() - start) * 1000
    finally:
        os.close(fd)
    if done.returncode != 0:
        reason = last_line(done.stderr, default=f"exit status {done.returncode}")
        return Probe(
            Feature.BUBBLEWRAP,
            False,
            Severity.DEGRADED,
            f"{version}; the sandbox does not start: {reason}",
            fallback,
            method,
        )
    return Probe(
        Feature.BUBBLEWRAP,
        True,
        Severity.DEGRADED,
        f"{version}; the sandbox starts ({took:.0f} ms)",
        fallback,
        method,
    )


def probe_seccomp() -> Probe:
    status = _read("/proc/self/status") or ""
    fields = {
        key.strip(): value.strip()
        for key, _, value in (line.partition(":") for line in status.splitlines())
    }
    machine = platform.machine()
    fallback = (
        "bwrap --seccomp fails, and with it every sandboxed guest command; --isolation host "
        "runs guest commands without the sandbox"
    )
    if machine != "x86_64":
        return Probe(
            Feature.SECCOMP,
            False,
            Severity.DEGRADED,
            f"the sandbox's syscall filter knows x86_64 only, not {machine}",
            "sandboxed commands fail with SandboxUnavailableError; --isolation host runs "
            "guest commands without the sandbox",
            "platform.machine()",
        )
    if "Seccomp" not in fields:
        return Probe(
            Feature.SECCOMP,
            False,
            Severity.DEGRADED,
            "no Seccomp field in /proc/self/status (kernel without CONFIG_SECCOMP)",
            fallback,
            "/proc/self/status",
        )
    filters = "with filters" if "Seccomp_filters" in fields else "filters not shown (Linux < 5.9)"
    return Probe(
        Feature.SECCOMP,
        True,
        Severity.DEGRADED,
        f"Seccomp field present, {filters}; x86_64",
        fallback,
        "/proc/self/status, platform.machine()",
    )


def probe_user_namespaces() -> Probe:
    limit = (_read("/proc/sys/user/max_user_namespaces") or "").strip()
    clone = (_read("/proc/sys/kernel/unprivileged_userns_clone") or "").strip()
    available = limit.isdigit() and int(limit) > 0
    detail = f"max_user_namespaces {limit or 'absent'}"
    if clone:
        detail += f", unprivileged_userns_clone {clone}"
    return Probe(
        Feature.USER_NAMESPACES,
        available,
        Severity.OPTIONAL,
        detail,
        "not used by vmcraft: the sandbox runs as host root with its capabilities dropped "
        "and no user namespace (docs/sandbox.md); only the idmapped-mount probe needs one",
        "/proc/sys/user/max_user_namespaces, /proc/sys/kernel/unprivileged_userns_clone",
    )


def probe_idmapped_mounts() -> Probe:
    major, minor = kernel_version()
    fallback = (
        "not used by vmcraft: mapping the guest's root to an unprivileged range would need "
        "them on every guest filesystem, which the sandbox does not do (docs/sandbox.md)"
    )
    if (major, minor) < (5, 12):
        return Probe(
            Feature.IDMAPPED_MOUNTS,
            False,
            Severity.OPTIONAL,
            f"Linux {major}.{minor} < 5.12",
            fallback,
            "kernel version",
        )
    if (major, minor) < (6, 3) or not _is_root():
        why = "tmpfs takes idmappings from 6.3" if _is_root() else "the trial needs root"
        return Probe(
            Feature.IDMAPPED_MOUNTS,
            True,
            Severity.OPTIONAL,
            f"Linux {major}.{minor} >= 5.12 (not tried: {why})",
            fallback,
            "kernel version",
        )
    method = (
        "mount_setattr(MOUNT_ATTR_IDMAP) on a detached tmpfs, in a child's private mount namespace"
    )
    try:
        done = run_tool(
            [sys.executable, "-I", "-S", os.fspath(IDMAP_TRIAL)],
            capture_output=True,
            text=True,
            timeout=TRIAL_TIMEOUT,
        )
    except (OSError, HostToolTimeoutError) as exc:
        return Probe(
            Feature.IDMAPPED_MOUNTS,
            False,
            Severity.OPTIONAL,
            f"the trial failed: {exc}",
            fallback,
            method,
        )
    answer = last_line(done.stdout, done.stderr, default=f"exit status {done.returncode}")
    return Probe(
        Feature.IDMAPPED_MOUNTS,
        done.returncode == 0,
        Severity.OPTIONAL,
        f"Linux {major}.{minor}: the kernel took an idmapping"
        if done.returncode == 0
        else f"Linux {major}.{minor}: refused: {answer}",
        fallback,
        method,
    )


def probe_e2fsprogs() -> Probe:
    missing = [tool for tool in ("e2fsck", "debugfs", "mkfs.ext4") if _which(tool) is None]
    return Probe(
        Feature.E2FSPROGS,
        not missing,
        Severity.OPTIONAL,
        "e2fsck, debugfs, mkfs.ext4 on PATH"
        if not missing
        else f"{', '.join(missing)} not on PATH (Debian package e2fsprogs)",
        "the e2fsck call fails naming e2fsprogs, and the test guests that need debugfs or "
        "mkfs.ext4 cannot be built; nothing else uses them",
        "PATH",
    )


def probe_systemd_nspawn() -> Probe:
    return _tool_probe(
        Feature.SYSTEMD_NSPAWN,
        "systemd-nspawn",
        "systemd-container",
        Severity.OPTIONAL,
        "not used by vmcraft; benchmarks/bench_sandbox.py measures the sandbox beside it "
        "only where it is installed",
    )


def probe_qemu_system() -> Probe:
    return _tool_probe(
        Feature.QEMU_SYSTEM,
        "qemu-system-x86_64",
        "qemu-system-x86",
        Severity.OPTIONAL,
        "vmcraft never boots a guest; the boot tests and benchmarks (tests/boot.py, "
        "software emulation) cannot run",
    )


def probe_ovmf() -> Probe:
    missing = [os.fspath(path) for path in OVMF_FILES if not path.is_file()]
    return Probe(
        Feature.OVMF,
        not missing,
        Severity.OPTIONAL,
        ", ".join(os.fspath(p) for p in OVMF_FILES)
        if not missing
        else f"missing {', '.join(missing)} (Debian package ovmf)",
        "UEFI boot tests cannot run (BIOS ones can); vmcraft itself never needs firmware",
        "files",
    )


def probe_debootstrap() -> Probe:
    return _tool_probe(
        Feature.DEBOOTSTRAP,
        "debootstrap",
        "debootstrap",
        Severity.OPTIONAL,
        "test guests and the demo guest cannot be built; images already cached under "
        "/var/cache/vmcraft are still used",
    )


PROBES: tuple[Callable[[], Probe], ...] = (
    probe_root,
    probe_loop,
    probe_loop_configure,
    probe_qemu_img,
    probe_blkid,
    probe_partx,
    probe_fuse,
    probe_qemu_storage_daemon,
    probe_nbd,
    probe_device_mapper,
    probe_lvm,
    probe_cryptsetup,
    probe_vfat,
    probe_mtools,
    probe_bubblewrap,
    probe_seccomp,
    probe_user_namespaces,
    probe_idmapped_mounts,
    probe_e2fsprogs,
    probe_systemd_nspawn,
    probe_qemu_system,
    probe_ovmf,
    probe_debootstrap,
)
"""Every probe, in report order (the order docs/cli.md lists them)."""


def check_host() -> HostReport:
    """Probe this host for everything vmcraft uses, changing nothing on it.

    Safe as any user: as non-root the probes that need root (opening the
    control devices, the sandbox and idmap trials) report what they could
    see, and the report is unusable because root itself is missing.
    """
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="vmcraft-doctor") as pool:
        futures = [pool.submit(probe) for probe in PROBES]
        probes = tuple(future.result() for future in futures)
    return HostReport(
        probes=probes,
        kernel=os.uname().release,
        machine=platform.machine(),
        elapsed_ms=round((time.perf_counter() - start) * 1000, 1),
    )
