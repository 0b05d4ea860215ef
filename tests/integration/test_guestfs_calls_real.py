"""The libguestfs-compatible calls (vmcraft.guestfs) on real guest disks.

Each call is checked for what a script written against ``guestfs.GuestFS``
(``python_return_dict=True``) expects: argument order, return shapes, and a
``RuntimeError`` where libguestfs raises one. Guest paths must resolve in the
guest, so several tests plant guest symlinks to host directories and check
the host is never listed, read or written.

Read-only tests share one launched handle on a pristine copy; tests that
write get a copy and a handle of their own.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

import vmcraft
from tests.conftest import CopyImage, launched
from tests.fixtures.guestdisk import DebianDisk
from tests.fixtures.lvmdisk import BOOT_UUID, LvmDisk, lvm_disk
from tests.leaks import mount_table, snapshot
from vmcraft import (
    GuestFileError,
    GuestMountError,
    UnknownDeviceError,
    VMCraft,
    VMCraftError,
)

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("leak_check")]

ROOT = "/dev/sda2"
HOSTNAME = b"vmcraft-demo\n"


# -- helpers and shared handles ----------------------------------------------------


def copy_image(source: Path, target: Path, mode: int) -> Path:
    subprocess.run(
        ["cp", "--sparse=always", "--", os.fspath(source), os.fspath(target)], check=True
    )
    target.chmod(mode)
    return target


@pytest.fixture(scope="module")
def pristine(debian: DebianDisk, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only copy of the Debian disk, shared by the module."""
    return copy_image(debian.raw, tmp_path_factory.mktemp("pristine") / "guest.raw", 0o444)


@pytest.fixture(scope="module")
def ro(pristine: Path) -> Iterator[VMCraft]:
    """One launched read-only handle, its root mounted, for the tests that only read.

    Made before (and closed after) every test's own leak check, so it checks
    its own release here.
    """
    before = snapshot()
    g = launched(pristine)
    try:
        g.mount(ROOT, "/")
        yield g
        assert g.mountpoints() == {ROOT: "/"}, "a test changed the shared handle"
    finally:
        g.close()
    assert snapshot() == before


@pytest.fixture
def rw(image_copy: CopyImage) -> Iterator[VMCraft]:
    """A handle on a writable copy of its own, /dev/sda2 mounted on /."""
    with launched(image_copy("raw"), readonly=False) as g:
        g.mount(ROOT, "/")
        yield g


@pytest.fixture(scope="module")
def lvm_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    disk: LvmDisk = lvm_disk()
    return copy_image(disk.raw, tmp_path_factory.mktemp("lvm") / "lvm.raw", 0o444)


def file_errno(call: object, *args: object) -> int:
    """The errno of the GuestFileError ``call(*args)`` raises."""
    assert callable(call)
    with pytest.raises(GuestFileError) as info:
        call(*args)
    return info.value.errno


def returns_none(call: Callable[..., object], *args: object, **kwargs: object) -> bool:
    """Whether ``call`` returns None, as the libguestfs call it stands for does."""
    return call(*args, **kwargs) is None


def listing_or_refusal(call: Callable[[str], list[str]], path: str) -> list[str]:
    """What ``call(path)`` lists; [] when it refuses with ENOENT or ENOTDIR."""
    try:
        return call(path)
    except GuestFileError as exc:
        if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
            raise
        return []


def host_mount_points() -> set[str]:
    return {point for _, point, _ in mount_table()}


@pytest.fixture
def host_dir(tmp_path: Path) -> Path:
    """An empty host-only directory: the target of the guest's escaping symlinks."""
    path = tmp_path / f"host-only-{uuid.uuid4().hex}"
    path.mkdir()
    return path


# -- the handle ---------------------------------------------------------------------


def test_handle_calls(ro: VMCraft) -> None:
    version = ro.version()
    assert set(version) == {"major", "minor", "release", "extra"}
    assert all(type(version[k]) is int for k in ("major", "minor", "release"))
    assert version["extra"] == "vmcraft"
    numbers = [int(x) for x in re.findall(r"\d+", vmcraft.__version__)[:3]]
    assert [version["major"], version["minor"], version["release"]] == numbers

    assert ro.get_backend_settings() == []
    assert ro.get_trace() == 0
    ro.set_trace(1)
    assert ro.get_trace() == 1
    ro.set_trace(False)
    assert ro.get_trace() == 0
    assert returns_none(ro.sync)


