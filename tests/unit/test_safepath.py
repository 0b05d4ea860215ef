"""open_guest_dir and guest_components on a real directory tree (no root needed)."""

from __future__ import annotations

import fcntl
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

import vmcraft
from vmcraft.mount.safepath import guest_components, open_guest_dir


@pytest.fixture
def guest(tmp_path: Path) -> Path:
    root = tmp_path / "guest"
    root.mkdir()
    return Path(os.path.realpath(root))


@pytest.fixture
def root_fd(guest: Path) -> Iterator[int]:
    fd = os.open(guest, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    yield fd
    os.close(fd)


def fd_path(fd: int) -> Path:
    return Path(os.readlink(f"/proc/self/fd/{fd}"))


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def opened(root_fd: int, relpath: str, *, create: bool = False) -> Path:
    """Where open_guest_dir's fd points; the fd is closed again."""
    fd = open_guest_dir(root_fd, relpath, create=create)
    try:
        mode = os.fstat(fd).st_mode
        assert stat.S_ISDIR(mode)
        return fd_path(fd)
    finally:
        os.close(fd)


# -- refusals ----------------------------------------------------------------


def test_refuses_absolute_symlink(guest: Path, root_fd: int) -> None:
    (guest / "proc").symlink_to("/etc")
    with pytest.raises(vmcraft.UnsafePathError, match="symbolic link"):
        open_guest_dir(root_fd, "proc", create=True)


def test_refuses_relative_symlink_out_of_the_root(guest: Path, root_fd: int) -> None:
    (guest / "sys").symlink_to("../../..")
    with pytest.raises(vmcraft.UnsafePathError, match="symbolic link"):
        open_guest_dir(root_fd, "sys", create=True)


def test_refuses_symlink_to_a_directory_inside_the_root(guest: Path, root_fd: int) -> None:
    (guest / "real-dev").mkdir()
    (guest / "dev").symlink_to("real-dev")
    with pytest.raises(vmcraft.UnsafePathError, match="symbolic link"):
        open_guest_dir(root_fd, "dev")


def test_refuses_symlink_in_a_middle_component(guest: Path, root_fd: int) -> None:
    (guest / "dev").symlink_to("/dev")
    with pytest.raises(vmcraft.UnsafePathError, match=r"/dev in the guest is a symbolic link"):
        open_guest_dir(root_fd, "dev/pts", create=True)


def test_refuses_dangling_symlink(guest: Path, root_fd: int) -> None:
    (guest / "proc").symlink_to("/nonexistent-vmcraft-target")
    with pytest.raises(vmcraft.UnsafePathError, match="symbolic link"):
        open_guest_dir(root_fd, "proc")


def test_create_does_not_follow_dangling_symlink(guest: Path, root_fd: int, tmp_path: Path) -> None:
    outside = tmp_path / "outside" / "made-by-guest"
    (tmp_path / "outside").mkdir()
    (guest / "proc").symlink_to(outside)
    rel = guest / "sys"
    rel.symlink_to("../outside/relative-made-by-guest")

    with pytest.raises(vmcraft.UnsafePathError, match="symbolic link"):
        open_guest_dir(root_fd, "proc", create=True)
    with pytest.raises(vmcraft.UnsafePathError, match="symbolic link"):
        open_guest_dir(root_fd, "sys", create=True)

    assert not os.path.lexists(outside)
    assert not os.path.lexists(tmp_path / "outside" / "relative-made-by-guest")
    assert (guest / "proc").is_symlink()
    assert (guest / "sys").is_symlink()


def test_refuses_regular_file(guest: Path, root_fd: int) -> None:
    (guest / "proc").write_text("not a directory\n")
    with pytest.raises(vmcraft.UnsafePathError, match="regular file"):
        open_guest_dir(root_fd, "proc", create=True)


def test_refuses_file_in_a_middle_component(guest: Path, root_fd: int) -> None:
    (guest / "dev").write_text("")
    with pytest.raises(vmcraft.UnsafePathError, match=r"/dev in the guest is a regular file"):
        open_guest_dir(root_fd, "dev/pts", create=True)


def test_refuses_fifo(guest: Path, root_fd: int) -> None:
    os.mkfifo(guest / "dev")
    with pytest.raises(vmcraft.UnsafePathError, match="FIFO"):
        open_guest_dir(root_fd, "dev", create=True)


def test_refuses_socket(guest: Path, root_fd: int) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(os.fspath(guest / "run"))
        with pytest.raises(vmcraft.UnsafePathError, match="socket"):
            open_guest_dir(root_fd, "run", create=True)
    finally:
        sock.close()


def test_missing_without_create_is_refused(guest: Path, root_fd: int) -> None:
    with pytest.raises(vmcraft.UnsafePathError, match="does not exist"):
        open_guest_dir(root_fd, "sys/firmware/efi/efivars")
    assert list(guest.iterdir()) == []


@pytest.mark.parametrize(
    "relpath", ["..", "../etc", "proc/../../etc", "dev/./pts/..", ".", "", "/", "//"]
)
def test_refuses_dot_dot_and_empty_paths(guest: Path, root_fd: int, relpath: str) -> None:
    with pytest.raises(vmcraft.UnsafePathError, match="not a plain path"):
        open_guest_dir(root_fd, relpath, create=True)
    assert list(guest.iterdir()) == []


def test_refusals_close_every_fd(guest: Path, root_fd: int) -> None:
    (guest / "a" / "b").mkdir(parents=True)
    (guest / "a" / "b" / "c").symlink_to("/etc")
    before = open_fds()

    for _ in range(3):
        with pytest.raises(vmcraft.UnsafePathError):
            open_guest_dir(root_fd, "a/b/c/d")

    assert open_fds() == before


# -- acceptance --------------------------------------------------------------


def test_creates_missing_directories(guest: Path, root_fd: int) -> None:
    assert opened(root_fd, "dev/pts", create=True) == guest / "dev" / "pts"
    assert (guest / "dev" / "pts").is_dir()


def test_created_directories_are_plain_dirs(guest: Path, root_fd: int) -> None:
    opened(root_fd, "proc", create=True)
    st = os.lstat(guest / "proc")
    assert stat.S_ISDIR(st.st_mode)
    assert not st.st_mode & 0o022  # never group/world writable


def test_accepts_plain_nested_dir(guest: Path, root_fd: int) -> None:
    (guest / "sys" / "firmware" / "efi" / "efivars").mkdir(parents=True)
    before = open_fds()

    got = opened(root_fd, "sys/firmware/efi/efivars")

    assert got == guest / "sys" / "firmware" / "efi" / "efivars"
    assert open_fds() == before


def test_accepts_leading_and_trailing_slashes(guest: Path, root_fd: int) -> None:
    (guest / "dev" / "pts").mkdir(parents=True)
    assert opened(root_fd, "/dev/pts/") == guest / "dev" / "pts"


def test_fd_is_path_only_and_close_on_exec(guest: Path, root_fd: int) -> None:
    (guest / "proc").mkdir()
    fd = open_guest_dir(root_fd, "proc")
    try:
        assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_PATH
        assert os.get_inheritable(fd) is False
        assert fd != root_fd
    finally:
        os.close(fd)
    # The caller's root fd is still open and usable.
    os.fstat(root_fd)


def test_existing_directory_contents_left_alone(guest: Path, root_fd: int) -> None:
    (guest / "dev").mkdir()
    (guest / "dev" / "null").write_text("guest's own\n")

    opened(root_fd, "dev", create=True)

    assert (guest / "dev" / "null").read_text() == "guest's own\n"


# -- guest_components --------------------------------------------------------


@pytest.mark.parametrize(
    ("relpath", "parts"),
    [
        ("proc", ["proc"]),
        ("/proc", ["proc"]),
        ("dev/pts", ["dev", "pts"]),
        ("/dev/pts/", ["dev", "pts"]),
        ("dev//pts", ["dev", "pts"]),
        ("sys/firmware/efi/efivars", ["sys", "firmware", "efi", "efivars"]),
        ("a..b", ["a..b"]),
        ("...", ["..."]),
        (".hidden", [".hidden"]),
    ],
)
def test_guest_components_splits_plain_paths(relpath: str, parts: list[str]) -> None:
    assert guest_components(relpath) == parts


@pytest.mark.parametrize("relpath", ["", "/", ".", "..", "../x", "x/..", "a/../b", "/../etc"])
def test_guest_components_refuses(relpath: str) -> None:
    with pytest.raises(vmcraft.UnsafePathError):
        guest_components(relpath)
