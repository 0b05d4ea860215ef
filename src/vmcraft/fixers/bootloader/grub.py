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
from collections.abc import Iterable, Sequence
from typing import Protocol

from vmcraft.errors import CommandError
from vmcraft.log import get_logger
from vmcraft.report import Attempt, StepReport

log = get_logger(__name__)

GRUB_COMMANDS: frozenset[str] = frozenset(
    {
        "grub2-mkconfig",
        "grub-mkconfig",
        "update-grub",
        "update-grub2",
        "grub2-install",
        "grub-install",
        "grub2-probe",
        "grub-probe",
    }
)


class GuestHandle(Protocol):
    """The least a handle must offer: libguestfs's ``command_quiet`` shape."""

    def command_quiet(self, cmd: list[str]) -> str: ...


def is_grub_command(cmd: Sequence[str]) -> bool:
    """True for the eight bootloader commands, by base name (``/usr/sbin/grub2-mkconfig``)."""
    return bool(cmd) and posixpath.basename(cmd[0]) in GRUB_COMMANDS


def _failure_text(error: RuntimeError) -> str:
    if isinstance(error, CommandError):
        return (error.stderr.strip() or error.stdout.strip() or str(error)).strip()
    return str(error)


def run_guest_command(g: GuestHandle, cmd: Sequence[str]) -> Attempt:
    """Run one command the way its kind needs; never raises for its failure."""
    argv = list(cmd)
    with_mounts = False
    try:
        if is_grub_command(argv) and hasattr(g, "command_with_mounts"):
            with_mounts = True
            out = g.command_with_mounts(argv, quiet=True)
        else:
            out = g.command_quiet(argv)
    except RuntimeError as error:  # VMCraftError, and libguestfs's own
        attempt = Attempt(cmd=argv, ok=False, out=_failure_text(error))
    else:
        attempt = Attempt(cmd=argv, ok=True, out=str(out).strip())
    log.info("grub.attempt", cmd=argv, ok=attempt.ok, with_mounts=with_mounts)
    return attempt


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
