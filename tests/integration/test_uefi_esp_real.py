"""A UEFI guest's ESP on a host whose kernel may have no vfat."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.uefidisk import UefiDisk, uefi_disk
from vmcraft import VMCraft
from vmcraft.fixers.fixboot import BootFixer, FixBootOptions
from vmcraft.guest.mounts import kernel_supports

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("leak_check")]


@pytest.fixture(scope="module")
def uefi() -> UefiDisk:
    return uefi_disk()


@pytest.fixture
def image(uefi: UefiDisk, tmp_path: Path) -> Path:
    copy = tmp_path / "uefi.raw"
    subprocess.run(["cp", "--sparse=always", str(uefi.raw), str(copy)], check=True)
    copy.chmod(0o644)
    return copy


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
        assert esp.driver == ("kernel" if kernel_supports("vfat") else "fusefat")
        stub = g.cat("/boot/efi/EFI/debian/grub.cfg")
        assert f"search.fs_uuid {uefi.root_uuid} root" in stub


def test_dry_run_plan_for_a_uefi_debian_guest_leaves_the_image_alone(image: Path) -> None:
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    with VMCraft() as g:
        g.add_drive_opts(image)
        g.launch()
        report = BootFixer(g, FixBootOptions(dry_run=True, reinstall_grub=True)).run()
    assert report.boot_mode == "uefi"
    assert report.family == "debian"
    assert [p.cmd for p in report.plan] == [
        ("update-initramfs", "-u", "-k", "all"),
        ("update-grub",),
        ("grub-install", "--target=x86_64-efi", "--efi-directory=/boot/efi", "--no-nvram"),
    ]
    (esp,) = [m for m in report.mounted if m["mountpoint"] == "/boot/efi"]
    assert esp["driver"] in ("kernel", "fusefat")
    assert esp["readonly"] is True
    assert hashlib.sha256(image.read_bytes()).hexdigest() == digest