def test_handle_calls_before_launch() -> None:
    with VMCraft() as g:
        assert g.version()["extra"] == "vmcraft"
        assert g.get_backend_settings() == []
        g.set_trace(True)
        assert g.get_trace() == 1
        g.sync()
        with pytest.raises(RuntimeError):
            g.blkid(ROOT)
        with pytest.raises(RuntimeError):
            g.vgs()


# -- devices ------------------------------------------------------------------------


def test_blkid_and_findfs(ro: VMCraft, debian: DebianDisk) -> None:
    ids = ro.blkid(ROOT)
    assert isinstance(ids, dict)
    assert ids["TYPE"] == "ext4"
    assert ids["UUID"] == debian.root_uuid
    assert ids["LABEL"] == "debroot"
    assert ro.blkid("/dev/vda2")["UUID"] == debian.root_uuid  # an alias, the same device
    assert "TYPE" not in ro.blkid("/dev/sda1")  # BIOS boot: no filesystem
    assert ro.blkid("/dev/sda")["PTTYPE"] == "gpt"

    assert ro.findfs_uuid(debian.root_uuid) == ROOT
    assert ro.findfs_label("debroot") == ROOT
    for call, value in (
        (ro.findfs_uuid, "00000000-0000-0000-0000-000000000000"),
        (ro.findfs_label, "no-such-label"),
        (ro.findfs_label, ""),
    ):
        with pytest.raises(VMCraftError):
            call(value)
        with pytest.raises(RuntimeError):
            call(value)

    for name in ("/dev/sda9", "/dev/sdb1", "/dev/loop0"):
        with pytest.raises(UnknownDeviceError):
            ro.blkid(name)


def test_blkid_names_the_guest_device(ro: VMCraft) -> None:
    ids = ro.blkid(ROOT)
    assert ids.get("DEVNAME", ROOT) == ROOT
    assert not any("/dev/loop" in value for value in ids.values())


def test_cryptsetup_open_refusals(ro: VMCraft) -> None:
    for device in (ROOT, "/dev/sda1", "/dev/sda"):
        with pytest.raises(RuntimeError, match="not a LUKS device"):
            ro.cryptsetup_open(device, "secret", "luksroot")
        with pytest.raises(RuntimeError, match="not a LUKS device"):
            ro.cryptsetup_open(device, "secret", "luksroot", readonly=True)
    for device in ("/dev/sdz1", "/dev/sda9", "/dev/mapper/nothing"):
        with pytest.raises(UnknownDeviceError):
            ro.cryptsetup_open(device, "secret", "luksroot")
    assert not os.path.exists("/dev/mapper/luksroot")


# -- LVM ------------------------------------------------------------------------------


def test_lvm_calls(lvm_image: Path) -> None:
    with launched(lvm_image) as g:
        assert g.vgs() == ["vmcvg"]
        assert g.pvs() == ["/dev/sda2"]
        lvs = g.lvs()
        assert {"/dev/vmcvg/root", "/dev/vmcvg/data", "/dev/vmcvg/gap"} <= set(lvs)
        assert lvs == sorted(lvs)
        assert returns_none(g.vgscan)
        assert returns_none(g.vgchange_activate_all, True)
        assert g.vgs() == ["vmcvg"]

        # findfs names the LV or partition, never the PV
        assert g.findfs_label("lvroot") == "/dev/vmcvg/root"
        assert g.findfs_label("lvdata") == "/dev/vmcvg/data"
        assert g.findfs_uuid(BOOT_UUID) == "/dev/sda1"
        assert g.findfs_label("lvmboot") == "/dev/sda1"
        with pytest.raises(RuntimeError):
            g.findfs_uuid(g.blkid("/dev/sda2")["UUID"])  # the PV's own UUID
        assert g.blkid("/dev/sda2")["TYPE"] == "LVM2_member"
        assert g.blkid("/dev/vmcvg/root")["LABEL"] == "lvroot"

        with pytest.raises(RuntimeError, match="not a LUKS device"):
            g.cryptsetup_open("/dev/vmcvg/root", "secret", "luks")
        with pytest.raises(RuntimeError, match="not a LUKS device"):
            g.cryptsetup_open("/dev/sda2", "secret", "luks")

        # Deactivating is refused while an LV is mounted, whichever LV.
        g.mount("/dev/vmcvg/root", "/")
        with pytest.raises(RuntimeError, match="mounted"):
            g.vgchange_activate_all(False)
        g.mount("/dev/sda1", "/boot")
        with pytest.raises(RuntimeError):
            g.vgchange_activate_all(False)
        g.umount_all()
        g.mount("/dev/mapper/vmcvg-data", "/")
        with pytest.raises(RuntimeError):
            g.vgchange_activate_all(False)
        assert g.cat("/marker") == "data LV\n"
        assert g.mountpoints() == {"/dev/vmcvg/data": "/"}


