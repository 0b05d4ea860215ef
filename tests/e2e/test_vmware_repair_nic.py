"""The proof of ``fix-boot --nic``: guest (g) keeps its VMware NIC name, and so its network, on KVM.

Guest g configures systemd-networkd for ``ens16`` (a static 10.0.2.15/24),
the name qemu's vmxnet3 NIC at PCI slot 0x10 gets; it prints ``ip -br addr``
on ttyS0 before the login prompt. On KVM its NIC is virtio-net at slot 3,
``ens3``, which nothing configures: tests/e2e/test_vmware_guests_baseline.py
boots it so (``g-nic-ens16-pvscsi-virtionet-net``: ``ens3``, no address).
Here a copy gets ``vmcraft fix-boot --nic ens16=MAC``, and boots on KVM's
virtio-blk and virtio-net (qemu user networking with ``restrict=on``) with
its NIC called ``ens16``, up, with its configured address.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jsonschema
import pytest

from tests.boot import KVM_VIRTIO_BLK, boot
from tests.conftest import vmcraft_cli as vmcraft
from tests.conftest import writable_copy
from tests.e2e.test_vmware_repair import BOOT_TIMEOUT, OUTCOMES
from tests.fixtures.vmwareguest import (
    NIC_REPORT_PREFIX,
    VMWARE_NIC,
    read_guest_file,
    vmware_guest_facts,
)

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("leak_check")]

SCHEMA = json.loads((Path(__file__).parents[2] / "docs" / "report-schema.json").read_text())
MAC = "52:54:00:12:34:56"
KVM_VIRTIO_NET_MAC = dataclasses.replace(KVM_VIRTIO_BLK, name="kvm-virtio-net-mac", nic_mac=MAC)
LINK = "/etc/systemd/network/10-vmcraft-ens16.link"


def test_fix_boot_nic_keeps_the_vmware_name_on_kvm(tmp_path: Path) -> None:
    facts = vmware_guest_facts(VMWARE_NIC)
    image = writable_copy(facts.raw, tmp_path / f"{VMWARE_NIC.name}.raw")
    try:
        # The guest's networkd configuration names its NIC: no MAC pinning to find.
        before = vmcraft("check", str(image), "--json")
        assert before.returncode == 1, before.stdout
        assert [f for f in json.loads(before.stdout)["findings"] if f["step"] == "network"] == []

        planned = vmcraft("fix-boot", str(image), "--nic", f"ens16={MAC}", "--dry-run", "--json")
        assert planned.returncode == 0, planned.stderr
        plan = json.loads(planned.stdout)
        jsonschema.validate(plan, SCHEMA)
        (pin,) = [f for f in plan["findings"] if f["step"] == "network"]
        assert pin["path"] == LINK
        assert any(p["step"] == "initramfs" for p in plan["plan"])

        done = vmcraft("fix-boot", str(image), "--nic", f"ens16={MAC}", "--json")
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        jsonschema.validate(report, SCHEMA)
        assert report["success"] is True
        assert [r["path"] for r in report["network"]["rewrites"]] == [LINK]
        assert report["network"]["checks"] == [
            {"name": f"--nic ens16={MAC}: {LINK}", "ok": True, "detail": ""}
        ]
        assert report["initramfs"]["success"]
        link = read_guest_file(image, facts.root_partition, LINK)
        assert f"[Match]\nMACAddress={MAC}\n\n[Link]\nName=ens16\n" in link

        again = vmcraft("fix-boot", str(image), "--nic", f"ens16={MAC}", "--json")
        assert again.returncode == 0, again.stderr
        second = json.loads(again.stdout)
        assert second["plan"] == [], "a second run changes nothing"
        assert second["network"]["skipped"] == "nothing to fix"

        result = boot(
            image,
            "raw",
            OUTCOMES,
            timeout=BOOT_TIMEOUT,
            hardware=KVM_VIRTIO_NET_MAC,
            network=True,
        )
        assert result.outcome == "login", result.tail(40)
        line = result.line(rf"{NIC_REPORT_PREFIX}ens16 +UP +10\.0\.2\.15/24")
        assert line, result.tail(40)
        assert result.line(rf"{NIC_REPORT_PREFIX}ens3 ") is None
        print(f"booted in {result.seconds:.0f} s: {line}")
    finally:
        image.unlink(missing_ok=True)
