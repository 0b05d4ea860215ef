"""The proof of fix-boot: VMware-shaped guests boot on KVM's virtio after it, and still on VMware.

Each guest of ``tests.fixtures.vmwareguest`` boots to ``login:`` on VMware's
hardware and stops on KVM's (tests/e2e/test_vmware_guests_baseline.py shows
both). Here a copy gets ``vmcraft fix-boot IMAGE`` with no options, in the
sandbox; then ``vmcraft check`` finds nothing, a second run changes
nothing, and the guest boots to ``login:`` on virtio-blk and on VMware's
PVSCSI, under qemu (software emulation); the UEFI guest with fresh OVMF
variables, as after a migration. The LVM guest and the NIC guest have
files of their own (test_vmware_repair_lvm.py, test_vmware_repair_nic.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.boot import KVM_VIRTIO_BLK, KVM_VIRTIO_SCSI, VMWARE_PVSCSI, Hardware, boot
from tests.conftest import vmcraft_cli as vmcraft
from tests.conftest import writable_copy
from tests.fixtures.vmwareguest import (
    BIOS_GPT,
    OPEN_VM_TOOLS,
    SEPARATE_BOOT,
    UEFI_NO_FALLBACK,
    Firmware,
    GuestSpec,
    esp_files,
    read_guest_file,
    vmware_guest_facts,
)

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("leak_check")]

OUTCOMES = {
    "login": r"login:",
    "initramfs shell": r"\(initramfs\)|ALERT!",
    "emergency mode": r"You are in emergency mode|Give root password for maintenance",
    "kernel panic": r"Kernel panic",
    "UEFI shell": r"Shell> ",
}
BOOT_TIMEOUT = 420  # TCG on two shared cores: a boot takes 30-60 s, far more under load

# guest -> the hardware it must boot on after the repair.
REPAIRS: dict[GuestSpec, tuple[Hardware, ...]] = {
    BIOS_GPT: (KVM_VIRTIO_BLK, VMWARE_PVSCSI),
    SEPARATE_BOOT: (KVM_VIRTIO_BLK, VMWARE_PVSCSI),
    # Booted with fresh OVMF variables: the NVRAM entry stayed behind.
    UEFI_NO_FALLBACK: (KVM_VIRTIO_BLK, VMWARE_PVSCSI),
    OPEN_VM_TOOLS: (KVM_VIRTIO_SCSI,),
}


# CI repairs (a), (b) and (d); the whole set is `nox -s matrix` (pytest -m matrix).
CI_REPAIRS = {BIOS_GPT, SEPARATE_BOOT, UEFI_NO_FALLBACK}


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param(spec, marks=() if spec in CI_REPAIRS else (pytest.mark.matrix,))
        for spec in REPAIRS
    ],
    ids=lambda spec: spec.name,
)
def test_fix_boot_makes_a_vmware_guest_boot_on_kvm(spec: GuestSpec, tmp_path: Path) -> None:
    facts = vmware_guest_facts(spec)
    image = writable_copy(facts.raw, tmp_path / f"{spec.name}.raw")
    try:
        before = vmcraft("check", str(image), "--json")
        assert before.returncode == 1, before.stdout
        found = json.loads(before.stdout)["findings"]
        expected = {"names", "drivers", "initramfs", "bootloader"}
        uefi = spec.firmware is Firmware.UEFI
        if uefi:
            expected.add("uefi")
        assert {f["step"] for f in found} >= expected

        done = vmcraft("fix-boot", str(image), "--json")
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert report["success"] is True
        rewritten = {r["path"] for r in report["names"]["rewrites"]}
        assert {"/etc/fstab", "/etc/default/grub"} <= rewritten
        assert report["drivers"]["rewrites"], "the drivers went into the guest's config"

        fstab = read_guest_file(image, facts.root_partition, "/etc/fstab")
        assert f"UUID={facts.root_uuid}" in fstab
        assert "/dev/sda" not in fstab
        if uefi:
            assert "::/EFI/BOOT/BOOTX64.EFI" in esp_files(image)
            assert report["uefi"]["rewrites"], report["uefi"]
        modules = read_guest_file(image, facts.root_partition, "/etc/initramfs-tools/modules")
        for driver in ("virtio_blk", "virtio_scsi", "virtio_pci", "virtio_net", "vmw_pvscsi"):
            assert driver in modules.split(), modules

        after = vmcraft("check", str(image), "--json")
        assert after.returncode == 0, after.stdout
        assert json.loads(after.stdout)["findings"] == []
        again = vmcraft("fix-boot", str(image), "--json")
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["plan"] == [], "a second run changes nothing"

        for hardware in REPAIRS[spec]:
            result = boot(
                image, "raw", OUTCOMES, timeout=BOOT_TIMEOUT, hardware=hardware, uefi=uefi
            )
            assert result.outcome == "login", f"{hardware.name}:\n{result.tail(40)}"
    finally:
        image.unlink(missing_ok=True)
