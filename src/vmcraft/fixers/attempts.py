"""One command in the guest as one attempt of a repair step (the seed's report shape).

Every fixer runs its commands through :func:`run_guest_command`: commands
that need /proc, /dev and /sys (the eight GRUB commands, initramfs tools)
go through ``command_with_mounts`` when the handle has it, and through
libguestfs's ``command_quiet`` when it does not (an older VMCraft, or
libguestfs itself, whose appliance already has them). A failure becomes an
``Attempt`` with ``ok=False`` and the tool's own words, never an exception,
so the step can record it and decide.
"""

from __future__ import annotations

import posixpath
import time
from collections.abc import Sequence
from typing import Protocol

from vmcraft.errors import CommandError
from vmcraft.log import get_logger, ms_since
from vmcraft.report import Attempt

log = get_logger(__name__)

# The card's eight bootloader commands: they read mountinfo, probe /dev and
# walk /sys, so they get the pseudo-filesystems without being asked.
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


def is_grub_command(cmd: Sequence[str]) -> bool:
    """True for the eight bootloader commands, by base name (``/usr/sbin/grub2-mkconfig``)."""
    return bool(cmd) and posixpath.basename(cmd[0]) in GRUB_COMMANDS


class GuestHandle(Protocol):
    """The least a handle must offer: libguestfs's ``command_quiet`` shape."""

    def command_quiet(self, cmd: list[str]) -> str: ...


def _failure_text(error: RuntimeError) -> str:
    if isinstance(error, CommandError):
        return (error.stderr.strip() or error.stdout.strip() or str(error)).strip()
    return str(error)


def run_guest_command(
    g: GuestHandle,
    cmd: Sequence[str],
    *,
    mounts: bool | None = None,
    **options: object,
) -> Attempt:
    """Run one command the way its kind needs; never raises for its failure.

    ``mounts`` forces the choice (initramfs tools need the mounts too);
    ``options`` (``env``, ``timeout``) go to vmcraft's own handle only.
    """
    argv = list(cmd)
    start = time.perf_counter()
    with_mounts = False
    wants_mounts = is_grub_command(argv) if mounts is None else mounts
    try:
        if wants_mounts and hasattr(g, "command_with_mounts"):
            with_mounts = True
            out = g.command_with_mounts(argv, quiet=True, **options)
        else:
            out = g.command_quiet(argv, **options) if options else g.command_quiet(argv)
    except RuntimeError as error:  # VMCraftError, and libguestfs's own
        attempt = Attempt(cmd=argv, ok=False, out=_failure_text(error))
    else:
        attempt = Attempt(cmd=argv, ok=True, out=str(out).strip())
    log.info(
        "guest.attempt",
        cmd=argv,
        ok=attempt.ok,
        with_mounts=with_mounts,
        duration_ms=ms_since(start),
    )
    return attempt
