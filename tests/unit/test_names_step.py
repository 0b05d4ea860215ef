"""The names step on synthetic guest trees: every controller-dependent disk name becomes a UUID.

Each tree is a directory in ``tmp_path`` holding only the files the step
reads; ``VMCraft.from_root`` reads and writes it with the ordinary file
calls (no root, no mount). The devices are what fix-boot would have found
with blkid, as ``ctx.devices``. Every rewrite is asserted as the whole file,
and the journal is shown to put every file back byte for byte.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.unit.trees import put
from tests.unit.trees import tree_hashes as _all_hashes
from vmcraft.errors import VMCraftError
from vmcraft.fixers.journal import Journal
from vmcraft.fixers.layout import BootLayout
from vmcraft.fixers.names import (
    CANNOT_TELL,
    NO_ROOM,
    NO_STABLE_ID,
    NOT_THIS_GUEST,
    NamesRepair,
    controller_dependent,
    fixable,
)
from vmcraft.fixers.step import Device, Finding, RepairContext, Step
from vmcraft.handle import VMCraft
from vmcraft.inspect.fstab import parse_fstab
from vmcraft.report import Rewrite, StepReport

ROOT_UUID = "2f0c5a8e-6d1b-4c3e-9f7a-1b2c3d4e5f60"
BOOT_UUID = "7b3c9d2e-1a4f-4e8b-b6c5-0d9e8f7a6b51"
SWAP_UUID = "c1d2e3f4-a5b6-4c7d-8e9f-0a1b2c3d4e5f"
LUKS_UUID = "9e8d7c6b-5a49-4382-a1b0-c9d8e7f6a5b4"
DATA_UUID = "44444444-5555-4666-8777-888899990000"
ESP_UUID = "5A1B-2C3D"
SWAP_PARTUUID = "0d5e3a1c-03"
CSWAP_PARTUUID = "6b1f4e2a-8c3d-4e5f-9a0b-1c2d3e4f5a6b"
MACHINE_ID = "0d1f4c6f8a3b4e0c9f2d7a5b6c8e1f23"

DEBIAN_LAYOUT = BootLayout(
    distro="debian",
    family="debian",
    boot_mode="bios",
    kernels=("6.1.0-13-amd64",),
    grub_cfg="/boot/grub/grub.cfg",
    bootloader_cmd=("update-grub",),
    initramfs_cmd=("update-initramfs", "-u", "-k", "all"),
    grub_install_tool="grub-install",
)
RHEL_LAYOUT = BootLayout(
    distro="rhel",
    family="redhat",
    boot_mode="bios",
    kernels=("5.14.0-362.8.1.el9_3.x86_64",),
    grub_cfg="/boot/grub2/grub.cfg",
    bootloader_cmd=("grub2-mkconfig", "-o", "/boot/grub2/grub.cfg"),
    initramfs_cmd=("dracut", "-f", "--regenerate-all"),
    grub_install_tool="grub2-install",
)


def dev(
    name: str, fstype: str | None, uuid: str | None = None, partuuid: str | None = None
) -> Device:
    return Device(name, uuid=uuid, partuuid=partuuid, fstype=fstype)


def table(*devices: Device) -> dict[str, Device]:
    return {d.name: d for d in devices}


# A VMware-shaped BIOS disk: /boot, / and swap on one disk.
ONE_DISK = table(
    dev("/dev/sda1", "ext4", BOOT_UUID, "0d5e3a1c-01"),
    dev("/dev/sda2", "ext4", ROOT_UUID, "0d5e3a1c-02"),
    dev("/dev/sda3", "swap", SWAP_UUID, SWAP_PARTUUID),
)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree_hashes(root: Path) -> dict[str, str]:
    """Every regular file under ``root`` -> its sha256 (symlinks by their target)."""
    return _all_hashes(root, dirs=False)


def journal_for(g: Any) -> Journal:
    """A journal on the handle (``Any``: the handle may not have every call the protocol lists)."""
    return Journal(g)


@pytest.fixture
def handle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[VMCraft]:
    with VMCraft.from_root(tmp_path) as g:
        if not hasattr(g, "rmdir"):
            # Journal.rollback removes its directory with g.rmdir, which the
            # handle may not have yet: the same on the host path of the tree.
            monkeypatch.setattr(
                g, "rmdir", lambda path: os.rmdir(tmp_path / path.lstrip("/")), raising=False
            )
        yield g


def context(
    g: VMCraft,
    root: Path,
    devices: dict[str, Device],
    *,
    layout: BootLayout = DEBIAN_LAYOUT,
    writable: bool = True,
) -> RepairContext:
    fstab = root / "etc/fstab"
    return RepairContext(
        g=g,
        layout=layout,
        fstab=parse_fstab(fstab.read_text(errors="replace")) if fstab.exists() else [],
        devices=devices,
        journal=journal_for(g) if writable else None,
    )


def run_fix(ctx: RepairContext) -> StepReport:
    repair = NamesRepair()
    report = StepReport()
    repair.fix(ctx, repair.find(ctx), report)
    return report


def summary(findings: list[Finding]) -> list[tuple[str | None, str]]:
    return [(f.path, f.detail) for f in findings]


# -- (1) a VMware-shaped Debian ------------------------------------------------

DEBIAN_FSTAB = """\
# /etc/fstab: static file system information.
#
# Use 'blkid' to print the universally unique identifier for a
# device; this may be used with UUID= as a more robust way to name devices
# that works even if disks are added and removed. See fstab(5).
#
# <file system> <mount point>   <type>  <options>       <dump>  <pass>
/dev/sda2 / ext4 errors=remount-ro 0 1
# /boot was on /dev/sda1 during installation
/dev/sda1 /boot ext4 defaults 0 2
/dev/sda3 none swap sw 0 0
/dev/sr0        /media/cdrom0   udf,iso9660 user,noauto     0       0
tmpfs\t/tmp\ttmpfs\tdefaults,size=1g\t0\t0
"""

DEBIAN_FSTAB_FIXED = f"""\
# /etc/fstab: static file system information.
#
# Use 'blkid' to print the universally unique identifier for a
# device; this may be used with UUID= as a more robust way to name devices
# that works even if disks are added and removed. See fstab(5).
#
# <file system> <mount point>   <type>  <options>       <dump>  <pass>
UUID={ROOT_UUID} / ext4 errors=remount-ro 0 1
# /boot was on /dev/sda1 during installation
UUID={BOOT_UUID} /boot ext4 defaults 0 2
UUID={SWAP_UUID} none swap sw 0 0
/dev/sr0        /media/cdrom0   udf,iso9660 user,noauto     0       0
tmpfs\t/tmp\ttmpfs\tdefaults,size=1g\t0\t0
"""

DEBIAN_DEFAULT_GRUB = """\
# If you change this file, run 'update-grub' afterwards to update
# /boot/grub/grub.cfg.
# For full documentation of the options in this file, see:
#   info -f grub -n 'Simple configuration'