# -- reading the guest ------------------------------------------------------------------


def test_read_only_file_calls(ro: VMCraft, debian: DebianDisk) -> None:
    kernel = f"/boot/vmlinuz-{debian.kernel}"
    assert ro.glob_expand("/boot/vmlinuz-*") == [kernel]
    assert "/etc/hostname" in ro.glob_expand("/etc/host*")
    assert ro.glob_expand("/etc/host*") == sorted(ro.glob_expand("/etc/host*"))
    assert ro.glob_expand("/nonexistent/*") == []
    assert ro.glob_expand("/etc/hostname/*") == []
    assert ro.glob_expand("/boot/grub") == ["/boot/grub"]
    assert ro.glob_expand("/boot/gr*", directoryslash=True) == ["/boot/grub/"]
    assert ro.glob_expand("/boot/vmlinuz-*", directoryslash=True) == [kernel]

    assert ro.realpath("/") == "/"
    assert ro.realpath("/etc/hostname") == "/etc/hostname"
    assert ro.realpath("/bin") == "/usr/bin"  # merged /usr
    assert ro.realpath("/vmlinuz") == kernel
    assert ro.realpath("/etc/../etc/./hostname") == "/etc/hostname"
    assert ro.realpath("/../../etc/hostname") == "/etc/hostname"
    assert file_errno(ro.realpath, "/no/such/file") == errno.ENOENT

    assert ro.is_link("/vmlinuz")
    assert ro.is_link("/bin")
    assert not ro.is_link("/etc")
    assert not ro.is_link("/etc/hostname")
    assert not ro.is_link("/no/such/file")

    vfs = ro.statvfs("/")
    assert vfs["bsize"] > 0
    assert vfs["blocks"] > 0
    assert 0 <= vfs["bfree"] <= vfs["blocks"]
    assert vfs["namemax"] == 255
    assert ro.statvfs("/etc/hostname")["blocks"] == vfs["blocks"]
    assert file_errno(ro.statvfs, "/no/such/dir") == errno.ENOENT

    assert ro.filesize("/etc/hostname") == len(HOSTNAME)
    assert ro.filesize("/vmlinuz") == ro.filesize(kernel)  # follows the link

    ns = ro.statns("/etc/hostname")
    st = ro.stat("/etc/hostname")
    assert ns["st_mtime_sec"] == st["mtime"]
    assert 0 <= ns["st_mtime_nsec"] < 1_000_000_000
    assert 0 <= ns["st_atime_nsec"] < 1_000_000_000
    assert ns["st_size"] == st["size"] == len(HOSTNAME)
    assert ns["st_mode"] == st["mode"]
    assert ns["st_ino"] == st["ino"]
    assert all(type(v) is int for v in ns.values())
    assert file_errno(ro.statns, "/no/such/file") == errno.ENOENT

    assert ro.inspect_get_arch(ROOT) == "x86_64"


def test_download_from_a_read_only_guest(ro: VMCraft, tmp_path: Path) -> None:
    target = tmp_path / "hostname"
    ro.download("/etc/hostname", os.fspath(target))
    assert target.read_bytes() == HOSTNAME
    assert file_errno(ro.download, "/no/such/file", os.fspath(tmp_path / "x")) == errno.ENOENT
    assert not (tmp_path / "x").exists()
    assert file_errno(ro.upload, os.fspath(target), "/root/up") == errno.EROFS


def test_inspect_get_arch_needs_no_mount(pristine: Path) -> None:
    with launched(pristine) as g:
        assert g.inspect_os() == [ROOT]
        assert g.inspect_get_arch(ROOT) == "x86_64"


