"""No OSError escapes a file call: each one becomes a GuestFileError (a RuntimeError).

hyper2kvm and other callers written against libguestfs catch ``RuntimeError``;
``OSError`` is not one. These run without root, on a plain directory as the
guest root, and make the OS fail for real where it can be done unprivileged
(a root that is gone, RLIMIT_FSIZE for a full disk, /proc/PID/mem for EIO).
"""

from __future__ import annotations

import errno
import inspect
import os
import resource
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from subprocess import CompletedProcess

import pytest
from pytest_mock import MockerFixture

from vmcraft import GuestFileError, HostFileError, VMCraft
from vmcraft.guest import files as guest_files
from vmcraft.guest.files import GuestFiles

PUBLIC = sorted(
    name
    for name, member in inspect.getmembers(GuestFiles, inspect.isfunction)
    if not name.startswith("_")
)

# Every public GuestFiles call, with arguments naming a guest path.
CALLS: dict[str, Callable[[GuestFiles], object]] = {
    "stat": lambda f: f.stat("/etc"),
    "exists": lambda f: f.exists("/etc"),
    "is_file": lambda f: f.is_file("/etc"),
    "is_dir": lambda f: f.is_dir("/etc"),
    "is_link": lambda f: f.is_link("/etc"),
    "read_file": lambda f: f.read_file("/etc/hostname"),
    "write": lambda f: f.write("/etc/hostname", b"x"),
    "realpath": lambda f: f.realpath("/etc"),
    "statvfs": lambda f: f.statvfs("/etc"),
    "mkdir": lambda f: f.mkdir("/etc/new"),
    "mkdir_p": lambda f: f.mkdir_p("/etc/new/deeper"),
    "chmod": lambda f: f.chmod(0o600, "/etc/hostname"),
    "ln_sf": lambda f: f.ln_sf("/target", "/etc/link"),
    "rename": lambda f: f.rename("/etc/hostname", "/etc/hostname2"),
    "rm": lambda f: f.rm("/etc/hostname"),
    "rmdir": lambda f: f.rmdir("/etc"),
    "cp": lambda f: f.cp("/etc/hostname", "/etc/copy"),
    "cp_a": lambda f: f.cp_a("/etc", "/etc2"),
    "find": lambda f: f.find("/etc"),
    "glob_expand": lambda f: f.glob_expand("/etc/*"),
    "ls": lambda f: f.ls("/etc"),
}


def test_the_table_covers_every_public_call() -> None:
    assert sorted(CALLS) == PUBLIC


@pytest.mark.parametrize("name", PUBLIC)
def test_every_public_call_is_wrapped_at_its_boundary(name: str) -> None:
    """A call added later without the wrapper fails here, not in a caller's except clause."""
    assert getattr(getattr(GuestFiles, name), "__guest_call__", None) is not None, name


@pytest.mark.parametrize("name", PUBLIC)
def test_a_root_that_is_gone_raises_guest_file_error(name: str, tmp_path: Path) -> None:
    """os.open(root) failing (the guest root unmounted or removed under the handle)."""
    files = GuestFiles(tmp_path / "gone")
    with pytest.raises(GuestFileError) as info:
        CALLS[name](files)
    assert isinstance(info.value, RuntimeError)
    assert not isinstance(info.value, HostFileError)
    assert info.value.errno == errno.ENOENT
    assert info.value.call == name
    assert str(info.value).startswith(f"{name}: /")


@pytest.fixture
def guest(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "hostname").write_text("guest\n")
    return root


@pytest.fixture
def file_size_limit() -> Iterator[int]:
    """Writes past 64 KiB fail with EFBIG, as a full disk fails them with ENOSPC."""
    limit = 64 * 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield limit
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def test_write_past_the_limit_raises_guest_file_error(guest: Path, file_size_limit: int) -> None:
    files = GuestFiles(guest)
    for path in ("/etc/hostname", "/etc/new-file"):  # an existing file, a new one
        with pytest.raises(GuestFileError) as info:
            files.write(path, b"x" * (2 * file_size_limit))
        assert info.value.errno == errno.EFBIG
        assert str(info.value) == f"write: {path}: {os.strerror(errno.EFBIG)}"
        assert isinstance(info.value, RuntimeError)