GRUB_DEFAULT=0
GRUB_TIMEOUT=5
GRUB_DISTRIBUTOR=`lsb_release -i -s 2> /dev/null || echo Debian`
GRUB_CMDLINE_LINUX_DEFAULT="quiet"
GRUB_CMDLINE_LINUX="resume=/dev/sda3 console=ttyS0"

# Uncomment if you don't want GRUB to pass "root=UUID=xxx" parameter to Linux
GRUB_DISABLE_LINUX_UUID=true

# Uncomment to disable graphical terminal
#GRUB_TERMINAL=console
"""

DEBIAN_DEFAULT_GRUB_FIXED = f"""\
# If you change this file, run 'update-grub' afterwards to update
# /boot/grub/grub.cfg.
# For full documentation of the options in this file, see:
#   info -f grub -n 'Simple configuration'

GRUB_DEFAULT=0
GRUB_TIMEOUT=5
GRUB_DISTRIBUTOR=`lsb_release -i -s 2> /dev/null || echo Debian`
GRUB_CMDLINE_LINUX_DEFAULT="quiet"
GRUB_CMDLINE_LINUX="resume=UUID={SWAP_UUID} console=ttyS0"

# Uncomment if you don't want GRUB to pass "root=UUID=xxx" parameter to Linux
#GRUB_DISABLE_LINUX_UUID=true  # vmcraft: grub-mkconfig would write root= as a device name, \
which changes on KVM