def test_inspect_get_arch_of_a_non_root_raises(ro: VMCraft) -> None:
    assert ro.inspect_os() == [ROOT]
    with pytest.raises(RuntimeError):
        ro.inspect_get_arch("/dev/sda1")


# -- writing the guest ------------------------------------------------------------------


def test_directories_modes_and_links(rw: VMCraft) -> None:
    g = rw
    g.mkdir_p("/a/b/c")
    for path in ("/a", "/a/b", "/a/b/c"):
        assert g.is_dir(path), path
    g.mkdir_p("/a/b/c")  # already there: fine
    g.mkdir_p("/a//b/./d/")
    assert g.is_dir("/a/b/d")
    assert file_errno(g.mkdir, "/a/b") == errno.EEXIST
    assert file_errno(g.mkdir, "/no/such/parent") == errno.ENOENT
    assert file_errno(g.mkdir_p, "/etc/hostname/sub") in (errno.EEXIST, errno.ENOTDIR)
    g.mkdir("/a/e")
    assert g.is_dir("/a/e")
    g.mkdir_p("/usr/../bin/vmcraft-dir")  # through the /bin -> usr/bin link
    assert g.is_dir("/usr/bin/vmcraft-dir")

    g.write("/a/file", b"data\n")
    g.chmod(0o700, "/a/file")
    assert g.stat("/a/file")["mode"] & 0o7777 == 0o700
    g.chmod(0o751, "/a/b")
    assert g.stat("/a/b")["mode"] & 0o777 == 0o751
    assert g.is_dir("/a/b")
    assert file_errno(g.chmod, 0o644, "/no/such/file") == errno.ENOENT

    # ln_sf makes a link, and replaces a link or a file
    g.ln_sf("/etc/hostname", "/a/link")
    assert g.is_link("/a/link")
    assert g.command(["readlink", "/a/link"]).strip() == "/etc/hostname"
    assert g.realpath("/a/link") == "/etc/hostname"
    assert g.read_file("/a/link") == HOSTNAME
    g.ln_sf("/etc/os-release", "/a/link")
    assert g.command(["readlink", "/a/link"]).strip() == "/etc/os-release"
    g.ln_sf("../etc/hostname", "/a/file")
    assert g.is_link("/a/file")
    assert g.realpath("/a/file") == "/etc/hostname"
    # into a directory, as ln -sf does
    g.ln_sf("/etc/hostname", "/a/e")
    assert g.is_dir("/a/e")
    assert g.is_link("/a/e/hostname")
    assert file_errno(g.ln_sf, "/etc/hostname", "/no/such/dir/link") == errno.ENOENT

    # Links resolve in the guest, absolute ones and ones climbing past /.
    g.ln_sf("/etc/hostname", "/root/abs")
    g.ln_sf("../../../../etc/hostname", "/root/rel")
    g.ln_sf("../../../../../../../../../../etc", "/root/etcdir")
    assert g.realpath("/root/abs") == "/etc/hostname"
    assert g.realpath("/root/rel") == "/etc/hostname"
    assert g.realpath("/root/etcdir") == "/etc"
    assert g.realpath("/root/etcdir/hostname") == "/etc/hostname"
    assert g.read_file("/root/rel") == HOSTNAME

    assert g.find("/a") == [
        "b",
        "b/c",
        "b/d",
        "e",
        "e/hostname",
        "file",
        "link",
    ]
    assert g.find("/a/b/c") == []
    assert file_errno(g.find, "/no/such/dir") == errno.ENOENT
    assert file_errno(g.find, "/etc/hostname") == errno.ENOTDIR

    # the guest's own tools see the same tree
    assert g.command(["sh", "-c", "cd /a && find . -mindepth 1 | cut -c3- | sort"]).split() == (
        g.find("/a")
    )


