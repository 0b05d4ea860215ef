"""The disk layer on the real Debian guest disk: loop devices, image daemons, real mounts.

Read-only tests share one copy of each image per module (made once, hashed
once, and re-hashed by the tests that promise not to change a byte); tests
that write get a fresh copy of their own.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from pytest_mock import MockerFixture

import vmcraft.mount.guest
from tests.conftest import CopyImage, launched
from tests.fixtures.guestdisk import DebianDisk
from tests.leaks import mount_table, snapshot
from vmcraft import (
    AlreadyLaunchedError,
    CommandError,
    DriveError,
    GuestFileError,
    GuestMountError,
    ImageFormatError,
    ImageNotFoundError,
    NotLaunchedError,
    UnknownDeviceError,
    VMCraft,
)
from vmcraft.disks import blkid
from vmcraft.disks.statedir import STATE_ROOT
from vmcraft.mount import syscalls

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("leak_check")]

FORMATS = ["raw", "qcow2", "vmdk"]
ROOT = "/dev/sda2"


# -- helpers ---------------------------------------------------------------------


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def loops_backed_by(path: Path) -> list[str]:
    """The attached loop devices whose backing file is ``path``."""
    found = []
    for backing in glob.glob("/sys/block/loop*/loop/backing_file"):
        try:
            name = Path(backing).read_text().strip()
        except OSError:
            continue  # detached meanwhile
        if name.removesuffix(" (deleted)") == os.fspath(path):
            found.append(Path(backing).parent.parent.name)
    return sorted(found)


def host_mount_points() -> set[str]:
    return {point for _, point, _ in mount_table()}


@dataclass(frozen=True)
class Pristine:
    """A copy of the Debian disk that no test may change, and its digest."""

    path: Path
    digest: str

    def assert_unchanged(self) -> None:
        assert sha256(self.path) == self.digest, f"{self.path} was modified"


@pytest.fixture(scope="module")
def pristine(
    debian: DebianDisk, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], Pristine]:
    """One read-only copy per format for the whole module, made on first use."""
    top = tmp_path_factory.mktemp("pristine")
    made: dict[str, Pristine] = {}

    def get(fmt: str) -> Pristine:
        if fmt not in made:
            target = top / f"guest.{fmt}"
            subprocess.run(
                ["cp", "--sparse=always", "--", os.fspath(debian.image(fmt)), os.fspath(target)],
                check=True,
            )
            target.chmod(0o444)
            made[fmt] = Pristine(target, sha256(target))
        return made[fmt]

    return get


# -- devices, partitions, filesystems ----------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_devices_partitions_and_ids(
    fmt: str, pristine: Callable[[str], Pristine], debian: DebianDisk
) -> None:
    with launched(pristine(fmt).path) as g:
        assert g.list_devices() == ["/dev/sda"]
        assert g.list_partitions() == ["/dev/sda1", "/dev/sda2"]
        assert g.list_filesystems() == {"/dev/sda1": "unknown", "/dev/sda2": "ext4"}
        for name in ("/dev/sda2", "/dev/vda2", "/dev/hda2", "/dev/xvda2"):
            assert g.vfs_type(name) == "ext4", name
            assert g.vfs_uuid(name) == debian.root_uuid, name
            assert g.vfs_label(name) == "debroot", name
            assert g.canonical_device_name(name) == "/dev/sda2"
        assert g.vfs_type("/dev/sda1") == ""
        assert g.vfs_uuid("/dev/sda1") == ""
        assert g.vfs_type("/dev/sda") == ""

        # The alias mounts the same filesystem, recorded under its canonical name.
        g.mount("/dev/vda2", "/")
        assert g.mountpoints() == {"/dev/sda2": "/"}
        assert g.cat("/etc/hostname") == "vmcraft-demo\n"

        # The guest's own /dev names its devices as udev would, and holds no host disk.
        same = [
            f"test /dev/disk/by-uuid/{debian.root_uuid} -ef /dev/sda2",
            f"test /dev/disk/by-partuuid/{debian.root_partuuid} -ef /dev/sda2",
            "test /dev/disk/by-label/debroot -ef /dev/sda2",
            "test -b /dev/sda && test -b /dev/sda1 && test ! -e /dev/sdb",
        ]
        g.command_with_mounts(["sh", "-c", " && ".join(same)])
        guest_dev = set(g.command_with_mounts(["ls", "/dev"]).split())
        own = {"sda", "sda1", "sda2"} | {
            name for name in guest_dev if name.startswith("loop") and name[4:5].isdigit()
        }
        assert len(own) == 6  # the guest names and the three host loop nodes
        host_disks = set(os.listdir("/sys/class/block"))
        assert guest_dev & host_disks <= own


UNKNOWN_DEVICES = ["/dev/sda9", "/dev/sda0", "/dev/sdb1", "/dev/sdb", "/dev/nvme0n1", "/dev/loop0"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_unknown_devices_never_reach_the_host(
    fmt: str, pristine: Callable[[str], Pristine], mocker: MockerFixture
) -> None:
    with launched(pristine(fmt).path) as g:
        mount_calls = mocker.spy(syscalls, "mount")
        probes = [mocker.spy(blkid, "probe"), mocker.spy(vmcraft.mount.guest, "probe")]
        before = mount_table()
        for name in UNKNOWN_DEVICES:
            for call in (g.vfs_type, g.vfs_uuid, g.vfs_label):
                with pytest.raises(UnknownDeviceError):
                    call(name)
            with pytest.raises(UnknownDeviceError):
                g.mount(name, "/")
            with pytest.raises(UnknownDeviceError):
                g.mount_ro(name, "/")
            with pytest.raises(UnknownDeviceError):
                g.mount_options("ro", name, "/")
        assert mount_calls.call_count == 0
        assert all(spy.call_count == 0 for spy in probes)
        assert mount_table() == before
        assert g.mountpoints() == {}


# -- mounting and guest files ---------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_mount_and_file_calls(fmt: str, image_copy: CopyImage, debian: DebianDisk) -> None:
    copy = image_copy(fmt)
    payload = b"written by vmcraft\n\x00\xff" + os.urandom(64)
    with launched(copy, readonly=False) as g:
        with pytest.raises(GuestMountError, match="before /boot"):
            g.mount(ROOT, "/boot")
        assert g.mountpoints() == {}
        with pytest.raises(NotLaunchedError):
            g.read_file("/etc/hostname")

        g.mount(ROOT, "/")
        assert g.mountpoints() == {ROOT: "/"}
        assert g.mounts() == [ROOT]
        assert g.cat("/etc/hostname") == "vmcraft-demo\n"
        assert g.read_file("/etc/hostname") == b"vmcraft-demo\n"
        boot = g.ls("/boot")
        assert f"vmlinuz-{debian.kernel}" in boot
        assert f"initrd.img-{debian.kernel}" in boot

        # exists / is_file / is_dir, with and without following links
        assert g.exists("/etc/hostname")
        assert g.is_file("/etc/hostname")
        assert not g.is_dir("/etc/hostname")
        assert g.exists("/etc")
        assert g.is_dir("/etc")
        assert not g.is_file("/etc")
        assert not g.exists("/no/such/file")
        assert not g.is_file("/no/such/file")
        assert not g.is_dir("/no/such/dir")
        assert not g.exists("/etc/hostname/below-a-file")
        assert g.is_dir("/boot/grub")
        assert not g.exists("/boot/grub/grub.cfg")
        assert g.exists("/vmlinuz")  # a link to boot/vmlinuz-*
        assert not g.is_file("/vmlinuz")
        assert g.is_file("/vmlinuz", followsymlinks=True)
        assert not g.is_dir("/bin")  # merged /usr: a link to usr/bin
        assert g.is_dir("/bin", followsymlinks=True)

        # error cases carry the errno
        cases: list[tuple[Callable[[], object], int]] = [
            (lambda: g.read_file("/no/such/file"), errno.ENOENT),
            (lambda: g.read_file("etc/hostname"), errno.EINVAL),
            (lambda: g.ls("/etc/hostname"), errno.ENOTDIR),
            (lambda: g.write("/etc", b"x"), errno.EISDIR),
            (lambda: g.write("/no/such/dir/file", b"x"), errno.ENOENT),
        ]
        for call, err in cases:
            with pytest.raises(GuestFileError) as info:
                call()
            assert info.value.errno == err, info.value

        # write, read back, overwrite (truncates)
        g.write("/root/vmcraft-test.bin", payload)
        assert g.read_file("/root/vmcraft-test.bin") == payload
        assert g.is_file("/root/vmcraft-test.bin")
        assert "vmcraft-test.bin" in g.ls("/root")
        g.write("/root/vmcraft-test.txt", "long text, then\n")
        g.write("/root/vmcraft-test.txt", "short\n")
        assert g.cat("/root/vmcraft-test.txt") == "short\n"
        assert g.command(["cat", "/root/vmcraft-test.txt"]) == "short\n"

        # one filesystem per mount point, / first
        with pytest.raises(GuestMountError, match="already mounted"):
            g.mount(ROOT, "/")
        with pytest.raises(GuestMountError, match="already mounted"):
            g.mount_ro("/dev/sda1", "/")
        with pytest.raises(GuestMountError, match="no filesystem"):
            g.mount("/dev/sda1", "/mnt")
        assert g.mountpoints() == {ROOT: "/"}

    # The writes reached the image (through the daemon for qcow2 and vmdk).
    with launched(copy) as g:
        g.mount(ROOT, "/")
        assert g.read_file("/root/vmcraft-test.bin") == payload
        assert g.cat("/root/vmcraft-test.txt") == "short\n"


def fds_under(root: Path) -> set[int]:
    """This process's open fds on files inside ``root``."""
    found = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if target.startswith(os.fspath(root) + "/"):
            found.add(int(name))
    return found


