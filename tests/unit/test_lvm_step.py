"""The lvm step on synthetic guest trees: filters, the devices file and caches of the old disks.

Each tree is a directory in ``tmp_path`` holding only the files the step
reads, read and written through ``VMCraft.from_root`` (no root, no mount).
Every rewrite is asserted as the whole file; the journal puts every file
back byte for byte, and a second run finds nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.unit.trees import put, tree_hashes
from vmcraft.fixers.bootloader.grub import LVM_DROPIN, check_grub_cfg, lvm_root_dropin
from vmcraft.fixers.fixboot import REPAIRS
from vmcraft.fixers.initramfs import InitramfsRepair
from vmcraft.fixers.journal import Journal
from vmcraft.fixers.layout import BootLayout
from vmcraft.fixers.lvm import LvmRepair, accepts
from vmcraft.fixers.step import RepairContext, Step
from vmcraft.handle import VMCraft
from vmcraft.report import Rewrite, StepReport

LAYOUT = BootLayout(
    distro="debian",
    family="debian",
    boot_mode="bios",
    kernels=("6.1.0-13-amd64",),
    grub_cfg="/boot/grub/grub.cfg",
    bootloader_cmd=("update-grub",),
    initramfs_cmd=("update-initramfs", "-u", "-k", "all"),
    grub_install_tool="grub-install",
)

# What lvm.conf looks like on an installed bookworm, cut down, with the
# filter an admin adds to keep LVM off every disk but the system's.
LVM_CONF = """\
config {
\tcheckpoint = 0
}
devices {
\tfilter = [ "a|^/dev/sda|", "r|.*|" ]
\t# global_filter = [ "r|/dev/cdrom|" ]
\tscan = [ "/dev" ]
}
"""
NOTE = "  # vmcraft: rejected the disks' names on KVM; LVM finds its PVs by UUID"

DEVICES = """\
# LVM uses devices listed in this file.
# Created by LVM command vgimportdevices pid 1012 at Tue Mar  5 10:12:01 2024
VERSION=1.1.2
IDTYPE=devname IDNAME=/dev/sda3 DEVNAME=/dev/sda3 PVID=Xk3vQ2qkM0eB1mC4aN7dR9fT2gH5jL8p PART=3
"""


@pytest.fixture
def handle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[VMCraft]:
    with VMCraft.from_root(tmp_path) as g:
        if not hasattr(g, "rmdir"):
            monkeypatch.setattr(
                g, "rmdir", lambda path: os.rmdir(tmp_path / path.lstrip("/")), raising=False
            )
        yield g


def context(g: VMCraft, *, writable: bool = True) -> RepairContext:
    journal: Any = Journal(g) if writable else None
    return RepairContext(g=g, layout=LAYOUT, fstab=[], devices={}, journal=journal)


def run_fix(ctx: RepairContext) -> StepReport:
    repair = LvmRepair()
    report = StepReport()
    repair.fix(ctx, repair.find(ctx), report)
    return report


# -- the order of the steps ------------------------------------------------------


def test_lvm_runs_after_drivers_and_before_the_initramfs_that_copies_its_files() -> None:
    assert REPAIRS[:3] == (Step.NAMES, Step.DRIVERS, Step.LVM)
    assert REPAIRS.index(Step.LVM) < REPAIRS.index(Step.INITRAMFS)
    assert Step.LVM in InitramfsRepair.COPIED_FROM


# -- how a filter is judged ------------------------------------------------------


@pytest.mark.parametrize(
    ("items", "names", "accepted"),
    [
        (["a|^/dev/sda|", "r|.*|"], ["/dev/vda3"], False),
        (["a|^/dev/sda|", "r|.*|"], ["/dev/sda3"], True),
        (["r|/dev/cdrom|"], ["/dev/vda3"], True),
        ([], ["/dev/vda3"], True),
        (["a|.*|"], ["/dev/vda3"], True),
        # One accepted name accepts the device (a stable by-id name).
        (
            ["a|^/dev/disk/by-id/lvm-pv-uuid-|", "r|.*|"],
            ["/dev/vda3", "/dev/disk/by-id/lvm-pv-uuid-abc"],
            True,
        ),
        # Any delimiter; the first match decides.
        (["r#^/dev/vd#", "a#.*#"], ["/dev/vda3"], False),
        (["a/sd[a-z]3$/", "r/.*/"], ["/dev/vdb3"], False),
        # A pattern that cannot be read is taken to reject.
        (["a|([|", "r|.*|"], ["/dev/vda3"], False),
    ],
)
def test_a_filter_is_judged_as_lvm_judges_it(
    items: list[str], names: list[str], accepted: bool
) -> None:
    assert accepts(items, names) is accepted


# -- (1) the admin's filter in lvm.conf -----------------------------------------


def test_a_filter_accepting_only_sda_is_commented_out(tmp_path: Path, handle: VMCraft) -> None:
    conf = put(tmp_path, "etc/lvm/lvm.conf", LVM_CONF)
    ctx = context(handle)

    found = LvmRepair().find(ctx)
    assert [(f.path, f.what) for f in found] == [
        (
            "/etc/lvm/lvm.conf",
            "filter in lvm.conf rejects /dev/vda (virtio-blk), "
            "/dev/vda1 (virtio-blk), /dev/vda2 (virtio-blk), /dev/vda3 (virtio-blk), "
            "/dev/vda4 (virtio-blk)",
        ),
    ]
    assert found[0].detail == "filter = [ 'a|^/dev/sda|', 'r|.*|' ] becomes a comment"

    report = run_fix(ctx)

    assert conf.read_text() == LVM_CONF.replace(
        '\tfilter = [ "a|^/dev/sda|", "r|.*|" ]\n',
        f'#\tfilter = [ "a|^/dev/sda|", "r|.*|" ]{NOTE}\n',
    )
    assert report.rewrites == [
        Rewrite(
            "/etc/lvm/lvm.conf",
            '\tfilter = [ "a|^/dev/sda|", "r|.*|" ]',
            f'#\tfilter = [ "a|^/dev/sda|", "r|.*|" ]{NOTE}',
        )
    ]
    assert LvmRepair().find(ctx) == []
    assert [c.ok for c in LvmRepair().check(ctx, 0.0)] == [True]


def test_a_global_filter_over_several_lines_is_commented_out_whole(
    tmp_path: Path, handle: VMCraft
) -> None:
    text = (
        "devices {\n"
        '    global_filter = [ "a|^/dev/sd[a-b][0-9]*$|",  # the system disks\n'
        '                      "r|.*|" ]\n'
        '    filter = [ "r|/dev/cdrom|" ]\n'
        "}\n"
    )
    conf = put(tmp_path, "etc/lvm/lvm.conf", text)
    ctx = context(handle)

    found = LvmRepair().find(ctx)
    assert [f.what.split(" rejects")[0] for f in found] == ["global_filter in lvm.conf"]
    run_fix(ctx)

    assert conf.read_text() == (
        "devices {\n"
        '#    global_filter = [ "a|^/dev/sd[a-b][0-9]*$|",  # the system disks' + NOTE + "\n"
        '#                      "r|.*|" ]\n'
        '    filter = [ "r|/dev/cdrom|" ]\n'
        "}\n"
    )
    assert LvmRepair().find(ctx) == []


def test_a_filter_sharing_its_line_accepts_every_disk(tmp_path: Path, handle: VMCraft) -> None:
    text = 'devices { filter = [ "a|/dev/sda|", "r|.*|" ] scan = [ "/dev" ] }\r\n'
    conf = put(tmp_path, "etc/lvm/lvmlocal.conf", text)
    ctx = context(handle)

    found = LvmRepair().find(ctx)
    assert [f.detail.rsplit("] ", 1)[1] for f in found] == ['becomes [ "a|.*|" ]']
    report = run_fix(ctx)

    assert conf.read_bytes() == b'devices { filter = [ "a|.*|" ] scan = [ "/dev" ] }\r\n'
    assert [(r.path, r.before, r.after) for r in report.rewrites] == [
        (
            "/etc/lvm/lvmlocal.conf",
            'devices { filter = [ "a|/dev/sda|", "r|.*|" ] scan = [ "/dev" ] }',
            'devices { filter = [ "a|.*|" ] scan = [ "/dev" ] }',
        )
    ]
    assert LvmRepair().find(ctx) == []


def test_filters_that_accept_the_kvm_names_are_left_alone(tmp_path: Path, handle: VMCraft) -> None:
    text = (
        "devices {\n"
        '\tfilter = [ "r|/dev/cdrom|", "r|^/dev/fd[0-9]|" ]\n'
        '\tglobal_filter = [ "a|^/dev/disk/by-id/lvm-pv-uuid-|", "a|.*|" ]\n'
        '\t# filter = [ "a|^/dev/sda|", "r|.*|" ]\n'
        "}\n"
    )
    put(tmp_path, "etc/lvm/lvm.conf", text)
    put(tmp_path, "etc/lvm/lvm.conf.d/10-site.conf", 'devices { filter = "a|.*|" }\n')

    assert LvmRepair().find(context(handle)) == []


def test_a_drop_in_of_lvm_conf_d_is_read_too(tmp_path: Path, handle: VMCraft) -> None:
    put(tmp_path, "etc/lvm/lvm.conf", "devices {\n}\n")
    drop = put(tmp_path, "etc/lvm/lvm.conf.d/50-disks.conf", 'filter = "a|^/dev/sda3$|"\n')
    ctx = context(handle)

    # A single string is a list of one; on its own, an `a` rejects nothing.
    assert LvmRepair().find(ctx) == []
    drop.write_text('filter = [ "a|^/dev/sda3$|", "r|.*|" ]\n')
    assert [f.path for f in LvmRepair().find(ctx)] == ["/etc/lvm/lvm.conf.d/50-disks.conf"]
    run_fix(ctx)
    assert drop.read_text() == f'#filter = [ "a|^/dev/sda3$|", "r|.*|" ]{NOTE}\n'


# -- (2) the devices file and (3) caches ---------------------------------------------


def test_a_devices_file_pinned_by_devname_and_the_cache_are_removed(
    tmp_path: Path, handle: VMCraft
) -> None:
    put(tmp_path, "etc/lvm/lvm.conf", "devices {\n}\n")
    devices = put(tmp_path, "etc/lvm/devices/system.devices", DEVICES)
    cache = put(
        tmp_path,
        "etc/lvm/cache/.cache",
        'persistent_filter_cache {\n valid_devices=[\n"/dev/sda3"\n]\n}\n',
    )
    ctx = context(handle)

    found = LvmRepair().find(ctx)
    assert [(f.path, f.what) for f in found] == [
        (
            "/etc/lvm/devices/system.devices",
            "the devices file lists PV Xk3vQ2qkM0eB1mC4aN7dR9fT2gH5jL8p by "
            "devname=/dev/sda3, which no KVM disk has",
        ),
        ("/etc/lvm/cache/.cache", "a cache of an old scan names the old disks"),
    ]
    report = run_fix(ctx)

    assert not devices.exists()
    assert not cache.exists()
    assert report.removals == ["/etc/lvm/devices/system.devices", "/etc/lvm/cache/.cache"]
    assert report.rewrites == []
    assert LvmRepair().find(ctx) == []


@pytest.mark.parametrize("idtype", ["sys_wwid", "sys_serial"])
def test_a_devices_file_by_the_old_disks_ids_is_removed(
    tmp_path: Path, handle: VMCraft, idtype: str
) -> None:
    put(
        tmp_path,
        "etc/lvm/devices/system.devices",
        f"VERSION=1.1.1\nIDTYPE={idtype} IDNAME=naa.6000c29d3b1e2f4a DEVNAME=/dev/sda2 PVID=P1\n",
    )
    assert [f.path for f in LvmRepair().find(context(handle))] == [
        "/etc/lvm/devices/system.devices"
    ]


def test_a_devices_file_of_stable_ids_is_kept(tmp_path: Path, handle: VMCraft) -> None:
    put(
        tmp_path,
        "etc/lvm/devices/system.devices",
        "VERSION=1.1.1\nIDTYPE=md_uuid IDNAME=2f5c9a1e:4b7d3c2a DEVNAME=/dev/md0 PVID=P1\n",
    )
    assert LvmRepair().find(context(handle)) == []


def test_a_guest_without_lvm_has_nothing_to_fix(tmp_path: Path, handle: VMCraft) -> None:
    put(tmp_path, "etc/fstab", "UUID=abc / ext4 defaults 0 1\n")
    assert LvmRepair().find(context(handle)) == []


# -- the journal -------------------------------------------------------------------


def test_rollback_puts_every_file_back_byte_for_byte(tmp_path: Path, handle: VMCraft) -> None:
    put(tmp_path, "etc/lvm/lvm.conf", LVM_CONF.replace("\n", "\r\n").encode() + b"# \xff\n")
    put(tmp_path, "etc/lvm/devices/system.devices", DEVICES)
    put(tmp_path, "etc/lvm/cache/.cache", "x\n")
    before = tree_hashes(tmp_path)
    ctx = context(handle)
    journal = ctx.journal
    assert journal is not None

    report = run_fix(ctx)
    assert report.rewrites
    assert report.removals
    # Odd bytes outside the filter survive the rewrite.
    assert (tmp_path / "etc/lvm/lvm.conf").read_bytes().endswith(b"# \xff\n")
    assert tree_hashes(tmp_path) != before

    restored = journal.rollback()
    assert sorted(r.path for r in restored) == [
        "/etc/lvm/cache/.cache",
        "/etc/lvm/devices/system.devices",
        "/etc/lvm/lvm.conf",
    ]
    assert tree_hashes(tmp_path) == before


def test_a_second_run_changes_nothing(tmp_path: Path, handle: VMCraft) -> None:
    put(tmp_path, "etc/lvm/lvm.conf", LVM_CONF)
    put(tmp_path, "etc/lvm/devices/system.devices", DEVICES)
    run_fix(context(handle))
    after = tree_hashes(tmp_path)

    ctx = context(handle)
    assert LvmRepair().find(ctx) == []
    report = run_fix(ctx)
    assert (report.rewrites, report.removals) == ([], [])
    assert tree_hashes(tmp_path) == after


def test_a_read_only_look_changes_nothing(tmp_path: Path, handle: VMCraft) -> None:
    put(tmp_path, "etc/lvm/lvm.conf", LVM_CONF)
    before = tree_hashes(tmp_path)
    ctx = context(handle, writable=False)
    assert LvmRepair().find(ctx)
    assert LvmRepair().plan(ctx, []) == []
    assert tree_hashes(tmp_path) == before


def test_a_discarded_drop_in_leaves_no_trace(tmp_path: Path, handle: VMCraft) -> None:
    """The bootloader step's grub.d drop-in lives for one command: after it, nothing is left."""
    put(tmp_path, "etc/default/grub", "GRUB_TIMEOUT=1\n")
    before = tree_hashes(tmp_path)
    journal: Any = Journal(handle)
    journal.make_dirs("/etc/default/grub.d", "bootloader")
    journal.write(LVM_DROPIN, "GRUB_DEVICE=/dev/mapper/vg-root\n", "bootloader")
    assert (tmp_path / LVM_DROPIN.lstrip("/")).exists()

    journal.discard(LVM_DROPIN)
    journal.finish()

    assert journal.entries == []
    assert tree_hashes(tmp_path) == before