# Uncomment to disable graphical terminal
#GRUB_TERMINAL=console
"""

DEVICE_MAP = "(hd0)\t/dev/sda\n"


def vmware_debian(root: Path) -> Path:
    put(root, "etc/fstab", DEBIAN_FSTAB)
    put(root, "etc/default/grub", DEBIAN_DEFAULT_GRUB)
    put(root, "etc/initramfs-tools/conf.d/resume", "RESUME=/dev/sda3\n")
    put(root, "etc/initramfs-tools/initramfs.conf", "MODULES=dep\n")
    put(root, "boot/grub/device.map", DEVICE_MAP)
    put(root, "boot/grub/grub.cfg", "linux /vmlinuz root=/dev/sda2 ro\n")
    return root


def test_vmware_debian_findings(tmp_path: Path, handle: VMCraft) -> None:
    ctx = context(handle, vmware_debian(tmp_path), ONE_DISK, writable=False)
    before = tree_hashes(tmp_path)
    found = NamesRepair().find(ctx)
    assert summary(found) == [
        ("/etc/fstab", f"becomes UUID={ROOT_UUID}"),
        ("/etc/fstab", f"becomes UUID={BOOT_UUID}"),
        ("/etc/fstab", f"becomes UUID={SWAP_UUID}"),
        ("/etc/initramfs-tools/conf.d/resume", f"becomes UUID={SWAP_UUID}"),
        ("/etc/default/grub", f"becomes UUID={SWAP_UUID}"),
        ("/etc/default/grub", "becomes a comment"),
        (
            "/boot/grub/device.map",
            "the file is removed: grub-install and grub-mkconfig find the disks without it",
        ),
    ]
    assert found[0].what == "fstab / names /dev/sda2, which changes with the disk controller"
    assert found[2].what.startswith("fstab swap names /dev/sda3")
    assert found[4].what.startswith("GRUB_CMDLINE_LINUX resume= names /dev/sda3")
    assert found[5].what.startswith("GRUB_DISABLE_LINUX_UUID=true")
    assert found[6].what.startswith("device.map maps (hd0) to /dev/sda")
    assert all(f.step is Step.NAMES and fixable(f) for f in found)
    assert NamesRepair().plan(ctx, found) == []
    assert tree_hashes(tmp_path) == before, "find is read-only"


def test_vmware_debian_fix(tmp_path: Path, handle: VMCraft) -> None:
    root = vmware_debian(tmp_path)
    ctx = context(handle, root, ONE_DISK)
    report = run_fix(ctx)

    assert (root / "etc/fstab").read_text() == DEBIAN_FSTAB_FIXED
    assert (root / "etc/default/grub").read_text() == DEBIAN_DEFAULT_GRUB_FIXED
    assert (root / "etc/initramfs-tools/conf.d/resume").read_text() == f"RESUME=UUID={SWAP_UUID}\n"
    assert not (root / "boot/grub/device.map").exists()
    assert (root / "etc/initramfs-tools/initramfs.conf").read_text() == "MODULES=dep\n"
    # grub.cfg is the bootloader step's: grub-mkconfig rewrites it from the files above.
    assert (root / "boot/grub/grub.cfg").read_text() == "linux /vmlinuz root=/dev/sda2 ro\n"

    assert report.rewrites == [
        Rewrite(
            "/etc/fstab",
            "/dev/sda2 / ext4 errors=remount-ro 0 1",
            f"UUID={ROOT_UUID} / ext4 errors=remount-ro 0 1",
        ),
        Rewrite(
            "/etc/fstab",
            "/dev/sda1 /boot ext4 defaults 0 2",
            f"UUID={BOOT_UUID} /boot ext4 defaults 0 2",
        ),
        Rewrite("/etc/fstab", "/dev/sda3 none swap sw 0 0", f"UUID={SWAP_UUID} none swap sw 0 0"),
        Rewrite(
            "/etc/initramfs-tools/conf.d/resume", "RESUME=/dev/sda3", f"RESUME=UUID={SWAP_UUID}"
        ),
        Rewrite(
            "/etc/default/grub",
            'GRUB_CMDLINE_LINUX="resume=/dev/sda3 console=ttyS0"',
            f'GRUB_CMDLINE_LINUX="resume=UUID={SWAP_UUID} console=ttyS0"',
        ),
        Rewrite(
            "/etc/default/grub",
            "GRUB_DISABLE_LINUX_UUID=true",
            "#GRUB_DISABLE_LINUX_UUID=true  # vmcraft: grub-mkconfig would write root= as a "
            "device name, which changes on KVM",
        ),
    ]
    assert report.removals == ["/boot/grub/device.map"]
    assert report.success
    assert report.to_dict()["rewrites"][0]["path"] == "/etc/fstab"


def test_fix_then_find_finds_nothing_and_a_second_fix_changes_nothing(
    tmp_path: Path, handle: VMCraft
) -> None:
    root = vmware_debian(tmp_path)
    ctx = context(handle, root, ONE_DISK)
    run_fix(ctx)
    assert NamesRepair().find(ctx) == []
    assert NamesRepair().check(ctx, 0.0)[0].ok

    after = tree_hashes(root)
    again = context(handle, root, ONE_DISK)
    report = run_fix(again)
    assert report.rewrites == []
    assert report.removals == []
    assert again.journal is not None
    assert again.journal.entries == []
    assert tree_hashes(root) == after


def test_journal_rolls_every_file_back_byte_for_byte(tmp_path: Path, handle: VMCraft) -> None:
    root = vmware_debian(tmp_path)
    # Odd modes survive too.
    (root / "etc/default/grub").chmod(0o600)
    before = tree_hashes(root)
    ctx = context(handle, root, ONE_DISK)
    run_fix(ctx)
    journal = ctx.journal
    assert journal is not None
    assert sorted(e.path for e in journal.changed()) == [
        "/boot/grub/device.map",
        "/etc/default/grub",
        "/etc/fstab",
        "/etc/initramfs-tools/conf.d/resume",
    ]
    assert {e.path: e.step for e in journal.entries} == {
        p: "names" for p in (e.path for e in journal.entries)
    }
    assert (root / "etc/default/grub").stat().st_mode & 0o777 == 0o600

    kept = sorted(e.path for e in journal.entries)
    restored = journal.rollback()
    assert sorted(r.path for r in restored) == kept
    assert journal.entries == [], "a second rollback has nothing left to do"
    assert tree_hashes(root) == before
    assert not (root / "var").exists(), "the journal's directories are gone too"
    assert (root / "etc/default/grub").stat().st_mode & 0o777 == 0o600


def test_a_read_only_context_changes_nothing(tmp_path: Path, handle: VMCraft) -> None:
    root = vmware_debian(tmp_path)
    before = tree_hashes(root)
    ctx = context(handle, root, ONE_DISK, writable=False)
    repair = NamesRepair()
    with pytest.raises(VMCraftError, match="names"):
        repair.fix(ctx, repair.find(ctx), StepReport())
    assert tree_hashes(root) == before


# -- (2) a Hyper-V RHEL 9 -------------------------------------------------------

RHEL_KERNEL = "5.14.0-362.8.1.el9_3.x86_64"
RHEL_DEVICES = table(
    dev("/dev/sda1", "xfs", BOOT_UUID, "11111111-aaaa-4bbb-8ccc-000000000001"),
    dev("/dev/sda2", "xfs", ROOT_UUID, "11111111-aaaa-4bbb-8ccc-000000000002"),
    dev("/dev/sda3", "swap", SWAP_UUID, "11111111-aaaa-4bbb-8ccc-000000000003"),
)
RHEL_FSTAB = """\

