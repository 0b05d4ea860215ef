"""Full disks and read-only filesystems, for real: every failure is a VMCraftError.

A caller written against libguestfs (hyper2kvm) catches ``RuntimeError``; a bare
``OSError`` (ENOSPC from a full guest filesystem, from a full host disk, from
the tmpfs a FAT ESP is staged in) would go past it. The guest filesystems here
are small images made in the test (mkfs.ext4), filled until they are full;
the ESP is the cached UEFI disk's, staged with mtools where the kernel has no
vfat (forced here where it has one).
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import launched, writable_copy
from tests.fixtures.uefidisk import UefiDisk, uefi_disk
from vmcraft import GuestFileError, GuestMountError, HostFileError, VMCraft, VMCraftError
from vmcraft.mount import fatstage, syscalls
from vmcraft.mount import guest as guest_mounts

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("leak_check")]

ENOSPC = os.strerror(errno.ENOSPC)
MIB = 1 << 20


# -- a small ext4 guest, filled up --------------------------------------------------------


def make_ext4(path: Path, size: str = "16M", *extra: str) -> Path:
    tree = path.parent / f"{path.name}.tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "hostname").write_text("small-guest\n")
    subprocess.run(["truncate", "-s", size, os.fspath(path)], check=True)
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-m", "0", *extra, "-d", os.fspath(tree), os.fspath(path)],
        check=True,
    )
    return path


def fsck_clean(image: Path) -> None:
    done = subprocess.run(
        ["e2fsck", "-f", "-n", os.fspath(image)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture
def small_image(tmp_path: Path) -> Path:
    return make_ext4(tmp_path / "small.img")


@pytest.fixture
def g(small_image: Path) -> Iterator[VMCraft]:
    with launched(small_image, readonly=False) as handle:
        handle.mount("/dev/sda", "/")
        yield handle
    fsck_clean(small_image)


def enospc(run: Callable[[], object], call: str, path: str) -> GuestFileError:
    with pytest.raises(GuestFileError) as info:
        run()
    exc = info.value
    assert isinstance(exc, RuntimeError)
    assert not isinstance(exc, HostFileError)
    assert (exc.errno, exc.call, exc.path) == (errno.ENOSPC, call, path)
    assert str(exc) == f"{call}: {path}: {ENOSPC}"
    return exc


def test_write_to_a_full_filesystem(g: VMCraft) -> None:
    enospc(lambda: g.write("/big", b"x" * 32 * MIB), "write", "/big")
    # What fitted stays (as with libguestfs); the filesystem is full, not broken.
    assert 8 * MIB < g.filesize("/big") < 16 * MIB
    enospc(lambda: g.write("/etc/hostname", b"y" * 32 * MIB), "write", "/etc/hostname")
    g.rm("/big")
    g.write("/etc/hostname", b"after\n")
    assert g.read_file("/etc/hostname") == b"after\n"


def test_upload_to_a_full_filesystem(g: VMCraft, tmp_path: Path) -> None:
    source = tmp_path / "upload.bin"
    source.write_bytes(b"u" * 32 * MIB)
    enospc(lambda: g.upload(os.fspath(source), "/uploaded"), "upload", "/uploaded")
    g.rm("/uploaded")


def test_copies_to_a_full_filesystem(g: VMCraft) -> None:
    g.write("/a", b"a" * 9 * MIB)
    enospc(lambda: g.cp("/a", "/b"), "cp", "/b")
    g.rm("/b")
    enospc(lambda: g.copy_file_to_file("/a", "/b"), "copy_file_to_file", "/b")
    g.rm("/b")
    enospc(lambda: g.cp_a("/a", "/c"), "cp_a", "/a")


def fill_inodes(g: VMCraft) -> None:
    for n in range(64):
        g.mkdir(f"/d{n}")


def test_a_filesystem_out_of_inodes(tmp_path: Path) -> None:
    image = make_ext4(tmp_path / "few-inodes.img", "16M", "-N", "16")
    with launched(image, readonly=False) as g:
        g.mount("/dev/sda", "/")
        with pytest.raises(GuestFileError) as info:
            fill_inodes(g)
        assert info.value.errno == errno.ENOSPC
        for failing, call, path in (
            (lambda: g.write("/new", b"x"), "write", "/new"),
            (lambda: g.ln_sf("/etc/hostname", "/link"), "ln_sf", "/link"),
            (lambda: g.mkdir_p("/d0/e/f"), "mkdir_p", "/d0/e"),
            (lambda: g.cp("/etc/hostname", "/copy"), "cp", "/copy"),
        ):
            enospc(failing, call, path)
    fsck_clean(image)


def test_every_writing_call_on_a_read_only_filesystem(small_image: Path) -> None:
    with launched(small_image, readonly=True) as g:
        g.mount("/dev/sda", "/")
        writes: list[tuple[str, str, Callable[[], object]]] = [
            ("write", "/etc/hostname", lambda: g.write("/etc/hostname", b"x")),
            ("write", "/new", lambda: g.write("/new", b"x")),
            ("mkdir", "/dir", lambda: g.mkdir("/dir")),
            ("mkdir_p", "/dir", lambda: g.mkdir_p("/dir/sub")),
            ("chmod", "/etc/hostname", lambda: g.chmod(0o600, "/etc/hostname")),
            ("ln_sf", "/link", lambda: g.ln_sf("/etc", "/link")),
            ("rename", "/etc/hostname", lambda: g.rename("/etc/hostname", "/h")),
            ("rm", "/etc/hostname", lambda: g.rm("/etc/hostname")),
            ("rm_f", "/etc/hostname", lambda: g.rm_f("/etc/hostname")),
            ("cp", "/copy", lambda: g.cp("/etc/hostname", "/copy")),
            ("cp_a", "/etc", lambda: g.cp_a("/etc", "/etc2")),
        ]
        for call, path, run in writes:
            with pytest.raises(GuestFileError) as info:
                run()
            assert (info.value.call, info.value.path, info.value.errno) == (
                call,
                path,
                errno.EROFS,
            ), str(info.value)


@pytest.fixture
def full_host_dir(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs of the host's, in the test session's private mount namespace."""
    where = tmp_path / "full"
    where.mkdir()
    syscalls.mount("tmpfs", os.fspath(where), "tmpfs", 0, "size=64k")
    try:
        yield where
    finally:
        syscalls.umount(os.fspath(where))