def test_read_file_of_a_directory(pristine: Callable[[str], Pristine]) -> None:
    with launched(pristine("raw").path) as g:
        g.mount(ROOT, "/")
        before = fds_under(g.root)
        try:
            with pytest.raises(GuestFileError) as info:
                g.read_file("/etc")
            assert info.value.errno in (errno.EISDIR, errno.EINVAL)
            assert fds_under(g.root) == before, "read_file leaked an fd"
        finally:
            for fd in fds_under(g.root) - before:
                os.close(fd)  # so the handle can still shut down cleanly


def run_watched(call: Callable[[], object], fifo: Path, unblock: int) -> tuple[bool, list[object]]:
    """Run ``call`` in a thread; if it blocks on ``fifo``, open the other end to free it.

    Returns whether it had blocked, and what it returned or raised.
    """
    out: list[object] = []

    def target() -> None:
        try:
            out.append(call())
        except Exception as exc:  # handed to the test
            out.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(3)
    blocked = thread.is_alive()
    if blocked:
        with contextlib.suppress(OSError):  # no one on the other end: stuck elsewhere
            os.close(os.open(fifo, unblock | os.O_NONBLOCK | os.O_CLOEXEC))
        thread.join(10)
    assert not thread.is_alive(), "the call is stuck on the FIFO"
    return blocked, out


