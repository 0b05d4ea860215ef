"""The proof that counts: the repaired guest boots to its login prompt under qemu.

A copy of the demo Debian guest gets the grub.cfg a VMware conversion leaves
(``root=/dev/sda2``, a SCSI name the virtio VM does not have). Booted as is,
it stops in its initramfs; after ``vmcraft fix-boot`` it reaches ``login:``.
Software emulation (no KVM here); each boot is bounded.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.boot import boot
from tests.conftest import CopyImage, vmcraft_cli
from tests.fixtures.guestdisk import DebianDisk
from vmcraft.demo.run import break_boot_like_vmware

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("leak_check")]

OUTCOMES = {
    "login": r"login:",
    "initramfs shell": r"ALERT! .* does not exist|\(initramfs\)",
    "grub prompt": r"grub> |grub rescue>",
    "kernel panic": r"Kernel panic",
}
BOOT_TIMEOUT = 240


@pytest.mark.parametrize("fmt", ["qcow2", "raw"])
def test_broken_guest_boots_only_after_fix_boot(
    fmt: str, image_copy: CopyImage, debian: DebianDisk, tmp_path: Path
) -> None:
    image = image_copy(fmt)
    break_boot_like_vmware(image, debian.kernel)

    before = boot(image, fmt, OUTCOMES, timeout=BOOT_TIMEOUT)
    assert before.outcome == "initramfs shell", before.tail()
    assert "/dev/sda2 does not exist" in before.transcript

    report_file = tmp_path / "report.json"
    fixed = vmcraft_cli("fix-boot", str(image), "--report", str(report_file), "--json")
    assert fixed.returncode == 0, fixed.stderr
    report = json.loads(report_file.read_text())
    assert report["success"] is True
    assert json.loads(fixed.stdout)["success"] is True

    after = boot(image, fmt, OUTCOMES, timeout=BOOT_TIMEOUT)
    assert after.outcome == "login", after.tail()
    assert f"root=UUID={debian.root_uuid}" in after.transcript or "login:" in after.transcript