def test_copies_renames_and_removals(rw: VMCraft, tmp_path: Path) -> None:
    g = rw
    g.mkdir_p("/a")
    g.write("/a/src", b"source\n")

    g.cp("/a/src", "/a/copy")
    assert g.read_file("/a/copy") == b"source\n"
    g.write("/a/other", b"a longer file, overwritten\n")
    g.cp("/a/src", "/a/other")
    assert g.read_file("/a/other") == b"source\n"
    g.mkdir("/a/dir")
    g.cp("/etc/hostname", "/a/dir")  # into a directory
    assert g.read_file("/a/dir/hostname") == HOSTNAME
    assert file_errno(g.cp, "/no/such/file", "/a/x") == errno.ENOENT
    assert file_errno(g.cp, "/a/src", "/no/such/dir/x") == errno.ENOENT

    g.copy_file_to_file("/etc/hostname", "/a/c2f")
    assert g.read_file("/a/c2f") == HOSTNAME
    for opts in ({"srcoffset": 1}, {"destoffset": 4}, {"size": 2}):
        with pytest.raises(RuntimeError):
            g.copy_file_to_file("/etc/hostname", "/a/c2f-offset", **opts)
        assert not g.exists("/a/c2f-offset")

    # cp_a: a tree with a link in it, modes kept, links kept as links
    g.mkdir_p("/tree/sub")
    g.write("/tree/sub/secret", b"mode 640\n")
    g.chmod(0o640, "/tree/sub/secret")
    g.chmod(0o750, "/tree/sub")
    g.ln_sf("secret", "/tree/sub/lnk")
    g.ln_sf("/etc/hostname", "/tree/abs")
    g.cp_a("/tree", "/copy")
    assert g.find("/copy") == g.find("/tree") == ["abs", "sub", "sub/lnk", "sub/secret"]
    assert g.is_link("/copy/sub/lnk")
    assert g.command(["readlink", "/copy/sub/lnk"]).strip() == "secret"
    assert g.command(["readlink", "/copy/abs"]).strip() == "/etc/hostname"
    assert g.stat("/copy/sub/secret")["mode"] & 0o7777 == 0o640
    assert g.stat("/copy/sub")["mode"] & 0o7777 == 0o750
    assert g.read_file("/copy/sub/lnk") == b"mode 640\n"
    assert g.statns("/copy/sub/secret")["st_mtime_sec"] == g.stat("/tree/sub/secret")["mtime"]
    g.cp_a("/tree", "/a/dir")  # into an existing directory
    assert g.is_link("/a/dir/tree/sub/lnk")
    g.cp_a("/tree/abs", "/a/abs-copy")  # a link on its own stays a link
    assert g.is_link("/a/abs-copy")
    with pytest.raises(GuestFileError):
        g.cp_a("/no/such/tree", "/a/none")
    assert not g.exists("/a/none")

    g.rename("/a/copy", "/a/renamed")
    assert not g.exists("/a/copy")
    assert g.read_file("/a/renamed") == b"source\n"
    g.rename("/a/renamed", "/a/dir/moved")
    assert g.read_file("/a/dir/moved") == b"source\n"
    assert file_errno(g.rename, "/a/missing", "/a/x") == errno.ENOENT

    g.rm("/a/dir/moved")
    assert not g.exists("/a/dir/moved")
    assert file_errno(g.rm, "/a/dir/moved") == errno.ENOENT
    assert returns_none(g.rm_f, "/a/dir/moved")
    g.ln_sf("/etc/hostname", "/a/lnk")
    g.rm("/a/lnk")  # the link, not its target
    assert not g.is_link("/a/lnk")
    assert g.read_file("/etc/hostname") == HOSTNAME
    for call in (g.rm, g.rm_f):
        with pytest.raises(GuestFileError):
            call("/a/dir")  # directories are not removed
        assert g.is_dir("/a/dir")
    with pytest.raises(GuestFileError):
        g.rm("/etc/hostname/below-a-file")
    # rm -f treats ENOTDIR like ENOENT, as coreutils' rm -f (which libguestfs runs) does.
    assert returns_none(g.rm_f, "/etc/hostname/below-a-file")

    # upload / download round trip through the host
    payload = os.urandom(300_000) + b"\x00end"
    up, down = tmp_path / "up.bin", tmp_path / "down.bin"
    up.write_bytes(payload)
    g.upload(os.fspath(up), "/a/uploaded")
    assert g.filesize("/a/uploaded") == len(payload)
    assert g.read_file("/a/uploaded") == payload
    g.download("/a/uploaded", os.fspath(down))
    assert down.read_bytes() == payload
    with pytest.raises(GuestFileError):
        g.upload(os.fspath(up), "/no/such/dir/x")