@pytest.mark.parametrize("call", ["read_file", "write"])
def test_a_guest_fifo_does_not_block_file_calls(call: str, image_copy: CopyImage) -> None:
    with launched(image_copy("raw"), readonly=False) as g:
        g.mount(ROOT, "/")
        g.command(["mkfifo", "/root/fifo"])
        fifo = g.root / "root" / "fifo"
        if call == "read_file":
            blocked, out = run_watched(lambda: g.read_file("/root/fifo"), fifo, os.O_WRONLY)
        else:
            blocked, out = run_watched(lambda: g.write("/root/fifo", b"x"), fifo, os.O_RDONLY)
        assert len(out) == 1
        assert isinstance(out[0], GuestFileError)
        assert not blocked, f"{call} blocked on a guest FIFO"


def test_a_guest_fifo_does_not_hang_inspection(image_copy: CopyImage) -> None:
    copy = image_copy("raw")
    with launched(copy, readonly=False) as g:
        g.mount(ROOT, "/")
        g.command(["sh", "-c", "rm /etc/fstab && mkfifo /etc/fstab"])
    with launched(copy) as g:
        g.mount(ROOT, "/")  # the same filesystem: its FIFO is the scratch mount's FIFO
        blocked, out = run_watched(g.inspect_os, g.root / "etc" / "fstab", os.O_WRONLY)
        assert out == [[ROOT]]
        assert not blocked, "inspect_os blocked on a guest FIFO"


