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


def root_argument(line: str) -> str | None:
    for word in line.split():
        if word.startswith("root="):
            return word.removeprefix("root=")
    return None


def check_grub_cfg(text: str, kernels: tuple[str, ...], *, lvm_names: set[str]) -> list[Check]:
    """Does this grub.cfg boot every installed kernel, by a name the VM will have?"""
    checks = []
    lines = [ln.strip() for ln in text.splitlines()]
    checks.append(
        Check("grub.cfg is not empty", any(ln and not ln.startswith("#") for ln in lines))
    )
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
        ctx.require_journal(self.step).keep(ctx.layout.grub_cfg, self.step.value)
        report.attempts.append(
            run_guest_command(
                ctx.g, ctx.layout.bootloader_cmd, mounts=True, env=ctx.env, timeout=ctx.timeout
            )
        )

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
