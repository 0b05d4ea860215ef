"""Fixtures for tests that really mount, on a real debootstrapped guest root."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.guestroot import minbase_root
from tests.leaks import mount_table, snapshot
from vmcraft.chroot import reaper
from vmcraft.mount import syscalls

__all__ = ["mount_table"]


@pytest.fixture(scope="session")
def minbase() -> Path:
    """The cached debootstrap --variant=minbase root (built on first use)."""
    return minbase_root()


@pytest.fixture(autouse=True)
def no_leaks(tmp_path: Path) -> Iterator[None]:
    """Fail the test if it leaves a mount, loop device, daemon or guest process."""
    before = snapshot()
    yield
    assert reaper.processes_rooted_in(tmp_path) == [], "a process still runs in the guest"
    assert snapshot() == before


@pytest.fixture
def guest_root(tmp_path: Path, minbase: Path) -> Iterator[Path]:
    """A writable copy of the guest root: an overlay on the cached tree."""
    upper, work, root = tmp_path / "upper", tmp_path / "work", tmp_path / "root"
    for d in (upper, work, root):
        d.mkdir()
    syscalls.mount(
        "overlay",
        os.fspath(root),
        "overlay",
        0,
        f"lowerdir={minbase},upperdir={upper},workdir={work}",
    )
    try:
        yield root
    finally:
        reaper.reap(root, grace=1.0)
        try:
            syscalls.umount(os.fspath(root))
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise
            syscalls.umount(os.fspath(root), syscalls.MNT_DETACH)
            pytest.fail("the guest root was still busy after the test")