@pytest.mark.parametrize("spelling", ["/", "/dev/sda2", "/dev/vda2"])
def test_umount_root(spelling: str, pristine: Callable[[str], Pristine]) -> None:
    with launched(pristine("raw").path) as g:
        g.mount(ROOT, "/")
        g.umount(spelling)
        assert g.mountpoints() == {}
        with pytest.raises(NotLaunchedError):
            g.read_file("/etc/hostname")
        g.mount(ROOT, "/")  # and it can be mounted again
        assert g.cat("/etc/hostname") == "vmcraft-demo\n"


def test_umount_names_the_mount_it_unmounts(pristine: Callable[[str], Pristine]) -> None:
    with launched(pristine("raw").path) as g:
        g.mount(ROOT, "/")
        g.mount_ro(ROOT, "/mnt")  # the same read-only filesystem, a second time
        assert g.mounts() == [ROOT, ROOT]
        g.umount("/mnt")
        assert g.mounts() == [ROOT]
        assert g.mountpoints() == {ROOT: "/"}
        assert g.cat("/etc/hostname") == "vmcraft-demo\n"


def test_umount_all(pristine: Callable[[str], Pristine]) -> None:
    with launched(pristine("raw").path) as g:
        before = mount_table()
        g.mount(ROOT, "/")
        g.mount_ro(ROOT, "/mnt")
        g.umount_all()
        assert g.mountpoints() == {}
        assert mount_table() == before
        g.umount_all()  # nothing mounted: nothing to do
        g.mount(ROOT, "/")
        assert g.cat("/etc/hostname") == "vmcraft-demo\n"


def test_umount_of_what_is_not_mounted_keeps_root(pristine: Callable[[str], Pristine]) -> None:
    with launched(pristine("raw").path) as g:
        with pytest.raises(GuestMountError):
            g.umount("/")
        g.mount(ROOT, "/")
        with pytest.raises(GuestMountError):
            g.umount("/mnt")
        assert g.mountpoints() == {ROOT: "/"}
        assert g.cat("/etc/hostname") == "vmcraft-demo\n"


# -- the guest's symlinks stay in the guest ------------------------------------------


def test_guest_symlinks_never_reach_host_files(image_copy: CopyImage, tmp_path: Path) -> None:
    secret = tmp_path / "host-only" / "secret"
    secret.parent.mkdir()
    secret.write_text("HOST SECRET\n")
    up = "../" * 12
    with launched(image_copy("raw"), readonly=False) as g:
        g.mount(ROOT, "/")
        g.command(["ln", "-s", os.fspath(secret), "/root/absolute"])
        g.command(["ln", "-s", up + os.fspath(secret).lstrip("/"), "/root/relative"])
        g.command(["ln", "-s", os.fspath(secret.parent), "/root/hostdir"])
        assert g.command(["readlink", "/root/absolute"]).strip() == os.fspath(secret)
        for link in ("/root/absolute", "/root/relative"):
            with pytest.raises(GuestFileError) as info:
                g.read_file(link)
            assert info.value.errno == errno.ENOENT
            with pytest.raises(GuestFileError):
                g.cat(link)
            assert not g.exists(link)
            assert not g.is_file(link, followsymlinks=True)
            with pytest.raises(GuestFileError) as info:
                g.write(link, b"overwritten by the guest\n")
            assert info.value.errno == errno.ENOENT
        with pytest.raises(GuestFileError) as info:
            g.ls("/root/hostdir")
        assert info.value.errno == errno.ENOENT
        assert not g.is_dir("/root/hostdir", followsymlinks=True)

        # A link to a guest file resolves inside the guest, even through ../..
        g.command(["ln", "-s", up + "etc/hostname", "/root/inside"])
        assert g.read_file("/root/inside") == b"vmcraft-demo\n"
    assert secret.read_text() == "HOST SECRET\n"
    assert sorted(os.listdir(secret.parent)) == ["secret"]


