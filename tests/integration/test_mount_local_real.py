"""mount_local on a real guest disk when a syscall fails, a signal arrives, or the
target is unusual: nothing may stay in the host's mount table, and no OSError escapes.

The guest is a small ext4 image made here (mkfs.ext4 -d), mounted through the
handle; the session runs in a private mount namespace (tests/conftest.py).
"""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import launched
from tests.leaks import mount_table
from vmcraft import GuestMountError, VMCraft, VMCraftError
from vmcraft.mount import syscalls
from vmcraft.mount.mountinfo import read_mountinfo

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("leak_check")]


REAL_MOUNT = syscalls.mount


@pytest.fixture
def small_disk(tmp_path: Path) -> Path:
    """A 16 MiB ext4 image holding /etc/hostname and a character device node."""
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "hostname").write_text("small-guest\n")
    os.mknod(tree / "zero", stat.S_IFCHR | 0o666, os.makedev(1, 5))  # /dev/zero's numbers
    image = tmp_path / "small.img"
    subprocess.run(["truncate", "-s", "16M", os.fspath(image)], check=True)
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-m", "0", "-d", os.fspath(tree), os.fspath(image)], check=True
    )
    return image


@pytest.fixture
def g(small_disk: Path) -> Iterator[VMCraft]:
    with launched(small_disk, readonly=False) as handle:
        handle.mount("/dev/sda", "/")
        yield handle


@pytest.fixture
def local(tmp_path: Path) -> Path:
    path = tmp_path / "local"
    path.mkdir()
    return path


def failing_on(condition: Callable[[int], bool], err: int = errno.ENOMEM) -> Callable[..., None]:
    """syscalls.mount, failing with ``err`` for the calls whose flags match."""

    def mount(
        source: str | None,
        target: str,
        fstype: str | None = None,
        flags: int = 0,
        data: str | None = None,
    ) -> None:
        if condition(flags):
            raise OSError(err, os.strerror(err), target)
        REAL_MOUNT(source, target, fstype, flags, data)

    return mount


def is_private(flags: int) -> bool:
    return bool(flags & syscalls.MS_PRIVATE)


def is_ro_remount(flags: int) -> bool:
    return bool(flags & syscalls.MS_REMOUNT and flags & syscalls.MS_RDONLY)


@pytest.mark.parametrize(
    ("condition", "readonly"),
    [(is_private, False), (is_private, True), (is_ro_remount, True)],
    ids=["make-private", "make-private-readonly", "readonly-remount"],
)
def test_a_failing_second_syscall_leaves_nothing(
    g: VMCraft,
    local: Path,
    monkeypatch: pytest.MonkeyPatch,
    condition: Callable[[int], bool],
    readonly: bool,
) -> None:
    before = mount_table()
    monkeypatch.setattr(syscalls, "mount", failing_on(condition))
    with pytest.raises(GuestMountError) as info:
        g.mount_local(os.fspath(local), readonly=readonly)
    assert isinstance(info.value, RuntimeError)
    assert info.value.errno == errno.ENOMEM  # type: ignore[attr-defined]
    assert str(info.value) == f"mount_local: {local}: {os.strerror(errno.ENOMEM)}"
    assert mount_table() == before
    assert os.listdir(local) == []
    monkeypatch.undo()
    g.mount_local(os.fspath(local))  # and the handle can still do it
    g.umount_local()
    assert mount_table() == before


