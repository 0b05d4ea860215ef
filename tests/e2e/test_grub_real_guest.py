"""The seed's example, for real: a Debian guest disk, its own grub-mkconfig and update-initramfs.

Each test opens a fresh copy of the debootstrapped Debian disk as raw, qcow2
or vmdk, and proves on the guest's own tools that the bare chroot fails,
the enhanced one succeeds, and what it wrote is what makes the guest boot:
``root=UUID=`` on every kernel line (never a host device name, although
this host runs no udev), and an initrd that holds the fsck tools.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import CopyImage
from tests.fixtures.guestdisk import DebianDisk
from vmcraft import CommandError, VMCraft

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("leak_check")]

FORMATS = ["raw", "qcow2", "vmdk"]
MKCONFIG = ["grub-mkconfig", "-o", "/boot/grub/grub.cfg"]


@pytest.fixture(params=FORMATS)
def image(request: pytest.FixtureRequest, image_copy: CopyImage) -> Path:
    fmt: str = request.param
    return image_copy(fmt)


@pytest.fixture
def g(image: Path) -> Iterator[VMCraft]:
    # The card's enhanced chroot on a real disk: bare commands lack /proc,
    # /dev and /sys (the sandbox, the default on disks, always has them).
    with VMCraft(timeout=900, isolation="host") as handle:
        handle.add_drive_opts(image, readonly=False)
        handle.launch()
        handle.mount("/dev/sda2", "/")
        yield handle


def kernel_lines(cfg: str) -> list[str]:
    return [line.strip() for line in cfg.splitlines() if line.strip().startswith("linux")]


def test_grub_mkconfig_fails_bare_and_succeeds_with_mounts(g: VMCraft, debian: DebianDisk) -> None:
    with pytest.raises(CommandError, match=r"cannot find a device for / \(is /dev mounted\?\)"):
        g.command(MKCONFIG)
    assert not g.exists("/boot/grub/grub.cfg")

    g.command_with_mounts(MKCONFIG)

    cfg = g.cat("/boot/grub/grub.cfg")
    assert "menuentry 'Debian GNU/Linux'" in cfg
    assert f"/boot/vmlinuz-{debian.kernel}" in cfg
    assert f"search --no-floppy --fs-uuid --set=root {debian.root_uuid}" in cfg
    lines = kernel_lines(cfg)
    assert lines, "no kernel line in grub.cfg"
    for line in lines:
        assert f"root=UUID={debian.root_uuid}" in line
        assert not re.search(r"/dev/(loop|nbd|dm-|mapper)", line), line


def test_update_initramfs_puts_fsck_in_the_initrd(g: VMCraft, debian: DebianDisk) -> None:
    initrd = f"/boot/initrd.img-{debian.kernel}"
    before = g.read_file(initrd)
    out = g.command_with_mounts(["update-initramfs", "-u", "-k", "all"])
    assert "update-initramfs: Generating" in out or out == ""
    assert g.read_file(initrd) != before
    listing = g.command_with_mounts(["lsinitramfs", initrd]).splitlines()
    assert any(re.search(r"(^|/)s?bin/fsck$", path) for path in listing), "fsck missing"
    assert any(re.search(r"(^|/)s?bin/(e2fsck|fsck\.ext4)$", path) for path in listing)


def test_changes_reach_the_image(image: Path, debian: DebianDisk) -> None:
    with VMCraft() as g:
        g.add_drive_opts(image, readonly=False)
        g.launch()
        g.mount("/dev/sda2", "/")
        g.command_with_mounts(MKCONFIG)
    with VMCraft() as g:
        g.add_drive_opts(image)  # read-only
        g.launch()
        g.mount("/dev/sda2", "/")
        cfg = g.cat("/boot/grub/grub.cfg")
    assert f"root=UUID={debian.root_uuid}" in cfg


def test_by_uuid_links_exist_only_while_mounted(g: VMCraft, debian: DebianDisk) -> None:
    link = f"/dev/disk/by-uuid/{debian.root_uuid}"
    target = g.command_with_mounts(["readlink", "-f", link]).strip()
    assert target.startswith("/dev/loop")
    assert g.command_with_mounts(["readlink", "-f", "/dev/sda2"]).strip() == target
    partuuid = g.command_with_mounts(
        ["readlink", "-f", f"/dev/disk/by-partuuid/{debian.root_partuuid}"]
    )
    assert partuuid.strip() == target
    assert g.command_with_mounts(["readlink", "-f", "/dev/disk/by-label/debroot"]).strip() == target
    with pytest.raises(CommandError):
        g.command(["test", "-e", link])
    # Only the guest's devices: none of the host's disks is visible.
    blocks = g.command_with_mounts(["sh", "-c", "ls /dev"]).split()
    assert not [name for name in blocks if name.startswith(("vd", "nvme", "xvd"))]