def test_symlinked_mount_points_are_refused(image_copy: CopyImage) -> None:
    with launched(image_copy("raw"), readonly=False) as g:
        g.mount(ROOT, "/")
        g.command(["sh", "-c", "rmdir /mnt && ln -s /etc /mnt"])
        g.command(["sh", "-c", "rmdir /media && ln -s ../../../../../../etc /media"])
        before = mount_table()
        for point in ("/mnt", "/mnt/", "/mnt/default", "/media", "/../mnt", "/srv/../media"):
            with pytest.raises(GuestMountError, match="symbolic link"):
                g.mount_ro(ROOT, point)
            with pytest.raises(GuestMountError, match="symbolic link"):
                g.mount(ROOT, point)
        with pytest.raises(GuestMountError, match="regular file"):
            g.mount_ro(ROOT, "/etc/hostname")
        with pytest.raises(GuestMountError, match="does not exist"):
            g.mount_ro(ROOT, "/no/such/dir")
        with pytest.raises(GuestMountError, match="absolute"):
            g.mount_ro(ROOT, "etc")
        assert mount_table() == before
        assert "/etc" not in host_mount_points()
        assert g.mountpoints() == {ROOT: "/"}
        assert g.cat("/etc/hostname") == "vmcraft-demo\n"


# -- read-only by default --------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_drives_are_read_only_by_default(fmt: str, pristine: Callable[[str], Pristine]) -> None:
    image = pristine(fmt)
    with VMCraft() as g:
        g.add_drive_opts(image.path)
        g.launch()
        assert " ro]" in repr(g)
        # Asking for rw does not get past the read-only loop device.
        with pytest.raises(GuestMountError):
            g.mount_options("rw", ROOT, "/")
        assert g.mountpoints() == {}
        g.mount(ROOT, "/")
        assert g.cat("/etc/hostname") == "vmcraft-demo\n"
        with pytest.raises(GuestFileError) as info:
            g.write("/etc/hostname", "changed\n")
        assert info.value.errno == errno.EROFS
        with pytest.raises(GuestFileError) as info:
            g.write("/root/new-file", "new\n")
        assert info.value.errno == errno.EROFS
        with pytest.raises(CommandError, match="Read-only file system"):
            g.command_with_mounts(["touch", "/x"])
        with pytest.raises(CommandError):
            g.command(["sh", "-c", "echo changed > /etc/hostname"])
        assert g.cat("/etc/hostname") == "vmcraft-demo\n"
    image.assert_unchanged()


# -- inspection ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_inspection(fmt: str, pristine: Callable[[str], Pristine]) -> None:
    image = pristine(fmt)
    with launched(image.path) as g:
        before = mount_table()
        assert g.inspect_os() == [ROOT]
        assert mount_table() == before, "inspection left a mount behind"
        assert g.mountpoints() == {}
        assert g.inspect_get_type(ROOT) == "linux"
        assert g.inspect_get_distro(ROOT) == "debian"
        assert g.inspect_get_product_name(ROOT).startswith("Debian GNU/Linux 12")
        assert g.inspect_get_major_version(ROOT) == 12
        assert g.inspect_get_minor_version(ROOT) >= 0
        assert g.inspect_get_mountpoints(ROOT) == {"/": ROOT}
        assert g.inspect_get_distro("/dev/vda2") == "debian"
        with pytest.raises(GuestMountError):
            g.inspect_get_type("/dev/sda1")
        found = g.inspect(ROOT)

        # repeatable, and in agreement with what the mounted guest says
        assert g.inspect_os() == [ROOT]
        g.mount(ROOT, "/")
        major, minor = g.cat("/etc/debian_version").strip().split(".")[:2]
        assert (g.inspect_get_major_version(ROOT), g.inspect_get_minor_version(ROOT)) == (
            int(major),
            int(minor),
        )

    # A fresh handle, inspecting with the root already mounted (read-only), agrees.
    with launched(image.path) as g:
        g.mount(ROOT, "/")
        assert g.inspect_os() == [ROOT]
        assert g.inspect(ROOT) == found
    image.assert_unchanged()


