"""GRUB commands, routed through the enhanced chroot.

The eight commands below read /proc/self/mountinfo, probe block devices
under /dev and walk /sys; in a bare chroot they fail or write a config that
does not boot. They therefore go through ``command_with_mounts`` when the
handle has it. Handles without it (an older VMCraft, libguestfs, whose
appliance already has the pseudo-filesystems) are driven through
``command_quiet``, so one fixer serves them all.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable, Sequence

from vmcraft.disks.names import dm_name
from vmcraft.errors import GuestFileError
from vmcraft.fixers.attempts import GRUB_COMMANDS, GuestHandle, is_grub_command, run_guest_command
from vmcraft.fixers.step import Finding, RepairContext, Step
from vmcraft.report import Attempt, Check, StepReport

__all__ = ["GRUB_COMMANDS", "GrubFixer", "GuestHandle", "is_grub_command", "run_guest_command"]


class GrubFixer:
    """Runs bootloader commands on a guest and keeps the report of them."""

    def __init__(self, g: GuestHandle) -> None:
        self.g = g
        self.report = StepReport()

    def run(self, cmd: Sequence[str]) -> Attempt:
        attempt = run_guest_command(self.g, cmd)
        self.report.attempts.append(attempt)
        return attempt

    def regenerate(self, candidates: Iterable[Sequence[str]]) -> StepReport:
        """Try each candidate command in turn until one succeeds.

        Guests differ in which tool they ship (``grub2-mkconfig`` on Fedora
        and SUSE, ``update-grub`` on Debian); every try is recorded.
        """
        for cmd in candidates:
            if self.run(cmd).ok:
                break
        return self.report


# -- checking what grub-mkconfig wrote -------------------------------------

# What a kernel line may name the root by: stable across hosts and hypervisors.
_STABLE_ROOT = re.compile(r"^(UUID=|PARTUUID=|LABEL=|PARTLABEL=|ZFS=|/dev/mapper/|/dev/disk/by-)")
# Names that only exist on the host that ran the tool.
_HOST_ONLY = re.compile(r"^/dev/(loop|nbd|dm-|ram|zram)")
_LVM_PATH = re.compile(r"^/dev/[^/]+/[^/]+$")
# Anywhere in grub.cfg: GRUB told to reach its files through a host's loop
# device (Debian's grub-mkconfig_lib writes `loopback loop1 /loop0p2` when
# / or /boot is on one), or a host device named at all (menu entry ids too).
_HOST_ONLY_TEXT = re.compile(r"\bloopback\b|\(loop[0-9]|/dev/(?:loop|nbd|dm-|zram)[0-9]")


def root_argument(line: str) -> str | None:
    for word in line.split():
        if word.startswith("root="):
            return word.removeprefix("root=")
    return None


def _without_kernel_root(line: str) -> str:
    if not line.startswith(("linux", "linux16", "linuxefi")):
        return line
    return " ".join(w for w in line.split() if not w.startswith("root="))


def check_grub_cfg(text: str, kernels: tuple[str, ...], *, lvm_names: set[str]) -> list[Check]:
    """Does this grub.cfg boot every installed kernel, by a name the VM will have?"""
    checks = []
    lines = [ln.strip() for ln in text.splitlines()]
    checks.append(
        Check("grub.cfg is not empty", any(ln and not ln.startswith("#") for ln in lines))
    )
    # A kernel line's root= has a check of its own, below.
    host = [
        ln
        for ln in lines
        if not ln.startswith("#") and _HOST_ONLY_TEXT.search(_without_kernel_root(ln))
    ]
    if host:
        checks.append(Check("grub.cfg names no host-only device", False, host[0]))
    if any(ln.startswith("blscfg") for ln in lines):
        checks.append(Check("grub.cfg uses BootLoaderSpec entries", True, "entries are checked"))
        return checks
    kernel_lines = [
        ln for ln in lines if ln.startswith(("linux ", "linux\t", "linux16", "linuxefi"))
    ]
    checks.append(Check("grub.cfg has kernel lines", bool(kernel_lines), f"{len(kernel_lines)}"))
    for kernel in kernels:
        found = any(f"vmlinuz-{kernel}" in ln for ln in kernel_lines)
        checks.append(Check(f"a menu entry boots {kernel}", found, "" if found else "missing"))
    for ln in kernel_lines:
        root = root_argument(ln)
        if root is None:
            checks.append(Check("kernel line names a root", False, ln))
        elif _HOST_ONLY.match(root):
            checks.append(Check("root is not a host-only device", False, f"root={root}"))
        elif not (_STABLE_ROOT.match(root) or root in lvm_names or _LVM_PATH.match(root)):
            checks.append(Check("root is named stably", False, f"root={root}"))
    if all(c.ok for c in checks):
        roots = sorted({root_argument(ln) or "" for ln in kernel_lines})
        checks.append(Check("root named by a stable name", True, ", ".join(roots)))
    return checks


def check_bls_entries(
    entries: dict[str, str], kernels: tuple[str, ...], *, lvm_names: set[str]
) -> list[Check]:
    """BootLoaderSpec entries (Fedora, RHEL 8+): one per kernel, roots named stably."""
    checks = []

    def boots(text: str, kernel: str) -> bool:
        for line in text.splitlines():
            words = line.split()
            if len(words) >= 2 and words[0] == "linux":
                return posixpath.basename(words[1]) == f"vmlinuz-{kernel}"
        return False

    for kernel in kernels:
        found = [text for text in entries.values() if boots(text, kernel)]
        checks.append(Check(f"a BLS entry boots {kernel}", bool(found)))
        for text in found:
            options = next(
                (ln.split(None, 1)[1] for ln in text.splitlines() if ln.startswith("options ")),
                "",
            )
            root = root_argument(options)
            if root and _HOST_ONLY.match(root):
                checks.append(Check("root is not a host-only device", False, f"root={root}"))
    return checks


# -- an LVM root on a host without device-mapper -----------------------------

MKCONFIGS = ("/usr/sbin/grub-mkconfig", "/usr/sbin/grub2-mkconfig")
LVM_DROPIN = "/etc/default/grub.d/zz-vmcraft-lvm.cfg"
"""Sourced by Debian's grub-mkconfig after /etc/default/grub, for one run only."""