@pytest.fixture
def large(guest: Path) -> Path:
    """A file past the limit, written before the limit is set."""
    (guest / "etc" / "large").write_bytes(b"y" * 256 * 1024)
    return guest


def test_cp_past_the_limit_names_cp(large: Path, file_size_limit: int) -> None:
    with pytest.raises(GuestFileError) as info:
        GuestFiles(large).cp("/etc/large", "/etc/copy")
    assert info.value.errno == errno.EFBIG
    assert str(info.value) == f"cp: /etc/copy: {os.strerror(errno.EFBIG)}"


def test_read_error_raises_guest_file_error() -> None:
    """/proc/PID/mem at offset 0 is a regular file whose read fails with EIO."""
    files = GuestFiles(Path("/proc"))
    path = f"/{os.getpid()}/mem"
    with pytest.raises(GuestFileError) as info:
        files.read_file(path)
    assert info.value.errno == errno.EIO
    assert str(info.value) == f"read_file: {path}: {os.strerror(errno.EIO)}"


def test_cp_a_reports_the_errno_cp_printed(guest: Path, mocker: MockerFixture) -> None:
    mocker.patch.object(
        guest_files,
        "run_tool",
        return_value=CompletedProcess(
            [], 1, "", "cp: error writing '/proc/self/fd/5/etc2/x': No space left on device\n"
        ),
    )
    with pytest.raises(GuestFileError) as info:
        GuestFiles(guest).cp_a("/etc", "/etc2")
    assert info.value.errno == errno.ENOSPC
    assert str(info.value).startswith("cp_a: /etc: ")


@pytest.fixture
def handle(guest: Path) -> Iterator[VMCraft]:
    with VMCraft.from_root(guest) as g:
        yield g


def test_upload_names_the_call_on_either_side(handle: VMCraft, tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.write_bytes(b"payload")
    with pytest.raises(HostFileError, match=r"^upload: .*/missing: ") as host:
        handle.upload(os.fspath(tmp_path / "missing"), "/etc/up")
    assert host.value.errno == errno.ENOENT
    with pytest.raises(GuestFileError, match=r"^upload: /no/dir/up: ") as guest_side:
        handle.upload(os.fspath(source), "/no/dir/up")
    assert not isinstance(guest_side.value, HostFileError)
    assert guest_side.value.errno == errno.ENOENT


def test_download_names_the_call_on_either_side(handle: VMCraft, tmp_path: Path) -> None:
    with pytest.raises(GuestFileError, match=r"^download: /etc/missing: ") as guest_side:
        handle.download("/etc/missing", os.fspath(tmp_path / "x"))
    assert not isinstance(guest_side.value, HostFileError)
    with pytest.raises(HostFileError, match=r"^download: ") as host:
        handle.download("/etc/hostname", os.fspath(tmp_path))  # a directory
    assert host.value.errno == errno.EISDIR


def test_other_handle_calls_name_themselves(handle: VMCraft, tmp_path: Path) -> None:
    calls: dict[str, Callable[[], object]] = {
        "cat": lambda: handle.cat("/etc/missing"),
        "filesize": lambda: handle.filesize("/etc/missing"),
        "statns": lambda: handle.statns("/etc/missing"),
        "copy_file_to_file": lambda: handle.copy_file_to_file("/etc/missing", "/etc/x"),
        "rm_f": lambda: handle.rm_f("/etc"),  # a directory: EISDIR
    }
    for call, run in calls.items():
        with pytest.raises(GuestFileError, match=rf"^{call}: /etc") as info:
            run()
        assert isinstance(info.value, RuntimeError), call