def test_inspection_with_root_mounted_read_write(image_copy: CopyImage) -> None:
    with launched(image_copy("raw"), readonly=False) as g:
        g.mount(ROOT, "/")
        assert g.inspect_os() == [ROOT]


# -- shutdown --------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_close_releases_everything(fmt: str, pristine: Callable[[str], Pristine]) -> None:
    image = pristine(fmt)
    before = snapshot()
    g = launched(image.path)
    g.mount(ROOT, "/")
    root = g.root
    assert root.is_relative_to(STATE_ROOT)
    assert os.fspath(root) in host_mount_points()
    assert snapshot()["state directories"] != before["state directories"]
    if fmt == "raw":
        assert loops_backed_by(image.path)
    else:
        assert snapshot()["image daemons"] != before["image daemons"]

    g.close()
    assert snapshot() == before
    assert not loops_backed_by(image.path)
    assert not root.exists()
    with pytest.raises(NotLaunchedError):
        g.list_devices()
    with pytest.raises(NotLaunchedError):
        g.mount(ROOT, "/")
    with pytest.raises(NotLaunchedError):
        g.read_file("/etc/hostname")
    with pytest.raises(NotLaunchedError):
        g.inspect_os()
    assert g.mountpoints() == {}
    g.close()  # a second close is harmless
    g.shutdown()
    assert snapshot() == before


def test_with_block_releases_everything_on_error(pristine: Callable[[str], Pristine]) -> None:
    before = snapshot()
    with pytest.raises(ZeroDivisionError), VMCraft() as g:  # noqa: PT012
        g.add_drive_opts(pristine("qcow2").path)
        g.launch()
        g.mount(ROOT, "/")
        _ = 1 / 0
    assert snapshot() == before
    with pytest.raises(NotLaunchedError):
        g.list_devices()


def test_two_handles_nested(pristine: Callable[[str], Pristine]) -> None:
    raw, qcow2 = pristine("raw"), pristine("qcow2")
    with launched(raw.path) as outer:
        assert outer.inspect_os() == [ROOT]
        outer.mount(ROOT, "/")
        with launched(qcow2.path) as inner:
            assert inner.list_devices() == ["/dev/sda"]
            assert inner.inspect_os() == [ROOT]
            inner.mount(ROOT, "/")
            assert inner.root != outer.root
            assert inner.cat("/etc/hostname") == "vmcraft-demo\n"
            assert outer.cat("/etc/hostname") == "vmcraft-demo\n"
            assert inner.inspect(ROOT) == outer.inspect(ROOT)
        # the inner handle's shutdown left the outer one alone
        assert outer.mountpoints() == {ROOT: "/"}
        assert outer.cat("/etc/hostname") == "vmcraft-demo\n"
        assert outer.list_partitions() == ["/dev/sda1", "/dev/sda2"]


