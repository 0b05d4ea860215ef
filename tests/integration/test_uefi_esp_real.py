"""A UEFI guest's ESP on a host whose kernel may have no vfat."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from tests.conftest import writable_copy
from tests.fixtures.uefidisk import UefiDisk, uefi_disk
from vmcraft import UnsupportedGuestError, VMCraft
from vmcraft.fixers.fixboot import BootFixer, FixBootOptions, FixBootReport
from vmcraft.mount.guest import kernel_supports

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("leak_check")]


@pytest.fixture(scope="module")
def uefi() -> UefiDisk:
    return uefi_disk()


@pytest.fixture
def image(uefi: UefiDisk, tmp_path: Path) -> Path:
    return writable_copy(uefi.raw, tmp_path / "uefi.raw")


def test_inspection_finds_the_esp_in_fstab(image: Path, uefi: UefiDisk) -> None:
    with VMCraft() as g:
        g.add_drive_opts(image)
        g.launch()
        assert g.list_filesystems() == {"/dev/sda1": "vfat", "/dev/sda2": "ext4"}
        assert g.vfs_uuid("/dev/sda1") == uefi.esp_uuid
        (root,) = g.inspect_os()
        assert g.inspect_get_mountpoints(root) == {"/": "/dev/sda2", "/boot/efi": "/dev/sda1"}


def test_esp_is_mounted_and_readable(image: Path, uefi: UefiDisk) -> None:
    with VMCraft() as g:
        g.add_drive_opts(image)
        g.launch()
        g.mount("/dev/sda2", "/")
        g.mount("/dev/sda1", "/boot/efi")
        (esp,) = [m for m in g.guest_mounts() if m.mountpoint == "/boot/efi"]
        assert esp.driver == ("kernel" if kernel_supports("vfat") else "mtools")
        stub = g.cat("/boot/efi/EFI/debian/grub.cfg")
        assert f"search.fs_uuid {uefi.root_uuid} root" in stub


def _dry_run(image: Path, *, reinstall_grub: bool) -> FixBootReport:
    with VMCraft() as g:
        g.add_drive_opts(image)
        g.launch()
        return BootFixer(g, FixBootOptions(dry_run=True, reinstall_grub=reinstall_grub)).run()


@pytest.mark.skipif(not kernel_supports("vfat"), reason="the host kernel has no vfat")
def test_dry_run_plan_for_a_uefi_debian_guest_leaves_the_image_alone(image: Path) -> None:
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    report = _dry_run(image, reinstall_grub=True)
    assert report.boot_mode == "uefi"
    assert report.family == "debian"
    assert [p.cmd for p in report.plan] == [
        ("update-initramfs", "-u", "-k", "all"),
        ("update-grub",),
        ("grub-install", "--target=x86_64-efi", "--efi-directory=/boot/efi", "--no-nvram"),
    ]
    (esp,) = [m for m in report.mounted if m.mountpoint == "/boot/efi"]
    assert esp.driver == "kernel"
    assert esp.readonly is True
    assert hashlib.sha256(image.read_bytes()).hexdigest() == digest


@pytest.mark.skipif(kernel_supports("vfat"), reason="the host kernel has vfat: nothing is staged")
def test_reinstall_grub_on_a_staged_esp_is_refused_up_front(image: Path) -> None:
    """grub-install cannot run on the tmpfs a staged ESP is: said before anything changes."""
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    with pytest.raises(UnsupportedGuestError, match="needs a host kernel with the vfat"):
        _dry_run(image, reinstall_grub=True)
    report = _dry_run(image, reinstall_grub=False)
    assert report.boot_mode == "uefi"
    assert [p.cmd for p in report.plan] == [
        ("update-initramfs", "-u", "-k", "all"),
        ("update-grub",),
    ]
    (esp,) = [m for m in report.mounted if m.mountpoint == "/boot/efi"]
    assert (esp.driver, esp.readonly) == ("mtools", True)
    assert hashlib.sha256(image.read_bytes()).hexdigest() == digest


def _mtools(*argv: str) -> str:
    done = subprocess.run(
        list(argv), capture_output=True, text=True, check=True, env={"MTOOLS_SKIP_CHECK": "1"}
    )
    return done.stdout


def test_writes_to_the_esp_reach_the_fat_filesystem(image: Path, uefi: UefiDisk) -> None:
    with VMCraft() as g:
        g.add_drive_opts(image, readonly=False)
        g.launch()
        g.mount("/dev/sda2", "/")
        g.mount("/dev/sda1", "/boot/efi")
        g.mkdir_p("/boot/efi/EFI/BOOT")
        g.write("/boot/efi/EFI/BOOT/grub.cfg", "configfile (hd0,gpt2)/boot/grub/grub.cfg\n")
        g.write("/boot/efi/EFI/debian/grub.cfg", "search.fs_uuid new-uuid root\n")
        g.write("/boot/efi/EFI/debian/extra.txt", "to be removed\n")
        g.rm("/boot/efi/EFI/debian/extra.txt")
    # Read back with mtools from the image itself, at the ESP's offset.
    esp = f"{image}@@{2048 * 512}"
    assert _mtools("mtype", "-i", esp, "::/EFI/BOOT/grub.cfg") == (
        "configfile (hd0,gpt2)/boot/grub/grub.cfg\n"
    )
    assert _mtools("mtype", "-i", esp, "::/EFI/debian/grub.cfg") == "search.fs_uuid new-uuid root\n"
    listing = _mtools("mdir", "-b", "-i", esp, "::/EFI/debian")
    assert "extra.txt" not in listing.lower()
    # And the FAT is one fsck.vfat accepts.
    part = Path(str(image) + ".esp")
    subprocess.run(
        ["dd", f"if={image}", f"of={part}", "bs=512", "skip=2048", "count=131072", "status=none"],
        check=True,
    )
    check = subprocess.run(
        ["fsck.vfat", "-n", str(part)], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_read_only_esp_changes_nothing(image: Path) -> None:
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    with VMCraft() as g:
        g.add_drive_opts(image)
        g.launch()
        g.mount("/dev/sda2", "/")
        g.mount("/dev/sda1", "/boot/efi")
        with pytest.raises(RuntimeError):
            g.write("/boot/efi/EFI/debian/grub.cfg", "x")
    assert hashlib.sha256(image.read_bytes()).hexdigest() == digest