# -- the grub.cfg the bug report showed ----------------------------------------------

BROKEN_CFG = """\
menuentry 'Debian GNU/Linux' $menuentry_id_option 'gnulinux-simple-/dev/loop0p2' {
\tinsmod ext2
\tloopback loop1 /loop0p2
\tset root=(loop1)
\tlinux\t/boot/vmlinuz-6.1.0-13-amd64 root=/dev/mapper/vg-root ro
\tinitrd\t/boot/initrd.img-6.1.0-13-amd64
}
"""


def test_a_grub_cfg_reaching_the_root_through_a_host_loop_device_fails() -> None:
    checks = check_grub_cfg(BROKEN_CFG, LAYOUT.kernels, lvm_names={"/dev/mapper/vg-root"})
    failed = [(c.name, c.detail) for c in checks if not c.ok]
    assert failed == [
        (
            "grub.cfg names no host-only device",
            "menuentry 'Debian GNU/Linux' $menuentry_id_option 'gnulinux-simple-/dev/loop0p2' {",
        )
    ]
    fixed = BROKEN_CFG.replace("/dev/loop0p2", "0c5e").replace(
        "\tloopback loop1 /loop0p2\n\tset root=(loop1)\n", "\tsearch --fs-uuid --set=root 1b2c\n"
    )
    assert all(c.ok for c in check_grub_cfg(fixed, LAYOUT.kernels, lvm_names=set()))
    for line in ("\tloopback loop1 /loop0p2\n", "\tset root=(loop1)\n"):
        cfg = fixed.replace("\tinsmod ext2\n", f"\tinsmod ext2\n{line}")
        assert not all(c.ok for c in check_grub_cfg(cfg, LAYOUT.kernels, lvm_names=set()))