#
# /etc/fstab
# Created by anaconda on Tue Nov  7 10:00:00 2023
#
/dev/sda2               /                       xfs     defaults        0 0
/dev/sda1               /boot                   xfs     defaults        0 0
/dev/sda3               none                    swap    defaults        0 0
"""
RHEL_BLS = f"""\
title Red Hat Enterprise Linux (5.14.0-362.8.1.el9_3.x86_64) 9.3 (Plow)
version {RHEL_KERNEL}
linux /vmlinuz-{RHEL_KERNEL}
initrd /initramfs-{RHEL_KERNEL}.img $tuned_initrd
options root=/dev/sda2 ro crashkernel=1G-4G:192M,4G-64G:256M resume=/dev/sda3 rhgb quiet
grub_users $grub_users
grub_arg --unrestricted
grub_class rhel
"""
RHEL_RESCUE_BLS = f"""\
title Red Hat Enterprise Linux (0-rescue-{MACHINE_ID}) 9.3 (Plow)
version 0-rescue-{MACHINE_ID}
linux /vmlinuz-0-rescue-{MACHINE_ID}
initrd /initramfs-0-rescue-{MACHINE_ID}.img
options root=UUID={ROOT_UUID} ro resume=UUID={SWAP_UUID}
grub_users $grub_users
"""
RHEL_DEFAULT_GRUB = """\
GRUB_TIMEOUT=5
GRUB_DISTRIBUTOR="$(sed 's, release .*$,,g' /etc/system-release)"
GRUB_DEFAULT=saved
GRUB_DISABLE_SUBMENU=true
GRUB_TERMINAL_OUTPUT="console"
GRUB_CMDLINE_LINUX="crashkernel=1G-4G:192M,4G-64G:256M resume=/dev/sda3 rhgb quiet"
GRUB_DISABLE_RECOVERY="true"
GRUB_ENABLE_BLSCFG=true
"""


def hyperv_rhel9(root: Path) -> Path:
    put(root, "etc/fstab", RHEL_FSTAB)
    put(root, f"boot/loader/entries/{MACHINE_ID}-{RHEL_KERNEL}.conf", RHEL_BLS)
    put(root, f"boot/loader/entries/{MACHINE_ID}-0-rescue.conf", RHEL_RESCUE_BLS)
    put(root, "etc/kernel/cmdline", "root=/dev/sda2 ro crashkernel=1G-4G:192M resume=/dev/sda3\n")
    put(root, "etc/default/grub", RHEL_DEFAULT_GRUB)
    (root / "etc/sysconfig").mkdir(parents=True)
    (root / "etc/sysconfig/grub").symlink_to("../default/grub")
    put(
        root,
        "boot/grub2/device.map",
        "# this device map was generated by anaconda\n(hd0)      /dev/sda\n",
    )
    return root


def test_hyperv_rhel9_fix(tmp_path: Path, handle: VMCraft) -> None:
    root = hyperv_rhel9(tmp_path)
    before = tree_hashes(root)
    ctx = context(handle, root, RHEL_DEVICES, layout=RHEL_LAYOUT)
    report = run_fix(ctx)

    assert (
        (root / "etc/fstab").read_text()
        == f"""\

