"""A fake kernel for the pseudo-filesystem unit tests: no root, no real mount.

:func:`install_fake_kernel` replaces what :class:`vmcraft.PseudoFSMounter`
and :class:`vmcraft.VMCraft` touch outside the process (the mount syscalls,
the mount probe, the mount table, the reaper, privilege checks and the
command runner) with recorders sharing one timeline, ``FakeKernel.events``.
The guest root stays a real directory, so :mod:`vmcraft.mount.safepath`
really opens and creates ``proc``, ``dev`` and ``sys``, and the fake mount
reads back which directory its ``/proc/self/fd/N`` target is.
"""

from __future__ import annotations

import errno
import itertools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest.mock import MagicMock

from pytest_mock import MockerFixture

from vmcraft.chroot.run import CommandResult
from vmcraft.mount import syscalls

MountHook = Callable[[str | None, str, int], None]
"""Called with (source, target relative to the root, flags) before a mount is recorded."""
UmountHook = Callable[[str, int], None]
"""Called with (target relative to the root, flags) before an unmount is recorded."""


class NoLibc:
    """Stands in for libc: a real mount(2)/umount2(2) would fail the test."""

    def mount(self, *args: object) -> int:
        raise AssertionError("a unit test reached the real mount(2)")

    def umount2(self, *args: object) -> int:
        raise AssertionError("a unit test reached the real umount2(2)")

    def unshare(self, *args: object) -> int:
        raise AssertionError("a unit test reached the real unshare(2)")


class FakeProbe:
    """A mount probe answering from the fake kernel's table of mount points."""

    def __init__(self, table: set[Path]) -> None:
        self.table = table
        self.asked: list[Path] = []

    def is_mounted(self, path: Path, *, canonical: bool = False) -> bool:
        self.asked.append(path)
        return path in self.table

    def note_mounted(self, path: Path) -> None:
        self.table.add(path)


@dataclass
class FakeKernel:
    """Records mounts, unmounts, reaps and commands in one timeline."""

    root: Path
    mount: MagicMock = field(init=False)
    umount: MagicMock = field(init=False)
    reap: MagicMock = field(init=False)
    run_in_root: MagicMock = field(init=False)
    table: set[Path] = field(default_factory=set)
    """Mount points the probes see; mounts add to it, unmounts take away."""
    events: list[tuple[Any, ...]] = field(default_factory=list)
    probes: list[FakeProbe] = field(default_factory=list)
    result: CommandResult | None = None
    """What the fake command runner returns (default: exit 0, stdout "ok\\n")."""
    mount_hook: MountHook | None = None
    umount_hook: UmountHook | None = None

    def rel(self, path: str) -> str:
        return Path(path).relative_to(self.root).as_posix()

    def make_probe(self, check: object) -> FakeProbe:
        probe = FakeProbe(self.table)
        self.probes.append(probe)
        return probe

    def fake_mount(
        self,
        source: str | None,
        target: str,
        fstype: str | None = None,
        flags: int = 0,
        data: str | None = None,
    ) -> None:
        # The target is /proc/self/fd/N: what it points at is what gets mounted on.
        assert target.startswith("/proc/self/fd/"), target
        where = self.rel(os.readlink(target))
        if self.mount_hook is not None:
            self.mount_hook(source, where, flags)
        if flags & syscalls.MS_PRIVATE:
            self.events.append(("private", where))
        else:
            self.events.append(("mount", where, source, fstype, flags))

    def fake_umount(self, target: str, flags: int = 0) -> None:
        where = self.rel(target)
        if self.umount_hook is not None:
            try:
                self.umount_hook(where, flags)
            except OSError as exc:
                self.events.append(("umount-failed", where, flags, exc.errno))
                raise
        self.events.append(("umount", where, flags))
        self.table.discard(Path(target))

    def fake_run(
        self,
        root: Path,
        argv: Sequence[str],
        *,
        timeout: float | None = None,
        env: Any = None,
    ) -> CommandResult:
        mounted = sorted(p.relative_to(self.root).as_posix() for p in self.table)
        self.events.append(("run", list(argv), mounted))
        if self.result is not None:
            return self.result
        return CommandResult(list(argv), 0, "ok\n", "")

    def fake_reap(self, root: Path, grace: float = 2.0) -> list[int]:
        self.events.append(("reap",))
        return []

    def kinds(self) -> list[str]:
        return [e[0] for e in self.events]

    def binds(self) -> list[tuple[str, str]]:
        """(target, source) of each bind mount, in the order they were made."""
        return [(e[1], e[2]) for e in self.events if e[0] == "mount" and e[4] & syscalls.MS_BIND]

    def mounts(self) -> list[str]:
        """Targets of every new mount (bind or fresh), in order."""
        return [e[1] for e in self.events if e[0] == "mount"]

    def unmounts(self) -> list[str]:
        """Targets of every successful unmount, in order."""
        return [e[1] for e in self.events if e[0] == "umount"]


def install_fake_kernel(mocker: MockerFixture, root: Path) -> FakeKernel:
    fake = FakeKernel(root)
    mocker.patch.object(syscalls, "_libc", NoLibc())
    mocker.patch("vmcraft.mount.pseudofs.require_privileges")
    mocker.patch("vmcraft.chroot.run.require_privileges")
    fake.mount = mocker.patch("vmcraft.mount.pseudofs.syscalls.mount", side_effect=fake.fake_mount)
    fake.umount = mocker.patch(
        "vmcraft.mount.pseudofs.syscalls.umount", side_effect=fake.fake_umount
    )
    mocker.patch("vmcraft.mount.pseudofs.syscalls.mount_id_of_fd", side_effect=itertools.count(100))
    mocker.patch("vmcraft.mount.pseudofs.mount_ids", return_value=set())
    # As on a kernel without the new mount API: every mount goes through mount(2),
    # which the fake records.
    mocker.patch(
        "vmcraft.mount.pseudofs.syscalls.bind_private",
        side_effect=OSError(errno.ENOSYS, "Function not implemented"),
    )
    fake.reap = mocker.patch("vmcraft.mount.pseudofs.reaper.reap", side_effect=fake.fake_reap)
    mocker.patch("vmcraft.mount.pseudofs.make_probe", side_effect=fake.make_probe)
    fake.run_in_root = mocker.patch("vmcraft.handle.run_in_root", side_effect=fake.fake_run)
    return fake