def test_two_handles_in_threads(pristine: Callable[[str], Pristine], debian: DebianDisk) -> None:
    images = [pristine("raw").path, pristine("qcow2").path]
    rounds = 3
    barrier = threading.Barrier(len(images))
    results: dict[int, list[tuple[str, str, list[str]]]] = {i: [] for i in range(len(images))}
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            for _ in range(rounds):
                barrier.wait(timeout=60)
                with VMCraft() as g:
                    g.add_drive_opts(images[index])
                    g.launch()
                    g.mount(ROOT, "/")
                    results[index].append((g.cat("/etc/hostname"), g.vfs_uuid(ROOT), g.ls("/boot")))
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(images))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    for seen in results.values():
        assert len(seen) == rounds
        for hostname, uuid, boot in seen:
            assert hostname == "vmcraft-demo\n"
            assert uuid == debian.root_uuid
            assert f"vmlinuz-{debian.kernel}" in boot


# -- bad input ---------------------------------------------------------------------------------


def make_raw(path: Path, size: int = 1 << 20) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def a_raw_file(tmp: Path) -> Path:
    return make_raw(tmp / "disk.raw")


def bad_missing(tmp: Path) -> Path:
    return tmp / "missing.qcow2"


def bad_directory(tmp: Path) -> Path:
    (tmp / "adir").mkdir()
    return tmp / "adir"


def bad_empty(tmp: Path) -> Path:
    return make_raw(tmp / "empty.img", 0)


def bad_corrupt_qcow2(tmp: Path) -> Path:
    path = tmp / "corrupt.qcow2"
    path.write_bytes(b"QFI\xfb" + b"\xa5\x17garbage" * 512)
    return path


def bad_overlay(tmp: Path) -> Path:
    base = make_raw(tmp / "base.raw")
    qemu_img("create", "-q", "-f", "qcow2", "-b", os.fspath(base), "-F", "raw", f"{tmp}/o.qcow2")
    return tmp / "o.qcow2"


def bad_disguised_overlay(tmp: Path) -> Path:
    """A "raw" disk whose first sector is a qcow2 header naming a host file (CVE-2010-3851)."""
    path = tmp / "disk.raw"
    qemu_img("create", "-q", "-f", "qcow2", "-u", "-b", "/etc/shadow", "-F", "raw", f"{path}", "1M")
    return path


def bad_flat_vmdk(tmp: Path) -> Path:
    qemu_img("create", "-q", "-f", "vmdk", "-o", "subformat=monolithicFlat", f"{tmp}/d.vmdk", "1M")
    return tmp / "d.vmdk"


BAD_IMAGES: list[tuple[Callable[[Path], Path], str | None, type[Exception], str]] = [
    (bad_missing, None, ImageNotFoundError, "does not exist"),
    (bad_missing, "qcow2", ImageNotFoundError, "does not exist"),
    (bad_directory, None, ImageNotFoundError, "not a file or block device"),
    (bad_empty, None, ImageFormatError, "has no size"),
    (bad_empty, "raw", ImageFormatError, "has no size"),
    (bad_corrupt_qcow2, None, ImageFormatError, "cannot read"),
    (bad_corrupt_qcow2, "qcow2", ImageFormatError, "cannot read"),
    (bad_overlay, None, ImageFormatError, "backing file"),
    (bad_overlay, "qcow2", ImageFormatError, "backing file"),
    (bad_disguised_overlay, None, ImageFormatError, r"backing file \(/etc/shadow\)"),
    (bad_flat_vmdk, None, ImageFormatError, "extent elsewhere"),
    (a_raw_file, "qcow2", ImageFormatError, "not in qcow2 format"),
    (a_raw_file, "vmdk", ImageFormatError, "cannot read"),
    (a_raw_file, "foo", ImageFormatError, "'foo' is not supported"),
]


@pytest.mark.parametrize(
    ("make", "fmt", "error", "match"),
    BAD_IMAGES,
    ids=[f"{make.__name__}-{fmt}" for make, fmt, *_ in BAD_IMAGES],
)
def test_bad_images_are_refused_at_add(
    tmp_path: Path,
    make: Callable[[Path], Path],
    fmt: str | None,
    error: type[Exception],
    match: str,
) -> None:
    path = make(tmp_path)
    before = snapshot()
    with VMCraft() as g:
        with pytest.raises(error, match=match):
            g.add_drive_opts(path, format=fmt)
        with pytest.raises(DriveError, match="no drives"):
            g.launch()  # the refused drive was not recorded
        assert snapshot() == before
    assert snapshot() == before