#
# /etc/fstab
# Created by anaconda on Tue Nov  7 10:00:00 2023
#
UUID={ROOT_UUID}               /                       xfs     defaults        0 0
UUID={BOOT_UUID}               /boot                   xfs     defaults        0 0
UUID={SWAP_UUID}               none                    swap    defaults        0 0
"""
    )
    assert (root / f"boot/loader/entries/{MACHINE_ID}-{RHEL_KERNEL}.conf").read_text() == (
        RHEL_BLS.replace("root=/dev/sda2", f"root=UUID={ROOT_UUID}").replace(
            "resume=/dev/sda3", f"resume=UUID={SWAP_UUID}"
        )
    )
    assert (root / "etc/kernel/cmdline").read_text() == (
        f"root=UUID={ROOT_UUID} ro crashkernel=1G-4G:192M resume=UUID={SWAP_UUID}\n"
    )
    assert (root / "etc/default/grub").read_text() == RHEL_DEFAULT_GRUB.replace(
        "resume=/dev/sda3", f"resume=UUID={SWAP_UUID}"
    )
    assert (root / "etc/sysconfig/grub").is_symlink()
    assert not (root / "boot/grub2/device.map").exists()
    assert report.removals == ["/boot/grub2/device.map"]
    assert [r.path for r in report.rewrites] == [
        "/etc/fstab",
        "/etc/fstab",
        "/etc/fstab",
        "/etc/default/grub",
        f"/boot/loader/entries/{MACHINE_ID}-{RHEL_KERNEL}.conf",
        "/etc/kernel/cmdline",
    ]
    assert NamesRepair().find(ctx) == []

    journal = ctx.journal
    assert journal is not None
    changed = {e.path for e in journal.changed()}
    assert f"/boot/loader/entries/{MACHINE_ID}-0-rescue.conf" not in changed
    assert changed == {r.path for r in report.rewrites} | {"/boot/grub2/device.map"}
    journal.rollback()
    assert tree_hashes(root) == before


# -- (3) RHEL 8: the BLS entries say $kernelopts, grubenv holds it -------------


def grubenv(*lines: str, size: int = 1024) -> bytes:
    body = "# GRUB Environment Block\n" + "".join(f"{ln}\n" for ln in lines)
    return body.encode() + b"#" * (size - len(body.encode()))


def test_rhel8_grubenv_kernelopts_keep_the_block_size(tmp_path: Path, handle: VMCraft) -> None:
    env = grubenv(
        "saved_entry=0d1f-4.18.0-513.5.1.el8_9.x86_64",
        "kernelopts=root=/dev/sda2 ro crashkernel=auto resume=/dev/sda3 rhgb quiet",
        "boot_success=0",
    )
    real = put(tmp_path, "boot/efi/EFI/redhat/grubenv", env)
    (tmp_path / "boot/grub2").mkdir(parents=True)
    (tmp_path / "boot/grub2/grubenv").symlink_to("../efi/EFI/redhat/grubenv")
    put(tmp_path, "boot/loader/entries/a.conf", "linux /vmlinuz-4.18\noptions $kernelopts\n")
    ctx = context(handle, tmp_path, RHEL_DEVICES, layout=RHEL_LAYOUT)
    report = run_fix(ctx)

    assert real.read_bytes() == grubenv(
        "saved_entry=0d1f-4.18.0-513.5.1.el8_9.x86_64",
        f"kernelopts=root=UUID={ROOT_UUID} ro crashkernel=auto resume=UUID={SWAP_UUID} rhgb quiet",
        "boot_success=0",
    )
    assert len(real.read_bytes()) == 1024
    assert (tmp_path / "boot/grub2/grubenv").is_symlink(), "the link stays; its target changes"
    assert [r.path for r in report.rewrites] == ["/boot/efi/EFI/redhat/grubenv"]
    assert NamesRepair().find(ctx) == []


def test_a_full_grubenv_is_left_alone(tmp_path: Path, handle: VMCraft) -> None:
    line = "kernelopts=root=/dev/sda2 ro"
    env = grubenv(line, size=len("# GRUB Environment Block\n") + len(line) + 1 + 4)
    put(tmp_path, "boot/grub2/grubenv", env)
    ctx = context(handle, tmp_path, RHEL_DEVICES, layout=RHEL_LAYOUT)
    found = NamesRepair().find(ctx)
    assert summary(found) == [("/boot/grub2/grubenv", NO_ROOM)]
    assert not fixable(found[0])
    report = run_fix(ctx)
    assert report.rewrites == []
    assert (tmp_path / "boot/grub2/grubenv").read_bytes() == env


# -- (4) Xen, NVMe, by-path and by-id ------------------------------------------


def test_xen_names(tmp_path: Path, handle: VMCraft) -> None:
    put(tmp_path, "etc/fstab", "/dev/xvda1 / ext4 defaults 1 1\n/dev/xvdb none swap sw 0 0\n")
    put(tmp_path, "etc/default/grub", 'GRUB_CMDLINE_LINUX_DEFAULT="root=/dev/xvda1 console=hvc0"\n')
    devices = table(dev("/dev/sda1", "ext4", ROOT_UUID), dev("/dev/sdb", "swap", SWAP_UUID))
    ctx = context(handle, tmp_path, devices)
    run_fix(ctx)
    assert (tmp_path / "etc/fstab").read_text() == (
        f"UUID={ROOT_UUID} / ext4 defaults 1 1\nUUID={SWAP_UUID} none swap sw 0 0\n"
    )
    assert (tmp_path / "etc/default/grub").read_text() == (
        f'GRUB_CMDLINE_LINUX_DEFAULT="root=UUID={ROOT_UUID} console=hvc0"\n'
    )
    assert NamesRepair().find(ctx) == []


def test_nvme_names(tmp_path: Path, handle: VMCraft) -> None:
    put(
        tmp_path,
        "etc/fstab",
        "/dev/nvme0n1p2 / ext4 defaults 0 1\n"
        "/dev/nvme0n1p1 /boot/efi vfat umask=0077 0 1\n"
        "/dev/nvme1n1p1 /srv xfs defaults 0 2\n"
        "/dev/nvme0n2p1 /scratch xfs defaults 0 2\n",
    )
    devices = table(
        dev("/dev/sda1", "vfat", ESP_UUID),
        dev("/dev/sda2", "ext4", ROOT_UUID),
        dev("/dev/sdb1", "xfs", DATA_UUID),
    )
    ctx = context(handle, tmp_path, devices)
    found = NamesRepair().find(ctx)
    assert summary(found)[-1] == ("/etc/fstab", CANNOT_TELL)
    run_fix(ctx)
    assert (tmp_path / "etc/fstab").read_text() == (
        f"UUID={ROOT_UUID} / ext4 defaults 0 1\n"
        f"UUID={ESP_UUID} /boot/efi vfat umask=0077 0 1\n"
        f"UUID={DATA_UUID} /srv xfs defaults 0 2\n"
        "/dev/nvme0n2p1 /scratch xfs defaults 0 2\n"
    )
    assert summary(NamesRepair().find(ctx)) == [("/etc/fstab", CANNOT_TELL)]


BY_PATH = "/dev/disk/by-path/pci-0000:00:10.0-scsi-0:0:0:0"
BY_ID = "/dev/disk/by-id/scsi-36000c29a1b2c3d4e5f60718293a4b5c6"
BY_ID_FSTAB = f"""\
{BY_PATH}-part2 / ext4 defaults 0 1
{BY_ID}-part1 /boot ext4 defaults 0 2
/dev/disk/by-id/wwn-0x6000c29a1b2c3d4e-part3 none swap sw 0 0
/dev/disk/by-id/dm-name-vg0-home /home ext4 defaults 0 2
/dev/disk/by-uuid/{DATA_UUID} /data xfs defaults 0 2
"""


def test_by_path_and_by_id_on_a_one_disk_guest(tmp_path: Path, handle: VMCraft) -> None:
    put(tmp_path, "etc/fstab", BY_ID_FSTAB)
    put(tmp_path, "etc/kernel/cmdline", f"root={BY_PATH}-part2 resume={BY_ID}-part3 ro\n")
    ctx = context(handle, tmp_path, ONE_DISK)
    run_fix(ctx)
    assert (
        (tmp_path / "etc/fstab").read_text()
        == f"""\