def test_rm_f_under_a_missing_directory(rw: VMCraft) -> None:
    rw.rm_f("/no/such/dir/file")


def test_relative_paths_are_refused_by_every_file_call(rw: VMCraft) -> None:
    g = rw
    calls: dict[str, Callable[[], object]] = {
        "mkdir": lambda: g.mkdir("rel-dir"),
        "mkdir_p": lambda: g.mkdir_p("rel-dir/sub"),
        "rm": lambda: g.rm("rel-victim"),
        "rm_f": lambda: g.rm_f("rel-victim"),
        "rename new": lambda: g.rename("/rel-victim", "rel-renamed"),
        "rename old": lambda: g.rename("rel-victim", "/rel-renamed"),
        "chmod": lambda: g.chmod(0o600, "rel-victim"),
        "cp": lambda: g.cp("/etc/hostname", "rel-copy"),
        "cp_a": lambda: g.cp_a("/etc/hostname", "rel-copy"),
        "ln_sf": lambda: g.ln_sf("/etc/hostname", "rel-link"),
        "find": lambda: g.find("etc"),
        "realpath": lambda: g.realpath("etc"),
    }
    accepted = []
    for name, call in calls.items():
        g.write("/rel-victim", b"x")
        try:
            call()
        except GuestFileError as exc:
            if exc.errno != errno.EINVAL:
                accepted.append(f"{name} ({errno.errorcode[exc.errno]})")
        else:
            accepted.append(name)
    assert accepted == []
    assert not g.exists("/rel-dir")


# -- the host stays out of reach ------------------------------------------------------------


def test_listing_never_reaches_host_files(rw: VMCraft, host_dir: Path) -> None:
    g = rw
    unique = f"host-marker-{uuid.uuid4().hex}"
    (host_dir / unique).write_text("HOST\n")
    (host_dir / "sub").mkdir()
    (host_dir / "sub" / unique).write_text("HOST\n")
    g.mkdir_p("/a")
    g.ln_sf(os.fspath(host_dir), "/escape")
    g.ln_sf(os.fspath(host_dir), "/a/escape")
    g.ln_sf("../" * 12 + os.fspath(host_dir).lstrip("/"), "/a/climb")
    assert g.is_link("/escape")

    listings: list[list[str]] = [
        g.glob_expand("/escape/*"),
        g.glob_expand("/escape/" + unique),
        g.glob_expand("/esc*/*"),
        g.glob_expand("/*/" + unique),
        g.glob_expand("/*/*/" + unique),
        g.glob_expand("/a/*/*"),
        g.glob_expand("/a/climb/*"),
        g.glob_expand("/escape/sub/" + unique),
        g.find("/a"),
    ]
    assert g.glob_expand("/escape/*") == []
    assert g.find("/a") == ["climb", "escape"]
    for path in ("/escape", "/a/escape", "/a/climb", "/escape/sub"):
        listings.append(listing_or_refusal(g.find, path))
        listings.append(listing_or_refusal(g.ls, path))
    assert not any(unique in name for listing in listings for name in listing), listings
    assert not g.is_dir("/escape", followsymlinks=True)
    assert not g.exists("/escape/" + unique)
    assert sorted(os.listdir(host_dir)) == sorted([unique, "sub"])


def test_copies_never_write_outside_the_guest(rw: VMCraft, host_dir: Path) -> None:
    g = rw
    g.ln_sf(os.fspath(host_dir), "/outside")
    g.mkdir_p("/a")
    g.ln_sf("../" * 12 + os.fspath(host_dir).lstrip("/"), "/a/climb")
    calls: list[Callable[[], object]] = [
        lambda: g.cp("/etc/hostname", "/outside/x"),
        lambda: g.cp_a("/etc", "/outside/etc2"),
        lambda: g.cp_a("/etc/hostname", "/outside/y"),
        lambda: g.cp("/etc/hostname", "/outside"),
        lambda: g.cp("/etc/hostname", "/a/climb/z"),
        lambda: g.cp_a("/etc/default", "/a/climb/default"),
        lambda: g.copy_file_to_file("/etc/hostname", "/outside/c2f"),
        lambda: g.write("/outside/w", b"x"),
        lambda: g.mkdir_p("/outside/d/e"),
        lambda: g.mkdir("/outside/d"),
        lambda: g.ln_sf("/etc/hostname", "/outside/l"),
        lambda: g.rename("/etc/hostname", "/outside/moved"),
        lambda: g.chmod(0o777, "/outside"),
    ]
    for call in calls:
        with contextlib.suppress(RuntimeError):  # refusing is fine; writing in the guest too
            call()
        assert os.listdir(host_dir) == []
    assert host_dir.stat().st_mode & 0o777 != 0o777
    assert g.read_file("/etc/hostname") == HOSTNAME
    assert g.is_link("/a/climb")