def test_a_failing_first_syscall_is_a_guest_mount_error(
    g: VMCraft, local: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = mount_table()
    monkeypatch.setattr(syscalls, "mount", failing_on(lambda f: bool(f & syscalls.MS_BIND)))
    with pytest.raises(GuestMountError):
        g.mount_local(os.fspath(local))
    assert mount_table() == before


@pytest.mark.parametrize("readonly", [False, True])
def test_ctrl_c_during_the_binds_leaves_nothing(
    g: VMCraft, local: Path, monkeypatch: pytest.MonkeyPatch, readonly: bool
) -> None:
    """SIGINT arriving right after the bind: held back, then delivered; the bind goes."""
    before = mount_table()

    def mount_then_interrupt(
        source: str | None,
        target: str,
        fstype: str | None = None,
        flags: int = 0,
        data: str | None = None,
    ) -> None:
        REAL_MOUNT(source, target, fstype, flags, data)
        if flags & syscalls.MS_BIND and not flags & syscalls.MS_REMOUNT:
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(syscalls, "mount", mount_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        g.mount_local(os.fspath(local), readonly=readonly)
    monkeypatch.undo()
    assert mount_table() == before
    g.umount_local()  # nothing recorded, nothing to do
    assert mount_table() == before


@pytest.mark.parametrize("readonly", [False, True])
def test_umount_local_leaves_nothing(g: VMCraft, local: Path, readonly: bool) -> None:
    before = mount_table()
    g.mount_local(os.fspath(local), readonly=readonly)
    assert (local / "etc" / "hostname").read_text() == "small-guest\n"
    assert mount_table() != before
    g.umount_local()
    assert mount_table() == before
    assert os.listdir(local) == []


def test_a_relative_path(g: VMCraft, local: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The mount table names mounts by absolute path: a relative one must still come down."""
    before = mount_table()
    monkeypatch.chdir(local.parent)
    g.mount_local("local", readonly=True)
    try:
        with pytest.raises(OSError, match="Read-only") as info:
            (local / "etc" / "new").write_text("x")
        assert info.value.errno == errno.EROFS
    finally:
        g.umount_local()
    assert mount_table() == before
    assert os.listdir(local) == []


def test_a_path_through_a_symlinked_directory(g: VMCraft, local: Path, tmp_path: Path) -> None:
    before = mount_table()
    (tmp_path / "via").symlink_to(tmp_path)
    g.mount_local(os.fspath(tmp_path / "via" / "local"))
    assert (local / "etc" / "hostname").read_text() == "small-guest\n"
    g.umount_local()
    assert mount_table() == before


def mount_options(point: Path) -> set[str]:
    """The per-mount options of the topmost mount at ``point``."""
    entries = [e for e in read_mountinfo() if e.mount_point == os.fspath(point)]
    return set(entries[-1].options.split(","))


def test_readonly_keeps_nodev(g: VMCraft, local: Path) -> None:
    """A bind remount sets the mount's flags anew: nodev (and nosuid...) must be kept,
    or a guest's device node would work on the host through the read-only view."""
    g.mount_local(os.fspath(local), readonly=True)
    try:
        assert {"ro", "nodev"} <= mount_options(local)
        with pytest.raises(PermissionError):
            (local / "zero").open("rb").close()
    finally:
        g.umount_local()


@pytest.fixture
def host_tmpfs(local: Path) -> Iterator[Callable[[Path], None]]:
    """Mount a tmpfs of the host's own at a path, and take it down afterwards."""
    made: list[Path] = []

    def at(path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        REAL_MOUNT("tmpfs", os.fspath(path), "tmpfs", 0, "size=1m")
        made.append(path)

    yield at
    for path in reversed(made):
        syscalls.umount(os.fspath(path))


def test_a_host_mount_at_the_target_stays(
    g: VMCraft, local: Path, host_tmpfs: Callable[[Path], None]
) -> None:
    host_tmpfs(local)
    (local / "host-file").write_text("host\n")
    before = mount_table()
    g.mount_local(os.fspath(local), readonly=True)
    assert (local / "etc" / "hostname").read_text() == "small-guest\n"
    g.umount_local()
    assert mount_table() == before
    assert (local / "host-file").read_text() == "host\n"


def test_a_host_mount_below_the_target_stays(
    g: VMCraft, local: Path, host_tmpfs: Callable[[Path], None]
) -> None:
    """A host mount hidden under the bind is not the bind's: a read-only mount_local
    must not try to remount it, and umount_local must not take it."""
    host_tmpfs(local / "etc")
    (local / "etc" / "host-file").write_text("host\n")
    before = mount_table()
    g.mount_local(os.fspath(local), readonly=True)
    assert (local / "etc" / "hostname").read_text() == "small-guest\n"
    g.umount_local()
    assert mount_table() == before
    assert (local / "etc" / "host-file").read_text() == "host\n"


def test_a_non_directory_target_is_a_vmcraft_error(g: VMCraft, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    for target in (tmp_path / "file", tmp_path / "missing", tmp_path / "file" / "below"):
        with pytest.raises(VMCraftError):
            g.mount_local(os.fspath(target))