UUID={ROOT_UUID} / ext4 defaults 0 1
UUID={BOOT_UUID} /boot ext4 defaults 0 2
UUID={SWAP_UUID} none swap sw 0 0
/dev/disk/by-id/dm-name-vg0-home /home ext4 defaults 0 2
/dev/disk/by-uuid/{DATA_UUID} /data xfs defaults 0 2
"""
    )
    assert (tmp_path / "etc/kernel/cmdline").read_text() == (
        f"root=UUID={ROOT_UUID} resume=UUID={SWAP_UUID} ro\n"
    )
    assert NamesRepair().find(ctx) == []


def test_by_path_on_a_two_disk_guest_cannot_be_told(tmp_path: Path, handle: VMCraft) -> None:
    put(tmp_path, "etc/fstab", BY_ID_FSTAB)
    devices = {**ONE_DISK, "/dev/sdb1": dev("/dev/sdb1", "xfs", DATA_UUID)}
    ctx = context(handle, tmp_path, devices)
    found = NamesRepair().find(ctx)
    assert summary(found) == [("/etc/fstab", CANNOT_TELL)] * 3
    assert found[0].what == f"fstab / names {BY_PATH}-part2, which changes with the disk controller"
    assert not any(fixable(f) for f in found)
    report = run_fix(ctx)
    assert report.rewrites == []
    assert (tmp_path / "etc/fstab").read_text() == BY_ID_FSTAB
    assert ctx.journal is not None
    assert ctx.journal.entries == []


# -- (5) crypttab ---------------------------------------------------------------

CRYPTTAB = """\
# <target name>\t<source device>\t\t<key file>\t<options>
sda5_crypt /dev/sda5 none luks,discard
cswap\t/dev/sda6\t/dev/urandom\tswap,cipher=aes-xts-plain64,size=256
backup_crypt UUID=aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee /etc/keys/backup luks
usb_crypt /dev/sdc1 none luks,noauto
"""


def test_crypttab(tmp_path: Path, handle: VMCraft) -> None:
    put(tmp_path, "etc/crypttab", CRYPTTAB)
    put(
        tmp_path,
        "etc/fstab",
        "/dev/mapper/sda5_crypt / ext4 errors=remount-ro 0 1\n"
        "/dev/sda1 /boot ext2 defaults 0 2\n"
        "/dev/mapper/cswap none swap sw 0 0\n",
    )
    devices = table(
        dev("/dev/sda1", "ext2", BOOT_UUID),
        dev("/dev/sda5", "crypto_LUKS", LUKS_UUID, "0d5e3a1c-05"),
        # What blkid sees on a plain swap partition today is not its own.
        dev("/dev/sda6", "swap", SWAP_UUID, CSWAP_PARTUUID),
    )
    ctx = context(handle, tmp_path, devices)
    found = NamesRepair().find(ctx)
    assert summary(found) == [
        ("/etc/fstab", f"becomes UUID={BOOT_UUID}"),
        ("/etc/crypttab", f"becomes UUID={LUKS_UUID}"),
        ("/etc/crypttab", f"becomes PARTUUID={CSWAP_PARTUUID}"),
    ], "the noauto line on an absent disk is not a finding"
    run_fix(ctx)
    assert (
        (tmp_path / "etc/crypttab").read_text()
        == f"""\