@pytest.mark.parametrize("src", ["/etc/hostname", "/etc/default"])
def test_cp_a_onto_a_link_to_a_host_directory(src: str, rw: VMCraft, host_dir: Path) -> None:
    rw.ln_sf(os.fspath(host_dir), "/outside")
    with contextlib.suppress(RuntimeError):
        rw.cp_a(src, "/outside")
    assert os.listdir(host_dir) == []


# -- mount_local --------------------------------------------------------------------------------


def test_mount_local(rw: VMCraft, tmp_path: Path) -> None:
    g = rw
    local = tmp_path / "local"
    local.mkdir()
    with pytest.raises(GuestMountError):
        g.mount_local_run()  # before mount_local
    with pytest.raises(GuestMountError):
        g.mount_local(os.fspath(tmp_path / "missing"))
    (tmp_path / "file").write_text("")
    with pytest.raises(GuestMountError):
        g.mount_local(os.fspath(tmp_path / "file"))
    assert os.fspath(local) not in host_mount_points()

    g.mount_local(os.fspath(local))
    assert os.fspath(local) in host_mount_points()
    assert (local / "etc" / "hostname").read_bytes() == HOSTNAME
    with pytest.raises(GuestMountError):
        g.mount_local(os.fspath(local))  # one at a time
    start = time.monotonic()
    assert returns_none(g.mount_local_run)
    assert time.monotonic() - start < 5
    # writes through the local tree reach the guest, and back
    (local / "root" / "via-local").write_text("from the host side\n")
    assert g.read_file("/root/via-local") == b"from the host side\n"
    g.write("/root/via-guest", b"from the guest side\n")
    assert (local / "root" / "via-guest").read_bytes() == b"from the guest side\n"

    assert returns_none(g.umount_local)
    assert os.fspath(local) not in host_mount_points()
    assert os.listdir(local) == []
    g.umount_local()  # nothing mounted: nothing to do
    with pytest.raises(GuestMountError):
        g.mount_local_run()
    assert g.read_file("/root/via-local") == b"from the host side\n"

    # and again, after the first one came down
    g.mount_local(os.fspath(local))
    assert (local / "etc" / "hostname").read_bytes() == HOSTNAME
    g.umount_local()
    assert os.listdir(local) == []


def test_mount_local_readonly(rw: VMCraft, tmp_path: Path) -> None:
    g = rw
    local = tmp_path / "local"
    local.mkdir()
    g.mount_local(os.fspath(local), readonly=True)
    assert (local / "etc" / "hostname").read_bytes() == HOSTNAME
    for write in (
        lambda: (local / "root" / "new").write_text("x"),
        lambda: (local / "etc" / "hostname").write_text("changed\n"),
        (local / "newdir").mkdir,
        (local / "etc" / "hostname").unlink,
    ):
        with pytest.raises(OSError, match="Read-only file system") as info:
            write()
        assert info.value.errno == errno.EROFS
    assert (local / "etc" / "hostname").read_bytes() == HOSTNAME
    # the guest's own mount stays writable
    g.write("/root/still-writable", b"yes\n")
    assert (local / "root" / "still-writable").read_bytes() == b"yes\n"
    g.umount_local()
    assert os.listdir(local) == []


def test_close_without_umount_local(image_copy: CopyImage, tmp_path: Path) -> None:
    local = tmp_path / "local"
    local.mkdir()
    g = launched(image_copy("raw"), readonly=False)
    try:
        g.mount(ROOT, "/")
        g.mount_local(os.fspath(local), readonly=True)
        assert (local / "etc" / "hostname").read_bytes() == HOSTNAME
    finally:
        g.close()
    assert os.fspath(local) not in host_mount_points()
    assert os.listdir(local) == []
    g.close()  # twice is harmless