# -- what grub-mkconfig is told about an LV root ------------------------------------


@dataclass(frozen=True)
class _Mount:
    device: str
    mountpoint: str


class _Guest:
    """The calls lvm_root_dropin makes: the guest's mounts and its grub-mkconfig."""

    def __init__(self, mounts: list[tuple[str, str]], mkconfig: bytes) -> None:
        self.mounts = [_Mount(d, m) for d, m in mounts]
        self.mkconfig = mkconfig

    def guest_mounts(self) -> list[_Mount]:
        return self.mounts

    def is_file(self, path: str, followsymlinks: bool = False) -> bool:
        return path == "/usr/sbin/grub-mkconfig"

    def read_file(self, path: str) -> bytes:
        return self.mkconfig


DEBIAN_MKCONFIG = b'for x in ${sysconfdir}/default/grub.d/*.cfg ; do\n  . "${x}"\ndone\n'
LVS = {"/dev/vmware-guest-vg/root", "/dev/mapper/vmware--guest--vg-root"}


def dropin_for(mounts: list[tuple[str, str]], mkconfig: bytes = DEBIAN_MKCONFIG) -> str | None:
    guest: Any = _Guest(mounts, mkconfig)
    ctx = RepairContext(g=guest, layout=LAYOUT, fstab=[], devices={}, lvm_names=LVS)
    return lvm_root_dropin(ctx)


def test_an_lv_root_is_named_for_grub_mkconfig_as_a_device_mapper_host_names_it() -> None:
    text = dropin_for([("/dev/vmware-guest-vg/root", "/"), ("/dev/sda2", "/boot")])
    assert text is not None
    assert [ln for ln in text.splitlines() if not ln.startswith("#")] == [
        "GRUB_DEVICE=/dev/mapper/vmware--guest--vg-root",
        "GRUB_DEVICE_UUID=",
        "GRUB_DEVICE_PARTUUID=",
    ]


def test_a_boot_on_the_root_lv_is_named_too() -> None:
    text = dropin_for([("/dev/vmware-guest-vg/root", "/")])
    assert text is not None
    assert "GRUB_DEVICE_BOOT=/dev/mapper/vmware--guest--vg-root" in text.splitlines()


def test_no_drop_in_without_an_lv_or_for_a_grub_mkconfig_that_does_not_read_grub_d() -> None:
    assert dropin_for([("/dev/sda3", "/"), ("/dev/sda2", "/boot")]) is None
    assert dropin_for([("/dev/vmware-guest-vg/root", "/")], mkconfig=b"# no drop-ins\n") is None
