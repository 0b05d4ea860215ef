"""The proof of fix-boot on an LVM root: guest (c) boots on KVM's virtio after it, and on VMware.

Guest (c) of ``tests.fixtures.vmwareguest`` is a Debian install with
guided LVM on VMware: /boot on ``/dev/sda2``, the root on LV ``root`` of VG
``vmware-guest-vg`` on ``/dev/sda3``, and an admin's filter in lvm.conf
that accepts only ``/dev/sda*``. It boots to ``login:`` on VMware's PVSCSI
and stops in its initramfs on virtio-blk
(tests/e2e/test_vmware_guests_baseline.py shows both). This host has no
device-mapper, so fix-boot reaches the LV as a loop device at its byte
range, and grub-probe in the guest sees only that loop device: the new
grub.cfg must still name the root as a device-mapper host does, and reach
nothing of this host's. Then ``vmcraft check`` finds nothing, a second run
changes nothing, and the guest boots on virtio-blk and on PVSCSI.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from tests.boot import KVM_VIRTIO_BLK, VMWARE_PVSCSI, boot
from tests.conftest import vmcraft_cli as vmcraft
from tests.conftest import writable_copy
from tests.e2e.test_vmware_repair import BOOT_TIMEOUT, OUTCOMES
from tests.fixtures.vmwareguest import (
    LVM_ROOT,
    list_root_dir,
    read_guest_file,
    read_root_file,
    vmware_guest_facts,
)

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("leak_check")]

HOST_ONLY = re.compile(r"loopback|\(loop|/dev/loop|/dev/nbd|/dev/dm-")


def test_fix_boot_makes_an_lvm_root_guest_boot_on_kvm(tmp_path: Path) -> None:
    facts = vmware_guest_facts(LVM_ROOT)
    assert facts.vg
    assert facts.lv
    dm_root = f"/dev/mapper/{facts.vg.replace('-', '--')}-{facts.lv.replace('-', '--')}"
    assert facts.root_device == dm_root
    image = writable_copy(facts.raw, tmp_path / f"{LVM_ROOT.name}.raw")
    copy = dataclasses.replace(facts, raw=image)
    try:
        before = vmcraft("check", str(image), "--json")
        assert before.returncode == 1, before.stdout
        found = json.loads(before.stdout)["findings"]
        assert {f["step"] for f in found} >= {"names", "drivers", "lvm", "initramfs"}
        lvm_found = [f for f in found if f["step"] == "lvm"]
        assert [f["path"] for f in lvm_found] == ["/etc/lvm/lvm.conf"], lvm_found
        assert "/dev/vda3" in lvm_found[0]["what"]

        done = vmcraft("fix-boot", str(image), "--json")
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert report["success"] is True
        assert [m["device"] for m in report["mounted"] if m["mountpoint"] == "/"] == [
            f"/dev/{facts.vg}/{facts.lv}"
        ]
        (rewrite,) = report["lvm"]["rewrites"]
        assert rewrite["path"] == "/etc/lvm/lvm.conf"
        assert rewrite["before"] == f"\tfilter = {LVM_ROOT.lvm_filter}"
        assert rewrite["after"].startswith(f"#\tfilter = {LVM_ROOT.lvm_filter}  # vmcraft: ")
        assert report["initramfs"]["attempts"], "the initramfs copies lvm.conf: rebuilt"

        conf = read_root_file(copy, "/etc/lvm/lvm.conf")
        assert not [ln for ln in conf.splitlines() if re.match(r"\s*(global_)?filter\s*=", ln)]
        fstab = read_root_file(copy, "/etc/fstab")
        assert f"{dm_root} / ext4" in fstab
        assert "/dev/sda" not in fstab

        cfg = read_guest_file(image, 2, "/grub/grub.cfg")
        assert not [ln for ln in cfg.splitlines() if HOST_ONLY.search(ln)], cfg
        kernel_lines = [ln.strip() for ln in cfg.splitlines() if ln.strip().startswith("linux")]
        assert kernel_lines
        for line in kernel_lines:
            assert f" root={dm_root} " in line, line
        assert f"search --no-floppy --fs-uuid --set=root {facts.boot_uuid}" in cfg
        assert "zz-vmcraft-lvm.cfg" not in list_root_dir(copy, "/etc/default/grub.d")

        after = vmcraft("check", str(image), "--json")
        assert after.returncode == 0, after.stdout
        assert json.loads(after.stdout)["findings"] == []
        again = vmcraft("fix-boot", str(image), "--json")
        assert again.returncode == 0, again.stderr
        second = json.loads(again.stdout)
        assert second["plan"] == [], "a second run changes nothing"
        assert "nothing to change: the guest is already repaired" in second["notes"]

        for hardware in (KVM_VIRTIO_BLK, VMWARE_PVSCSI):
            result = boot(image, "raw", OUTCOMES, timeout=BOOT_TIMEOUT, hardware=hardware)
            assert result.outcome == "login", f"{hardware.name}:\n{result.tail(40)}"
            assert result.line(rf"Command line: .* root={re.escape(dm_root)} "), result.tail(40)
    finally:
        image.unlink(missing_ok=True)