@pytest.fixture
def lvm_rw(lvm_image: Path, tmp_path: Path) -> Iterator[VMCraft]:
    """The LVM disk, writable, with /, /boot and /srv mounted."""
    copy = copy_image(lvm_image, tmp_path / "lvm.raw", 0o644)
    with launched(copy, readonly=False) as g:
        g.mount("/dev/vmcvg/root", "/")
        g.mount("/dev/sda1", "/boot")
        g.mount("/dev/vmcvg/data", "/srv")
        yield g


def test_mount_local_shows_every_guest_mount(lvm_rw: VMCraft, tmp_path: Path) -> None:
    local = tmp_path / "local"
    local.mkdir()
    lvm_rw.mount_local(os.fspath(local))
    assert (local / "etc" / "hostname").read_text() == "lvm-guest\n"
    assert (local / "boot" / "vmlinuz-test").read_text() == "not a kernel\n"
    assert (local / "srv" / "marker").read_text() == "data LV\n"
    lvm_rw.umount_local()
    assert not any(p.startswith(os.fspath(local)) for p in host_mount_points())
    assert os.listdir(local) == []


def test_mount_local_readonly_covers_every_guest_mount(lvm_rw: VMCraft, tmp_path: Path) -> None:
    local = tmp_path / "local"
    local.mkdir()
    lvm_rw.mount_local(os.fspath(local), readonly=True)
    try:
        for sub in ("etc", "boot", "srv"):
            with pytest.raises(OSError, match="Read-only file system") as info:
                (local / sub / "written-through-local").write_text("x")
            assert info.value.errno == errno.EROFS, sub
    finally:
        lvm_rw.umount_local()
    assert not lvm_rw.exists("/boot/written-through-local")


def test_umount_local_with_guest_submounts_is_clean(lvm_rw: VMCraft, tmp_path: Path) -> None:
    local = tmp_path / "local"
    local.mkdir()
    lvm_rw.mount_local(os.fspath(local))
    start = time.monotonic()
    with capture_logs() as events:
        lvm_rw.umount_local()
    elapsed = time.monotonic() - start
    assert not any(p.startswith(os.fspath(local)) for p in host_mount_points())
    assert [e for e in events if e.get("log_level") == "warning"] == []
    assert elapsed < 1.0


# -- e2fsck ------------------------------------------------------------------------------------


def test_e2fsck_on_a_writable_copy(image_copy: CopyImage) -> None:
    with launched(image_copy("raw"), readonly=False) as g:
        assert returns_none(g.e2fsck, ROOT)
        assert returns_none(g.e2fsck, ROOT, correct=True)
        assert returns_none(g.e2fsck, ROOT, forceall=True)
        assert returns_none(g.e2fsck, "/dev/vda2")
        with pytest.raises(RuntimeError, match="only one"):
            g.e2fsck(ROOT, correct=True, forceall=True)
        with pytest.raises(RuntimeError):
            g.e2fsck("/dev/sda1")  # no filesystem there
        with pytest.raises(UnknownDeviceError):
            g.e2fsck("/dev/sda9")

        g.mount(ROOT, "/")
        for spelling in (ROOT, "/dev/vda2"):
            with pytest.raises(RuntimeError, match="mounted"):
                g.e2fsck(spelling)
            with pytest.raises(RuntimeError):
                g.e2fsck(spelling, forceall=True)
        g.umount("/")
        assert returns_none(g.e2fsck, ROOT, forceall=True)
        g.mount(ROOT, "/")  # and the checked filesystem still mounts
        assert g.read_file("/etc/hostname") == HOSTNAME


def test_e2fsck_refusals_on_a_read_only_drive(ro: VMCraft, pristine: Path) -> None:
    with pytest.raises(RuntimeError, match="mounted"):
        ro.e2fsck(ROOT)
    with pytest.raises(RuntimeError):
        ro.e2fsck(ROOT, correct=True, forceall=True)
    with launched(pristine) as g:
        assert returns_none(g.e2fsck, ROOT)  # checking only: allowed read-only
        for opts in ({"correct": True}, {"forceall": True}):
            with pytest.raises(RuntimeError, match="read-only"):
                g.e2fsck(ROOT, **opts)
        with pytest.raises(RuntimeError):
            g.e2fsck(ROOT, correct=True, forceall=True)