# <target name>\t<source device>\t\t<key file>\t<options>
sda5_crypt UUID={LUKS_UUID} none luks,discard
cswap\tPARTUUID={CSWAP_PARTUUID}\t/dev/urandom\tswap,cipher=aes-xts-plain64,size=256
backup_crypt UUID=aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee /etc/keys/backup luks
usb_crypt /dev/sdc1 none luks,noauto
"""
    )
    assert (tmp_path / "etc/fstab").read_text() == (
        "/dev/mapper/sda5_crypt / ext4 errors=remount-ro 0 1\n"
        f"UUID={BOOT_UUID} /boot ext2 defaults 0 2\n"
        "/dev/mapper/cswap none swap sw 0 0\n"
    )
    assert NamesRepair().find(ctx) == []


def test_a_plain_crypt_device_without_partuuid(tmp_path: Path, handle: VMCraft) -> None:
    put(tmp_path, "etc/crypttab", "cswap /dev/sdb /dev/urandom swap\n")
    ctx = context(handle, tmp_path, table(dev("/dev/sdb", None, SWAP_UUID)))
    found = NamesRepair().find(ctx)
    assert len(found) == 1
    assert found[0].detail.startswith(NO_STABLE_ID)


# -- (6) an already repaired guest, and stable names ------------------------------


def test_an_already_fixed_guest_has_no_findings(tmp_path: Path, handle: VMCraft) -> None:
    put(
        tmp_path,
        "etc/fstab",
        DEBIAN_FSTAB_FIXED
        + "/dev/mapper/vg0-home /home ext4 defaults 0 2\n"
        + "/dev/vg0/srv /srv ext4 defaults 0 2\n"
        + "LABEL=data /data xfs defaults 0 2\n"
        + "PARTUUID=0d5e3a1c-04 /srv2 xfs defaults 0 2\n",
    )
    put(tmp_path, "etc/default/grub", DEBIAN_DEFAULT_GRUB_FIXED)
    put(tmp_path, "etc/initramfs-tools/conf.d/resume", f"RESUME=UUID={SWAP_UUID}\n")
    put(tmp_path, "etc/crypttab", f"root_crypt UUID={LUKS_UUID} none luks\n")
    put(tmp_path, "etc/kernel/cmdline", "root=/dev/mapper/vg0-root ro resume=LABEL=swap\n")
    put(tmp_path, "boot/loader/entries/x.conf", f"options root=PARTUUID={SWAP_PARTUUID} ro\n")
    put(tmp_path, "boot/grub2/device.map", "(hd0) /dev/mapper/mpatha\n")
    before = tree_hashes(tmp_path)
    ctx = context(handle, tmp_path, ONE_DISK)
    assert NamesRepair().find(ctx) == []
    report = run_fix(ctx)
    assert report.rewrites == []
    assert report.removals == []
    assert tree_hashes(tmp_path) == before


def test_a_guest_without_any_of_the_files(tmp_path: Path, handle: VMCraft) -> None:
    ctx = context(handle, tmp_path, ONE_DISK)
    assert NamesRepair().find(ctx) == []


# -- (7) what is left for a person --------------------------------------------------


def test_unknown_devices_are_findings_and_stay(tmp_path: Path, handle: VMCraft) -> None:
    text = (
        "/dev/sda2 / ext4 defaults 0 1\n"
        "/dev/sdb1 /data ext4 defaults 0 2\n"
        "/dev/sdd1 /media/usb vfat nofail 0 0\n"
        "/dev/hdc /media/cdrom iso9660 ro,user,noauto 0 0\n"
    )
    put(tmp_path, "etc/fstab", text)
    ctx = context(handle, tmp_path, ONE_DISK)
    found = NamesRepair().find(ctx)
    assert summary(found) == [
        ("/etc/fstab", f"becomes UUID={ROOT_UUID}"),
        ("/etc/fstab", f"{NOT_THIS_GUEST} (/dev/sdb1)"),
    ]
    run_fix(ctx)
    assert (tmp_path / "etc/fstab").read_text() == text.replace("/dev/sda2", f"UUID={ROOT_UUID}")
    assert summary(NamesRepair().find(ctx)) == [("/etc/fstab", f"{NOT_THIS_GUEST} (/dev/sdb1)")]
    # Left to a person, not a failed check: fix-boot notes it and goes on.
    assert [f.fixable for f in NamesRepair().find(ctx)] == [False]
    assert NamesRepair().check(ctx, 0.0)[0].ok


def test_a_device_without_uuid_gets_its_partuuid(tmp_path: Path, handle: VMCraft) -> None:
    put(tmp_path, "etc/fstab", "/dev/sda3 none swap sw 0 0\n/dev/sda4 none swap sw 0 0\n")
    devices = table(
        dev("/dev/sda3", "swap", None, SWAP_PARTUUID),
        dev("/dev/sda4", "swap"),
    )
    ctx = context(handle, tmp_path, devices)
    found = NamesRepair().find(ctx)
    assert [f.detail for f in found] == [
        f"becomes PARTUUID={SWAP_PARTUUID}",
        f"{NO_STABLE_ID} (/dev/sda4)",
    ]
    run_fix(ctx)
    assert (tmp_path / "etc/fstab").read_text() == (
        f"PARTUUID={SWAP_PARTUUID} none swap sw 0 0\n/dev/sda4 none swap sw 0 0\n"
    )


def test_two_old_disks_that_would_become_one(tmp_path: Path, handle: VMCraft) -> None:
    text = "/dev/sda2 / ext4 defaults 0 1\n/dev/nvme0n1p1 /data ext4 defaults 0 2\n"
    put(tmp_path, "etc/fstab", text)
    ctx = context(handle, tmp_path, ONE_DISK)
    assert summary(NamesRepair().find(ctx)) == [("/etc/fstab", CANNOT_TELL)] * 2
    run_fix(ctx)
    assert (tmp_path / "etc/fstab").read_text() == text


def test_an_fstab_type_the_device_does_not_hold(tmp_path: Path, handle: VMCraft) -> None:
    text = "/dev/sda2 / xfs defaults 0 1\n/dev/sda1 /boot ext3 defaults 0 2\n"
    put(tmp_path, "etc/fstab", text)
    ctx = context(handle, tmp_path, ONE_DISK)
    found = NamesRepair().find(ctx)
    assert [f.detail for f in found] == [
        f"{CANNOT_TELL}: /dev/sda2 holds ext4, the file says xfs",
        f"becomes UUID={BOOT_UUID}",  # ext3 in fstab, ext4 on disk: one family
    ]


# -- (8) GRUB_DISABLE_* -----------------------------------------------------------

NOTE_LINUX = "# vmcraft: grub-mkconfig would write root= as a device name, which changes on KVM"
NOTE_UUID = "# vmcraft: grub.cfg would find its disks by names that change on KVM"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            'GRUB_DISABLE_LINUX_UUID="true"\n',
            f'#GRUB_DISABLE_LINUX_UUID="true"  {NOTE_LINUX}\n',
            id="quoted",
        ),
        pytest.param(
            "export GRUB_DISABLE_LINUX_UUID=true\n",
            f"#export GRUB_DISABLE_LINUX_UUID=true  {NOTE_LINUX}\n",
            id="exported",
        ),
        pytest.param(
            "GRUB_DISABLE_LINUX_UUID=true\nGRUB_DISABLE_LINUX_PARTUUID=true\n",
            f"#GRUB_DISABLE_LINUX_UUID=true  {NOTE_LINUX}\nGRUB_DISABLE_LINUX_PARTUUID=true\n",
            id="partuuid-disabled-too",
        ),
        pytest.param(
            "GRUB_DISABLE_LINUX_UUID=true\nGRUB_DISABLE_LINUX_PARTUUID=false\n",
            None,
            id="partuuid-enabled-root-is-partuuid",
        ),
        pytest.param(
            "GRUB_DISABLE_LINUX_UUID=true\nGRUB_DISABLE_LINUX_UUID=false\n", None, id="overridden"
        ),
        pytest.param("#GRUB_DISABLE_LINUX_UUID=true\n", None, id="commented"),
        pytest.param("GRUB_DISABLE_LINUX_UUID=false\n", None, id="false"),
        pytest.param(
            "GRUB_DISABLE_UUID=true\r\n",
            f"#GRUB_DISABLE_UUID=true  {NOTE_UUID}\r\n",
            id="disable-uuid-crlf",
        ),
        pytest.param(
            "GRUB_DISABLE_UUID=true\nGRUB_DISABLE_LINUX_UUID=true\n",
            f"#GRUB_DISABLE_UUID=true  {NOTE_UUID}\n#GRUB_DISABLE_LINUX_UUID=true  {NOTE_LINUX}\n",
            id="both",
        ),
    ],
)
def test_grub_disable_settings(
    tmp_path: Path, handle: VMCraft, text: str, expected: str | None
) -> None:
    put(tmp_path, "etc/default/grub", text)
    ctx = context(handle, tmp_path, ONE_DISK)
    found = NamesRepair().find(ctx)
    assert bool(found) == (expected is not None)
    run_fix(ctx)
    assert (tmp_path / "etc/default/grub").read_bytes() == (expected or text).encode()
    assert NamesRepair().find(ctx) == []


def test_grub_d_snippets_count(tmp_path: Path, handle: VMCraft) -> None:
    put(tmp_path, "etc/default/grub", 'GRUB_CMDLINE_LINUX=""\n')
    put(
        tmp_path,
        "etc/default/grub.d/50-cloudimg-settings.cfg",
        'GRUB_CMDLINE_LINUX_DEFAULT="console=tty1 root=/dev/vda1"\nGRUB_DISABLE_LINUX_UUID=true\n',
    )
    put(tmp_path, "etc/default/grub.d/README", "GRUB_DISABLE_LINUX_UUID=true\n")
    ctx = context(handle, tmp_path, table(dev("/dev/sda1", "ext4", ROOT_UUID)))
    run_fix(ctx)
    assert (tmp_path / "etc/default/grub.d/50-cloudimg-settings.cfg").read_text() == (
        f'GRUB_CMDLINE_LINUX_DEFAULT="console=tty1 root=UUID={ROOT_UUID}"\n'
        f"#GRUB_DISABLE_LINUX_UUID=true  {NOTE_LINUX}\n"
    )
    assert (tmp_path / "etc/default/grub.d/README").read_text() == "GRUB_DISABLE_LINUX_UUID=true\n"


# -- (9) bytes the step does not own stay --------------------------------------------


def test_crlf_and_non_utf8_bytes_survive(tmp_path: Path, handle: VMCraft) -> None:
    raw = b"# Jos\xe9's disk\r\n/dev/sda2\t/\text4\tdefaults\t0 1\r\n\r\n/dev/sda3 none swap sw"
    put(tmp_path, "etc/fstab", raw)
    ctx = context(handle, tmp_path, ONE_DISK)
    report = run_fix(ctx)
    assert (tmp_path / "etc/fstab").read_bytes() == (
        b"# Jos\xe9's disk\r\n"
        + f"UUID={ROOT_UUID}\t/\text4\tdefaults\t0 1\r\n\r\nUUID={SWAP_UUID} none swap sw".encode()
    )
    assert report.rewrites[0] == Rewrite(
        "/etc/fstab",
        "/dev/sda2\t/\text4\tdefaults\t0 1",
        f"UUID={ROOT_UUID}\t/\text4\tdefaults\t0 1",
    )
    assert NamesRepair().find(ctx) == []


def test_only_root_and_resume_arguments_change(tmp_path: Path, handle: VMCraft) -> None:
    line = (
        "root=/dev/sda2 rd.root=/dev/sda2 noresume=/dev/sda3 resume=/dev/sda3 resume_offset=0 "
        "root=/dev/mapper/vg-root console=/dev/sda2"
    )
    put(tmp_path, "etc/kernel/cmdline", f"# comment root=/dev/sda2\n{line}\n")
    ctx = context(handle, tmp_path, ONE_DISK)
    run_fix(ctx)
    assert (tmp_path / "etc/kernel/cmdline").read_text() == (
        "# comment root=/dev/sda2\n"
        f"root=UUID={ROOT_UUID} rd.root=/dev/sda2 noresume=/dev/sda3 resume=UUID={SWAP_UUID} "
        "resume_offset=0 root=/dev/mapper/vg-root console=/dev/sda2\n"
    )


# -- (10) the names themselves ----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("/dev/sda", True),
        ("/dev/sda2", True),
        ("/dev/sdab12", True),
        ("/dev/hda1", True),
        ("/dev/vda1", True),
        ("/dev/xvda1", True),
        ("/dev/nvme0n1", True),
        ("/dev/nvme0n1p2", True),
        ("/dev/disk/by-path/pci-0000:00:10.0-scsi-0:0:0:0-part1", True),
        ("/dev/disk/by-id/ata-VMware_Virtual_IDE_Hard_Drive_00000000000000000001", True),
        ("/dev/disk/by-id/wwn-0x6000c29a1b2c3d4e-part2", True),
        ("/dev/disk/by-id/dm-name-vg0-root", False),
        ("/dev/disk/by-id/dm-uuid-LVM-abc", False),
        ("/dev/disk/by-id/lvm-pv-uuid-abc", False),
        ("/dev/disk/by-id/md-uuid-abc", False),
        ("/dev/disk/by-uuid/" + ROOT_UUID, False),
        ("/dev/disk/by-label/root", False),
        ("/dev/disk/by-partuuid/0d5e3a1c-02", False),
        ("/dev/mapper/vg0-root", False),
        ("/dev/vg0/root", False),
        ("/dev/sda/x", False),
        ("/dev/md0", False),
        ("/dev/sr0", False),
        ("UUID=" + ROOT_UUID, False),
        ("LABEL=root", False),
        ("PARTUUID=0d5e3a1c-02", False),
        ("tmpfs", False),
    ],
)
def test_controller_dependent(name: str, expected: bool) -> None:
    assert controller_dependent(name) is expected
