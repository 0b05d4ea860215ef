"""The drivers step on the real Debian bookworm disk, with its own update-initramfs and lsinitramfs.

The demo disk is made VMware-shaped first, as ``tests/fixtures/build-vmware-
guest.sh`` makes its guests: an initrd built with VMware's disk and NIC
drivers and no virtio, then ``MODULES=dep`` and the stock modules file.
The test then shows both halves of the decision in drivers.py:

* before: the guest's own ``update-initramfs -u -k all`` under MODULES=dep,
  in a chroot on this conversion host, exits 0 and writes an image sized
  for the host (here: virtio_pci and virtio_mmio from the host's sysfs),
  with no virtio_blk and no vmw_pvscsi: no driver for the guest's disk on
  either platform;
* after the fix: the rebuild fix-boot makes (MODULES=most for that one
  rebuild, the override removed afterwards) holds virtio_blk, virtio_scsi,
  virtio_pci, virtio_net and vmw_pvscsi, and so does the guest's *next*
  update-initramfs under its own MODULES=dep, from the modules file alone.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import cast

import pytest

from tests.conftest import CopyImage, launched
from vmcraft import VMCraft
from vmcraft.fixers.attempts import run_guest_command
from vmcraft.fixers.drivers import (
    INITRAMFS_TOOLS_MODULES,
    REBUILD_OVERRIDE,
    VIRTIO_DRIVERS,
    DriversRepair,
    generic_rebuild,
    list_image,
    modules_in_listing,
)
from vmcraft.fixers.journal import GuestFilesView, Journal
from vmcraft.fixers.layout import detect_layout
from vmcraft.fixers.step import RepairContext, Step
from vmcraft.report import StepReport

pytestmark = [pytest.mark.root]

CONF = "/etc/initramfs-tools/initramfs.conf"
# As tests/fixtures/build-vmware-guest.sh lists them (MODULES=list needs the root filesystem too).
VMWARE_MODULES = [
    "vmw_pvscsi",
    "mptbase",
    "mptscsih",
    "mptspi",
    "mptsas",
    "vmxnet3",
    "sd_mod",
    "ext4",
    "crc32c_generic",
]
WANTED = [*VIRTIO_DRIVERS, "vmw_pvscsi"]


def set_modules(g: VMCraft, value: str) -> None:
    text = g.read_file(CONF).decode()
    g.write(CONF, re.sub(r"(?m)^MODULES=.*$", f"MODULES={value}", text))


def rebuild(g: VMCraft, cmd: tuple[str, ...] = ("update-initramfs", "-u", "-k", "all")) -> float:
    start = time.perf_counter()
    attempt = run_guest_command(g, cmd, mounts=True, timeout=600)
    assert attempt.ok, attempt.out
    return time.perf_counter() - start


def image_modules(ctx: RepairContext, kernel: str) -> set[str]:
    return modules_in_listing(list_image(ctx, kernel))


@pytest.fixture
def guest(image_copy: CopyImage) -> Iterator[VMCraft]:
    """The demo disk's copy, mounted read-write, made VMware-shaped (see the module's text)."""
    g = launched(image_copy("raw"), readonly=False)
    try:
        g.mount("/dev/sda2", "/")
        stock = g.read_file(INITRAMFS_TOOLS_MODULES)
        listed = "".join(f"{m}\n" for m in VMWARE_MODULES).encode()
        g.write(INITRAMFS_TOOLS_MODULES, stock + listed)
        set_modules(g, "list")
        rebuild(g)
        g.write(INITRAMFS_TOOLS_MODULES, stock)
        set_modules(g, "dep")
        yield g
    finally:
        g.close()


def context(g: VMCraft) -> RepairContext:
    # The handle has no rmdir, which Journal's rollback asks for; this test does not roll back.
    journal = Journal(cast(GuestFilesView, g))
    layout = detect_layout(g, "debian", {"/": "/dev/sda2"})
    return RepairContext(g, layout, [], {}, journal=journal)


def test_modules_dep_in_a_chroot_and_the_fix(guest: VMCraft) -> None:
    g = guest
    ctx = context(g)
    (kernel,) = ctx.layout.kernels
    image = ctx.layout.initrd_path(kernel)
    vmware_image = image_modules(ctx, kernel)
    assert {"vmw_pvscsi", "mptspi", "vmxnet3"} <= vmware_image
    assert not vmware_image & set(VIRTIO_DRIVERS)

    # Before: the guest's own rebuild under MODULES=dep, no fix. Kept aside and put back,
    # so the fix below sees the guest as a VMware conversion leaves it.
    g.cp(image, "/root/initrd.vmware")
    before_seconds = rebuild(g)
    before = image_modules(ctx, kernel)
    print(f"before (MODULES=dep, no fix, {before_seconds:.1f} s): {sorted(before)}")
    assert not before & {"virtio_blk", "virtio_scsi", "vmw_pvscsi", "mptspi", "mptsas"}, (
        "MODULES=dep in a chroot was expected to size the image for this host"
    )
    g.cp("/root/initrd.vmware", image)
    g.rm("/root/initrd.vmware")

    repair = DriversRepair()
    findings = repair.find(ctx)
    assert [f.path for f in findings] == [INITRAMFS_TOOLS_MODULES]
    assert findings[0].what.startswith("initramfs-tools modules file lacks virtio_blk")
    assert "came from VMware (vmw_pvscsi is in" in findings[0].detail
    report = StepReport()
    repair.fix(ctx, findings, report)
    assert report.success
    assert repair.find(ctx) == []

    with generic_rebuild(ctx, Step.INITRAMFS) as cmd:
        assert g.is_file(REBUILD_OVERRIDE)
        after_seconds = rebuild(g, cmd)
    assert not g.exists(REBUILD_OVERRIDE)
    assert re.search(r"(?m)^MODULES=dep$", g.read_file(CONF).decode())

    after = image_modules(ctx, kernel)
    print(f"after (fix-boot's rebuild, {after_seconds:.1f} s): {len(after)} modules")
    assert set(WANTED) <= after
    assert repair.missing_in_image(ctx, kernel, list_image(ctx, kernel)) == []
    assert [c.ok for c in repair.check_images(ctx)] == [True]

    # The guest's next kernel update: its own MODULES=dep, the modules file alone.
    next_seconds = rebuild(g)
    following = image_modules(ctx, kernel)
    print(f"next update (MODULES=dep + modules file, {next_seconds:.1f} s): {sorted(following)}")
    assert set(WANTED) <= following
    assert [c.ok for c in repair.check_images(ctx)] == [True]
