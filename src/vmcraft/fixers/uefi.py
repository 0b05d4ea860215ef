"""The removable-media fallback loader: what a UEFI guest boots from once its NVRAM is gone.

An ordinary UEFI install puts GRUB (or shim, or systemd-boot) at
``\\EFI\\<vendor>\\`` and tells the firmware with an NVRAM boot entry. The
NVRAM stays with the old hypervisor: on KVM, with fresh OVMF variables, the
firmware finds no entry and looks only for the fallback path
``\\EFI\\BOOT\\BOOT<ARCH>.EFI``; without it the guest stops in the UEFI shell.

The step copies the guest's own loader there, as virt-v2v does, rather than
running grub-install: the copy is the binary that booted the guest before,
needs no NVRAM and no FAT driver on the host (the ESP may be staged, see
``vmcraft.mount.fatstage``), and a GRUB core image finds its configuration
through the prefix built into it, wherever it sits. Where the guest boots
through shim, shim becomes ``BOOT<ARCH>.EFI`` and GRUB goes beside it (shim
loads ``grub<arch>.efi`` from its own directory), with MokManager when there
is one. A vendor ``grub.cfg`` (a stub on Fedora 34+ and RHEL 9, the real
configuration on older RHEL) is never touched; a copy of it goes beside the
fallback GRUB, which signed GRUB builds read from the directory they started
from. An existing fallback loader is left as it is.
"""

from __future__ import annotations

import hashlib
import posixpath
from dataclasses import dataclass

from vmcraft.errors import GuestFileError
from vmcraft.fixers.step import Finding, RepairContext, Step
from vmcraft.report import Check, Rewrite, StepReport

# The UEFI specification's names for the fallback loader, by the guest's architecture.
ARCH_SUFFIX = {
    "x86_64": "x64",
    "i386": "ia32",
    "aarch64": "aa64",
    "arm": "arm",
    "riscv64": "riscv64",
}


@dataclass(frozen=True)
class Copy:
    """One file of the fallback loader: where it comes from on the ESP, where it goes."""

    source: str
    target: str
    why: str


def _lookup(ctx: RepairContext, directory: str) -> dict[str, str]:
    """Names in a FAT directory by their upper case (FAT ignores case; a staged copy does not)."""
    try:
        return {name.upper(): name for name in ctx.g.ls(directory)}
    except GuestFileError:
        return {}


def _loader_dirs(ctx: RepairContext, efi: str, suffix: str) -> list[tuple[str, dict[str, str]]]:
    """Vendor directories under ``EFI`` holding a loader, the one with the GRUB config first."""
    found = []
    for upper, name in sorted(_lookup(ctx, efi).items()):
        path = f"{efi}/{name}"
        if upper == "BOOT" or not ctx.g.is_dir(path):
            continue
        names = _lookup(ctx, path)
        if any(f"{kind}{suffix}.EFI".upper() in names for kind in ("shim", "grub", "systemd-boot")):
            found.append((path, names))
    vendor_cfg = ctx.layout.efi_vendor_cfg
    found.sort(key=lambda item: vendor_cfg is None or posixpath.dirname(vendor_cfg) != item[0])
    return found


