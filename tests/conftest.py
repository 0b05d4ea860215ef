"""Test-session set-up shared by every test.

As root, the whole session moves into a private mount namespace before any
test runs: a bug that mounts onto a wrong path then costs a test, not the
machine. The tests still check the namespace's own mount table before and
after each test, so a leak fails the test instead of vanishing with the
namespace.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import leaks
from tests.fixtures.guestdisk import DebianDisk, debian_disk
from tests.leaks import snapshot
from vmcraft import VMCraft, cleanup
from vmcraft.mount import syscalls

IS_ROOT = os.geteuid() == 0


def pytest_configure(config: pytest.Config) -> None:
    if not IS_ROOT:
        return
    # What a killed earlier run left (its daemons outlive it) goes first.
    for leftover in cleanup.find_leftovers():
        cleanup.clean(leftover)
    syscalls.unshare(syscalls.CLONE_NEWNS)
    syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if IS_ROOT:
        return
    skip = pytest.mark.skip(reason="needs root: it really mounts and chroots (CI runs as root)")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def debian() -> DebianDisk:
    """The cached Debian bookworm guest disk (built on first use, ~1 min)."""
    return debian_disk()


CopyImage = Callable[[str], Path]


def writable_copy(image: Path, target: Path) -> Path:
    """A sparse, writable copy of a cached (read-only) image."""
    subprocess.run(["cp", "--sparse=always", "--", os.fspath(image), os.fspath(target)], check=True)
    target.chmod(0o644)
    return target


def vmcraft_cli(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    """``python -m vmcraft ARGS`` as a user runs it: output captured, no terminal input."""
    return subprocess.run(
        [sys.executable, "-m", "vmcraft", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def launched(path: Path, *, readonly: bool = True) -> VMCraft:
    """A handle launched on ``path``, closed again if launching fails."""
    g = VMCraft()
    try:
        g.add_drive_opts(path, readonly=readonly)
        g.launch()
    except BaseException:
        g.close()
        raise
    return g


@pytest.fixture
def image_copy(debian: DebianDisk, tmp_path: Path) -> Iterator[CopyImage]:
    """A writable copy of the Debian disk in the format asked for (removed afterwards:
    a run makes dozens of gigabyte-sized copies)."""
    made: list[Path] = []

    def copy(fmt: str) -> Path:
        target = writable_copy(debian.image(fmt), tmp_path / f"guest.{fmt}")
        made.append(target)
        return target

    yield copy
    for path in made:
        path.unlink(missing_ok=True)


@pytest.fixture(scope="session", autouse=True)
def _own_temp(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tell the leak checks which temporary files are this run's (see tests/leaks.py)."""
    leaks.own_temp = tmp_path_factory.getbasetemp()


@pytest.fixture
def leak_check() -> Iterator[None]:
    """Fail the test if it leaves a mount, loop device, image daemon or state directory."""
    before = snapshot()
    yield
    assert snapshot() == before
