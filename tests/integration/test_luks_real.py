"""LUKS guests: cryptsetup_open needs device-mapper, and says so where there is none."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from vmcraft import UnknownDeviceError, VMCraft
from vmcraft.disks.lvm import device_mapper_available

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("leak_check")]

KEY = "correct horse battery staple"


@pytest.fixture
def luks_image(tmp_path: Path) -> Path:
    image = tmp_path / "luks.raw"
    subprocess.run(["truncate", "-s", "32M", str(image)], check=True)
    subprocess.run(
        [
            "cryptsetup",
            "luksFormat",
            "--batch-mode",
            "--type",
            "luks2",
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
            "--key-file=-",
            str(image),
        ],
        input=KEY.encode(),
        check=True,
    )
    return image


def test_a_luks_device_is_recognised(luks_image: Path) -> None:
    with VMCraft() as g:
        g.add_drive_opts(luks_image, format="raw")
        g.launch()
        assert g.vfs_type("/dev/sda") == "crypto_LUKS"
        with pytest.raises(UnknownDeviceError):
            g.cryptsetup_open("/dev/sdb", KEY, "nope")


@pytest.mark.skipif(device_mapper_available(), reason="this host has device-mapper")
def test_without_device_mapper_cryptsetup_open_raises(luks_image: Path) -> None:
    with VMCraft() as g:
        g.add_drive_opts(luks_image, format="raw")
        g.launch()
        with pytest.raises(RuntimeError, match="no device-mapper"):
            g.cryptsetup_open("/dev/sda", KEY, "luks-root")


@pytest.mark.skipif(not device_mapper_available(), reason="this host has no device-mapper")
def test_with_device_mapper_the_volume_opens_and_closes(luks_image: Path) -> None:
    with VMCraft() as g:
        g.add_drive_opts(luks_image, format="raw")
        g.launch()
        with pytest.raises(RuntimeError):
            g.cryptsetup_open("/dev/sda", "wrong key", "luks-root")
        g.cryptsetup_open("/dev/sda", KEY, "luks-root")
        assert "/dev/mapper/luks-root" in g.list_filesystems()