def fallback_copies(ctx: RepairContext) -> tuple[str, list[Copy]] | None:
    """The fallback loader this guest lacks, as copies of its own files; None if it has one.

    Raises :class:`LookupError` with the reason when there is nothing to copy.
    """
    esp = ctx.layout.esp
    if ctx.layout.boot_mode != "uefi" or esp is None:
        return None
    suffix = ARCH_SUFFIX.get(ctx.layout.arch)
    if suffix is None:
        raise LookupError(f"no UEFI fallback loader name for a {ctx.layout.arch} guest")
    efi_names = _lookup(ctx, esp)
    efi = f"{esp}/{efi_names.get('EFI', 'EFI')}"
    boot = f"{efi}/{_lookup(ctx, efi).get('BOOT', 'BOOT')}"
    fallback = f"BOOT{suffix.upper()}.EFI"
    if fallback in _lookup(ctx, boot):
        return None
    vendors = _loader_dirs(ctx, efi, suffix)
    if not vendors:
        raise LookupError(f"no shim, GRUB or systemd-boot loader under {efi} to copy")
    vendor, names = vendors[0]

    def have(name: str) -> str | None:
        found = names.get(name.upper())
        return f"{vendor}/{found}" if found else None

    shim, grub = have(f"shim{suffix}.efi"), have(f"grub{suffix}.efi")
    target = f"{boot}/{fallback}"
    copies: list[Copy] = []
    if shim is not None:
        copies.append(Copy(shim, target, "shim, as the fallback loader"))
        if grub is not None:
            copies.append(Copy(grub, f"{boot}/grub{suffix}.efi", "the GRUB shim starts"))
        manager = have(f"mm{suffix}.efi")
        if manager is not None:
            copies.append(Copy(manager, f"{boot}/mm{suffix}.efi", "shim's MokManager"))
    elif grub is not None:
        copies.append(Copy(grub, target, "GRUB, as the fallback loader"))
    else:
        boot_manager = have(f"systemd-boot{suffix}.efi")
        assert boot_manager is not None  # noqa: S101 - _loader_dirs found one of the three
        copies.append(Copy(boot_manager, target, "systemd-boot, as the fallback loader"))
    config = have("grub.cfg")
    if config is not None and (shim or grub):
        copies.append(Copy(config, f"{boot}/grub.cfg", "the vendor GRUB config, for signed GRUB"))
    return target, copies


def _sha(ctx: RepairContext, path: str) -> str | None:
    try:
        return hashlib.sha256(ctx.g.read_file(path)).hexdigest()
    except GuestFileError:
        return None


class UefiFallbackRepair:
    """Give a UEFI guest ``\\EFI\\BOOT\\BOOT<ARCH>.EFI``, a copy of its own loader."""

    step = Step.UEFI

    def __init__(self) -> None:
        self._copies: list[Copy] = []

    def find(self, ctx: RepairContext) -> list[Finding]:
        try:
            wanted = fallback_copies(ctx)
        except LookupError as exc:
            return [
                Finding(
                    self.step,
                    "no removable-media fallback loader, and nothing to make one from",
                    ctx.layout.esp,
                    str(exc),
                    fixable=False,
                )
            ]
        if wanted is None:
            return []
        target, copies = wanted
        return [
            Finding(
                self.step,
                "no removable-media fallback loader: with the NVRAM left behind, "
                "the firmware finds nothing to boot",
                target,
                "; ".join(f"{c.source} -> {c.target}" for c in copies),
            )
        ]

    def plan(self, ctx: RepairContext, findings: list[Finding]) -> list[tuple[str, ...]]:
        return []  # file copies only: they are in the findings

    def fix(self, ctx: RepairContext, findings: list[Finding], report: StepReport) -> None:
        journal = ctx.require_journal(self.step)
        wanted = fallback_copies(ctx)
        if wanted is None:
            return
        _, self._copies = wanted
        for copy in self._copies:
            journal.make_dirs(posixpath.dirname(copy.target), self.step.value)
            journal.write(copy.target, ctx.g.read_file(copy.source), self.step.value)
            report.rewrites.append(
                Rewrite(copy.target, before="(none)", after=f"copy of {copy.source}")
            )

    def check(self, ctx: RepairContext, started: float) -> list[Check]:
        checks = [
            Check(
                f"{c.target}: {c.why}",
                (sha := _sha(ctx, c.target)) is not None and sha == _sha(ctx, c.source),
                c.source,
            )
            for c in self._copies
        ]
        left = [f for f in self.find(ctx) if f.fixable]
        checks += [Check(f.what, False, f.path or "") for f in left]
        return checks or [Check("fallback loader present", True)]
