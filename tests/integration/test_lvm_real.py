"""LVM guests on a host without device-mapper: linear LVs through loop devices."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.conftest import writable_copy
from tests.fixtures.lvmdisk import BOOT_UUID, LvmDisk, lvm_disk
from vmcraft import UnknownDeviceError, VMCraft
from vmcraft.disks.lvm import device_mapper_available

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("leak_check")]


@pytest.fixture(scope="module")
def lvm_guest() -> LvmDisk:
    return lvm_disk()


@pytest.fixture
def image(lvm_guest: LvmDisk, tmp_path: Path) -> Path:
    return writable_copy(lvm_guest.raw, tmp_path / "lvm.raw")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.skipif(device_mapper_available(), reason="this host has device-mapper")
def test_linear_lvs_reached_without_device_mapper(image: Path) -> None:
    with VMCraft() as g:
        g.add_drive_opts(image)
        g.launch()
        assert g.lvm_method == "loop"
        assert g.lvs() == ["/dev/vmcvg/data", "/dev/vmcvg/gap", "/dev/vmcvg/root"]
        assert g.unreachable_lvs == {
            "/dev/vmcvg/split": "linear but not contiguous on one PV: needs device-mapper"
        }
        assert g.list_filesystems() == {
            "/dev/sda1": "ext4",
            "/dev/vmcvg/data": "ext4",
            "/dev/vmcvg/gap": "unknown",
            "/dev/vmcvg/root": "ext4",
        }
        assert g.vfs_label("/dev/mapper/vmcvg-root") == "lvroot"
        with pytest.raises(UnknownDeviceError):
            g.vfs_type("/dev/vmcvg/split")


def test_inspection_resolves_fstab_against_guest_devices(image: Path) -> None:
    with VMCraft() as g:
        g.add_drive_opts(image)
        g.launch()
        (root,) = g.inspect_os()
        assert root == "/dev/vmcvg/root"
        assert g.inspect_get_distro(root) == "debian"
        assert (g.inspect_get_major_version(root), g.inspect_get_minor_version(root)) == (12, 4)
        assert g.inspect_get_mountpoints(root) == {
            "/": "/dev/vmcvg/root",
            "/boot": "/dev/sda1",
            "/srv": "/dev/vmcvg/data",
        }
        assert g.vfs_uuid("/dev/sda1") == BOOT_UUID


def test_mount_lvs_and_partitions_read_only_leaves_image_unchanged(image: Path) -> None:
    before = sha256(image)
    with VMCraft() as g:
        g.add_drive_opts(image)
        g.launch()
        g.mount("/dev/vmcvg/root", "/")
        g.mount("/dev/sda1", "/boot")
        g.mount("/dev/mapper/vmcvg-data", "/srv")
        assert g.cat("/etc/hostname") == "lvm-guest\n"
        assert g.ls("/boot") == ["lost+found", "vmlinuz-test"]
        assert g.cat("/srv/marker") == "data LV\n"
        assert g.mountpoints() == {
            "/dev/vmcvg/root": "/",
            "/dev/sda1": "/boot",
            "/dev/vmcvg/data": "/srv",
        }
    assert sha256(image) == before


def test_writes_to_an_lv_reach_the_image(image: Path) -> None:
    with VMCraft() as g:
        g.add_drive_opts(image, readonly=False)
        g.launch()
        g.mount("/dev/vmcvg/data", "/")
        g.write("/written", "through the loop fallback\n")
    with VMCraft() as g:
        g.add_drive_opts(image)
        g.launch()
        g.mount("/dev/vmcvg/data", "/")
        assert g.cat("/written") == "through the loop fallback\n"


@pytest.mark.skipif(not device_mapper_available(), reason="this host has no device-mapper")
def test_device_mapper_path(image: Path) -> None:
    with VMCraft() as g:
        g.add_drive_opts(image)
        g.launch()
        assert g.lvm_method == "device-mapper"
        assert "/dev/vmcvg/root" in g.lvs()
        g.mount("/dev/vmcvg/root", "/")
        assert g.cat("/etc/hostname") == "lvm-guest\n"
