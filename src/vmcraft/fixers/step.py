"""The shape every fix-boot repair step has: find, fix, and find again.

A step first *finds* what would break on KVM, read-only (``vmcraft check``
is every step's ``find`` and nothing else); with nothing found it is
skipped and changes nothing, which is what makes a second fix-boot on a
repaired guest a no-op. Otherwise it *fixes*, changing guest files only
through the run's journal, so a later failure can put them back; then the
same ``find`` runs again and every finding left is a failed check.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from vmcraft.errors import GuestFileError, VMCraftError
from vmcraft.report import Attempt, Check, Rewrite, StepReport

if TYPE_CHECKING:
    from vmcraft.fixers.journal import Journal
    from vmcraft.fixers.layout import BootLayout
    from vmcraft.handle import VMCraft
    from vmcraft.inspect.fstab import FstabEntry


class Step(enum.StrEnum):
    """The steps of fix-boot, in the order they run."""

    NAMES = "names"
    DRIVERS = "drivers"
    LVM = "lvm"
    NETWORK = "network"
    INITRAMFS = "initramfs"
    BOOTLOADER = "bootloader"
    GRUB_INSTALL = "grub_install"
    UEFI = "uefi"

    @property
    def phase(self) -> str:
        """The name progress lines show (``grub-install``)."""
        return self.value.replace("_", "-")


@dataclass(frozen=True)
class Finding:
    """One thing that would break the guest on KVM, and where it is."""

    step: Step
    what: str
    path: str | None = None
    detail: str = ""
    fixable: bool = True
    """False: the step cannot fix it and leaves it to a person (it is reported, not failed)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step.value,
            "what": self.what,
            "path": self.path,
            "detail": self.detail,
            "fixable": self.fixable,
        }


@dataclass(frozen=True)
class Device:
    """A guest block device and its ids, under the name libguestfs gives it."""

    name: str
    uuid: str | None = None
    partuuid: str | None = None
    fstype: str | None = None
    label: str | None = None


@dataclass
class RepairContext:
    """What a step sees of the guest. ``journal`` is None for a read-only look."""

    g: VMCraft
    layout: BootLayout
    fstab: list[FstabEntry]
    devices: dict[str, Device]
    """Guest device name (``/dev/sda2``, ``/dev/VG/LV``) -> its ids."""
    journal: Journal | None = None
    env: dict[str, str] = field(default_factory=dict)
    timeout: float | None = None
    lvm_names: set[str] = field(default_factory=set)
    """The guest's LVs by both of their names (``/dev/VG/LV``, ``/dev/mapper/VG-LV``)."""
    changed_before: set[Step] = field(default_factory=set)
    """Steps earlier in this run that changed the guest (an initramfs copies their files)."""

    def text(self, path: str) -> str | None:
        """A guest file as text, or None when it is not a regular file."""
        try:
            if not self.g.is_file(path, followsymlinks=True):
                return None
            return self.g.read_file(path).decode(errors="replace")
        except GuestFileError:
            return None

    def require_journal(self, step: Step) -> Journal:
        if self.journal is None:
            raise VMCraftError(f"{step.value}: a read-only look cannot change the guest")
        return self.journal

    def rewrite(
        self, report: StepReport, step: Step, path: str, new: str, rewrites: Sequence[Rewrite]
    ) -> None:
        """Replace a guest file through the journal and record the edits."""
        self.require_journal(step).write(path, new, step.value)
        report.rewrites.extend(rewrites)


class Repair(Protocol):
    """One fix-boot step."""

    step: Step

    def find(self, ctx: RepairContext) -> list[Finding]:
        """What this step would fix; read-only."""
        ...

    def plan(self, ctx: RepairContext, findings: list[Finding]) -> list[tuple[str, ...]]:
        """The guest commands ``fix`` would run (file edits are in the findings)."""
        ...

    def fix(self, ctx: RepairContext, findings: list[Finding], report: StepReport) -> None:
        """Change the guest so ``find`` finds nothing; attempts and rewrites go in ``report``."""
        ...

    def check(self, ctx: RepairContext, started: float) -> list[Check]:
        """Verify what ``fix`` produced (``started``: the wall-clock time it began)."""
        ...


def findings_as_checks(findings: list[Finding]) -> list[Check]:
    """The usual ``check``: whatever fixable ``find`` still finds has not been fixed."""
    findings = [f for f in findings if f.fixable]
    if not findings:
        return [Check("nothing left to fix", True)]
    return [Check(f.what, False, f.detail or (f.path or "")) for f in findings]


def attempt_ok(report: StepReport) -> bool:
    return not report.attempts or report.attempts[-1].ok


def record(report: StepReport, attempt: Attempt) -> bool:
    report.attempts.append(attempt)
    return attempt.ok