def _dm_device(ctx: RepairContext, mountpoint: str) -> str | None:
    """The device-mapper name of the LV mounted at ``mountpoint``, or None (not an LV)."""
    for mount in ctx.g.guest_mounts():
        if mount.mountpoint != mountpoint:
            continue
        name = mount.device
        if name not in ctx.lvm_names:
            return None
        if name.startswith("/dev/mapper/"):
            return name
        vg, lv = name.removeprefix("/dev/").split("/", 1)
        return f"/dev/mapper/{dm_name(vg, lv)}"
    return None


def lvm_root_dropin(ctx: RepairContext) -> str | None:
    """What grub-mkconfig must be told when / (or /boot) is an LV, or None.

    grub-probe knows an LV only by asking device-mapper, which a sandbox (and
    a host without device-mapper, where the LV is a loop device at its
    byte range) cannot answer: it reports the loop device, and grub-mkconfig
    writes ``root=UUID=`` (which Debian's initramfs does not activate an LV
    for), menu entries named after ``/dev/loopN``, and, for a /boot on the
    LV, ``loopback loopN /loopMpK``. grub-mkconfig computes ``GRUB_DEVICE``
    and friends before it sources ``/etc/default/grub.d/*.cfg``, so a drop-in
    there sets them to what a device-mapper host computes: the LV's
    ``/dev/mapper`` name, and no filesystem UUID for the root, so that
    10_linux writes ``root=/dev/mapper/VG-LV`` as it does for an LV.
    Only for a grub-mkconfig that reads that directory (Debian's does).
    """
    root = _dm_device(ctx, "/")
    boot = (
        _dm_device(ctx, "/boot")
        if any(m.mountpoint == "/boot" for m in ctx.g.guest_mounts())
        else root
    )
    if root is None and boot is None:
        return None
    if not any(_sources_grub_d(ctx, path) for path in MKCONFIGS):
        return None
    lines = [
        "# vmcraft: for one grub-mkconfig run on a conversion host, removed after it.",
        "# grub-probe sees the LV as the host's loop device; these are the names a",
        "# host with device-mapper gives it.",
    ]
    if root is not None:
        lines += [f"GRUB_DEVICE={root}", "GRUB_DEVICE_UUID=", "GRUB_DEVICE_PARTUUID="]
    if boot is not None:
        lines.append(f"GRUB_DEVICE_BOOT={boot}")
    return "\n".join(lines) + "\n"