def test_forcing_qcow2_on_the_raw_guest_is_refused(pristine: Callable[[str], Pristine]) -> None:
    with VMCraft() as g:
        with pytest.raises(ImageFormatError, match="not in qcow2 format"):
            g.add_drive_opts(pristine("raw").path, format="qcow2")
        g.add_drive_opts(pristine("qcow2").path, format="qcow2")
        g.launch()
        assert g.list_filesystems()[ROOT] == "ext4"


def test_a_blank_raw_disk_has_nothing_to_mount(tmp_path: Path) -> None:
    with launched(make_raw(tmp_path / "blank.raw")) as g:
        assert g.list_devices() == ["/dev/sda"]
        assert g.list_partitions() == []
        assert g.list_filesystems() == {}
        assert g.inspect_os() == []
        with pytest.raises(GuestMountError, match="no filesystem"):
            g.mount("/dev/sda", "/")
        with pytest.raises(UnknownDeviceError):
            g.mount("/dev/sda1", "/")
        assert g.mountpoints() == {}


def test_calls_in_the_wrong_order(pristine: Callable[[str], Pristine]) -> None:
    image = pristine("raw").path
    with VMCraft() as g:
        with pytest.raises(DriveError, match="no drives"):
            g.launch()
        with pytest.raises(NotLaunchedError):
            g.mount(ROOT, "/")
        with pytest.raises(NotLaunchedError):
            g.list_devices()
        with pytest.raises(NotLaunchedError):
            g.read_file("/etc/hostname")
        with pytest.raises(NotLaunchedError):
            g.inspect_os()
        g.add_drive_opts(image)
        with pytest.raises(NotLaunchedError):
            g.mount(ROOT, "/")  # added, not launched
        g.launch()
        with pytest.raises(AlreadyLaunchedError):
            g.launch()
        with pytest.raises(AlreadyLaunchedError):
            g.add_drive_opts(image)
        for call in (g.read_file, g.cat, g.ls, g.exists):
            with pytest.raises(NotLaunchedError):
                call("/etc/hostname")  # launched, / not mounted
        with pytest.raises(NotLaunchedError):
            g.command(["true"])
        assert g.list_devices() == ["/dev/sda"]  # still one drive


# -- a killed process ----------------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import glob, os, sys, time
    from vmcraft import VMCraft

    g = VMCraft()
    g.add_drive_opts(sys.argv[1])
    g.launch()
    loops = [
        p for p in glob.glob("/sys/block/loop*/loop/backing_file")
        if open(p).read().strip() == sys.argv[1]
    ]
    print("child:", len(loops), g.list_partitions(), flush=True)
    if sys.argv[2] == "exit":
        os._exit(0)
    time.sleep(600)
    """
)


@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_a_killed_process_leaks_no_loop_device(
    how: str, pristine: Callable[[str], Pristine], tmp_path: Path
) -> None:
    image = pristine("raw").path
    state = tmp_path / "state"
    env = dict(os.environ, VMCRAFT_STATE_DIR=os.fspath(state))
    before = mount_table()
    with subprocess.Popen(
        [sys.executable, "-c", CHILD, os.fspath(image), how],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        assert child.stdout is not None
        line = next((ln for ln in child.stdout if ln.startswith("child:")), "")  # past the logs
        if how == "sigkill":
            child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert line.strip() == "child: 1 ['/dev/sda1', '/dev/sda2']"
    deadline = time.monotonic() + 5
    while loops_backed_by(image) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert loops_backed_by(image) == []
    assert mount_table() == before
    # What a dead process cannot clean up: its (empty, unmounted) state directory.
    (leftover,) = state.iterdir()
    assert [p.name for p in leftover.iterdir()] == ["root"]
    assert not any(p.startswith(os.fspath(state)) for p in host_mount_points())