def test_download_to_a_full_host_disk(g: VMCraft, full_host_dir: Path) -> None:
    g.write("/payload", b"p" * MIB)
    target = full_host_dir / "payload"
    with pytest.raises(HostFileError) as info:
        g.download("/payload", os.fspath(target))
    assert isinstance(info.value, RuntimeError)
    assert (info.value.errno, info.value.call, info.value.path) == (
        errno.ENOSPC,
        "download",
        os.fspath(target),
    )
    assert str(info.value) == f"download: {target}: {ENOSPC}"


# -- the ESP, staged in a tmpfs ------------------------------------------------------------

ESP_START, ESP_SECTORS = 2048, 131072
STUB = "/boot/efi/EFI/debian/grub.cfg"


@pytest.fixture(scope="module")
def uefi() -> UefiDisk:
    return uefi_disk()


@pytest.fixture
def uefi_image(uefi: UefiDisk, tmp_path: Path) -> Path:
    return writable_copy(uefi.raw, tmp_path / "uefi.raw")


@pytest.fixture
def staged(uefi_image: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[VMCraft]:
    """The UEFI disk, writable, its ESP staged with mtools (whatever the kernel has)."""
    monkeypatch.setattr(guest_mounts, "kernel_supports", lambda fstype: False)
    with launched(uefi_image, readonly=False) as g:
        g.mount("/dev/sda2", "/")
        g.mount("/dev/sda1", "/boot/efi")
        (esp,) = [m for m in g.guest_mounts() if m.mountpoint == "/boot/efi"]
        assert esp.driver == "mtools"
        yield g


def esp_bytes(image: Path) -> bytes:
    with image.open("rb") as f:
        f.seek(ESP_START * 512)
        return f.read(ESP_SECTORS * 512)


def fsck_vfat_clean(image: Path) -> None:
    part = image.with_suffix(".esp")
    part.write_bytes(esp_bytes(image))
    done = subprocess.run(
        ["fsck.vfat", "-n", os.fspath(part)], capture_output=True, text=True, check=False
    )
    part.unlink()
    assert done.returncode == 0, done.stdout + done.stderr


def esp_file(image: Path, path: str) -> str:
    done = subprocess.run(
        ["mtype", "-i", f"{image}@@{ESP_START * 512}", f"::{path.removeprefix('/boot/efi')}"],
        capture_output=True,
        text=True,
        check=True,
        env={"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"},
    )
    return done.stdout


def fat_free(image: Path) -> int:
    """What the ESP's FAT has free, as mdir counts it (read from the image itself)."""
    done = subprocess.run(
        ["mdir", "-i", f"{image}@@{ESP_START * 512}", "::/"],
        capture_output=True,
        text=True,
        check=True,
        env={"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"},
    )
    found = re.search(r"([\d ]+) bytes free", done.stdout)
    assert found is not None, done.stdout
    return int(found.group(1).replace(" ", ""))


def free_in(g: VMCraft, path: str) -> int:
    st = g.statvfs(path)
    return st["bavail"] * st["frsize"]


def test_the_staged_esp_holds_no_more_than_the_fat(staged: VMCraft, uefi_image: Path) -> None:
    """A write past what the FAT could take fails in the write, with ENOSPC."""
    g = staged
    stub = g.read_file(STUB)
    assert free_in(g, "/boot/efi") <= ESP_SECTORS * 512, "the tmpfs is not sized to the FAT"
    enospc(lambda: g.write("/boot/efi/big", b"x" * 80 * MIB), "write", "/boot/efi/big")
    enospc(lambda: g.write("/boot/efi/big2", b"x" * MIB), "write", "/boot/efi/big2")
    g.rm("/boot/efi/big")
    g.rm("/boot/efi/big2")
    g.write("/boot/efi/EFI/debian/extra", b"small\n")
    g.umount("/boot/efi")
    assert esp_file(uefi_image, STUB).encode() == stub
    assert esp_file(uefi_image, "/boot/efi/EFI/debian/extra") == "small\n"
    fsck_vfat_clean(uefi_image)


def test_write_back_past_the_fat_changes_nothing(staged: VMCraft, uefi_image: Path) -> None:
    """Directories cost the FAT a cluster each and the tmpfs nothing: a write-back that
    would not fit is refused before anything is written, and the ESP is left as it was."""
    g = staged
    before = esp_bytes(uefi_image)
    fill = min(free_in(g, "/boot/efi"), fat_free(uefi_image)) - 64 * 1024
    g.write("/boot/efi/EFI/fill", b"f" * fill)
    g.write(STUB, b"a new stub that must not half-replace the old one\n")
    for n in range(200):
        g.mkdir(f"/boot/efi/EFI/d{n}")
    with pytest.raises(GuestMountError, match="nothing was written back") as info:
        g.umount("/boot/efi")
    assert isinstance(info.value, VMCraftError)
    assert "/boot/efi" not in g.mountpoints().values()  # it is down all the same
    g.close()  # and closing does not write it back a second time
    assert hashlib.sha256(esp_bytes(uefi_image)).digest() == hashlib.sha256(before).digest()
    fsck_vfat_clean(uefi_image)


def test_write_back_failing_midway(
    staged: VMCraft, uefi_image: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What an unforeseen failure (an I/O error, say) leaves: the changes before it are
    on the FAT, those after it are not, the FAT is consistent, the mount is down."""
    g = staged
    g.write("/boot/efi/EFI/a-first", b"1\n")
    g.write("/boot/efi/EFI/b-second", b"2\n")
    real = fatstage._mtools
    calls: list[tuple[str, ...]] = []

    def mtools(tool: str, *args: str) -> None:
        calls.append((tool, *args))
        if tool == "mcopy" and args[-1].endswith("b-second"):
            raise GuestMountError("mcopy: Input/output error")
        real(tool, *args)

    monkeypatch.setattr(fatstage, "_mtools", mtools)
    with pytest.raises(GuestMountError, match="changes not written back"):
        g.umount("/boot/efi")
    assert "/boot/efi" not in g.mountpoints().values()
    g.close()
    assert esp_file(uefi_image, "/boot/efi/EFI/a-first") == "1\n"
    with pytest.raises(subprocess.CalledProcessError):
        esp_file(uefi_image, "/boot/efi/EFI/b-second")
    fsck_vfat_clean(uefi_image)


def test_an_oserror_in_the_staged_write_back(
    staged: VMCraft, uefi_image: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An OSError while the staged tree is read back is a GuestMountError, and the
    tmpfs still comes down."""
    g = staged
    g.write("/boot/efi/EFI/new", b"new\n")

    def unreadable(path: Path) -> str:
        raise OSError(errno.EIO, os.strerror(errno.EIO), os.fspath(path))

    monkeypatch.setattr(fatstage, "_digest", unreadable)
    with pytest.raises(GuestMountError, match="umount: /boot/efi: Input/output error"):
        g.umount("/boot/efi")
    assert "/boot/efi" not in g.mountpoints().values()