def _sources_grub_d(ctx: RepairContext, path: str) -> bool:
    try:
        if not ctx.g.is_file(path, followsymlinks=True):
            return False
        return b"default/grub.d/" in ctx.g.read_file(path)
    except GuestFileError:
        return False


# -- the fix-boot steps ----------------------------------------------------


class BootloaderRepair:
    """Regenerate grub.cfg with the guest's own tool when it would not boot on KVM."""

    step = Step.BOOTLOADER

    # Steps that change what grub-mkconfig reads (/etc/default/grub, the kernels).
    READS_FROM = frozenset({Step.NAMES})

    def find(self, ctx: RepairContext) -> list[Finding]:
        changed = sorted(ctx.changed_before & self.READS_FROM)
        found = (
            [
                Finding(
                    self.step,
                    "grub.cfg is generated from files this run changed",
                    "/etc/default/grub",
                    ", ".join(s.value for s in changed),
                )
            ]
            if changed
            else []
        )
        return found + [
            Finding(self.step, c.name, ctx.layout.grub_cfg, c.detail)
            for c in self.check(ctx, 0.0)
            if not c.ok
        ]

    def plan(self, ctx: RepairContext, findings: list[Finding]) -> list[tuple[str, ...]]:
        return [ctx.layout.bootloader_cmd]

    def fix(self, ctx: RepairContext, findings: list[Finding], report: StepReport) -> None:
        journal = ctx.require_journal(self.step)
        journal.keep(ctx.layout.grub_cfg, self.step.value)
        dropin = lvm_root_dropin(ctx)
        if dropin is not None:
            journal.make_dirs(posixpath.dirname(LVM_DROPIN), self.step.value)
            journal.write(LVM_DROPIN, dropin, self.step.value)
        try:
            report.attempts.append(
                run_guest_command(
                    ctx.g, ctx.layout.bootloader_cmd, mounts=True, env=ctx.env, timeout=ctx.timeout
                )
            )
        finally:
            if dropin is not None:
                journal.discard(LVM_DROPIN)

    def check(self, ctx: RepairContext, started: float) -> list[Check]:
        layout = ctx.layout
        text = ctx.text(layout.grub_cfg)
        if text is None:
            return [Check(f"{layout.grub_cfg} exists", False, "not written")]
        checks = check_grub_cfg(text, layout.kernels, lvm_names=ctx.lvm_names)
        if any(ln.strip().startswith("blscfg") for ln in text.splitlines()):
            entries = {}
            if ctx.g.is_dir("/boot/loader/entries"):
                for name in ctx.g.ls("/boot/loader/entries"):
                    entries[name] = ctx.text(f"/boot/loader/entries/{name}") or ""
            checks += check_bls_entries(entries, layout.kernels, lvm_names=ctx.lvm_names)
        return checks


class GrubInstallRepair:
    """grub-install onto the guest's own disk (BIOS) or its ESP (UEFI), only when asked.

    Offline there is nothing to read back from a boot sector; the boot of
    the repaired guest is what proves it.
    """

    step = Step.GRUB_INSTALL

    def __init__(self, command: tuple[str, ...] | None) -> None:
        self.command = command

    def find(self, ctx: RepairContext) -> list[Finding]:
        if self.command is None:
            return []
        return [Finding(self.step, "GRUB reinstall requested", detail=" ".join(self.command))]

    def plan(self, ctx: RepairContext, findings: list[Finding]) -> list[tuple[str, ...]]:
        return [self.command] if self.command else []

    def fix(self, ctx: RepairContext, findings: list[Finding], report: StepReport) -> None:
        if self.command is None:
            return
        ctx.require_journal(self.step)
        report.attempts.append(
            run_guest_command(ctx.g, self.command, mounts=True, env=ctx.env, timeout=ctx.timeout)
        )

    def check(self, ctx: RepairContext, started: float) -> list[Check]:
        return []
