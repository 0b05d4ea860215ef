"""The whole boot matrix as one table: each VMware-shaped guest on VMware's and KVM's hardware,
before and after ``vmcraft fix-boot IMAGE``.

Run as root (it attaches disks and boots qemu; 30-40 minutes on two cores)::

    python3 -m tests.matrix [--json FILE]

Before: the cached guest as built (UEFI guests with fresh OVMF variables,
as after any move). After: a copy repaired by ``vmcraft fix-boot`` with no
options, except guest (g), which is given ``--nic ens16=MAC`` and booted
with a virtio-net NIC of that MAC. Each cell is where the boot stopped
(``login``, ``initramfs shell``, ``UEFI shell``...) and the seconds it took.
The pytest suites assert the same boots one by one (``pytest -m matrix``);
this prints them side by side for a note or a release.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.boot import KVM_VIRTIO_BLK, KVM_VIRTIO_SCSI, VMWARE_PVSCSI, Hardware, boot
from tests.conftest import writable_copy
from tests.fixtures.vmwareguest import (
    ALL_SPECS,
    NIC_REPORT_PREFIX,
    Firmware,
    GuestSpec,
    vmware_guest_facts,
)

OUTCOMES = {
    "login": r"login:",
    "initramfs shell": r"\(initramfs\)|ALERT!",
    "emergency mode": r"You are in emergency mode|Give root password for maintenance",
    "UEFI shell": r"Shell> ",
    "grub prompt": r"grub> |grub rescue>",
    "kernel panic": r"Kernel panic",
}
TIMEOUT = 420
NIC_MAC = "52:54:00:12:34:56"
HARDWARE = (VMWARE_PVSCSI, KVM_VIRTIO_BLK, KVM_VIRTIO_SCSI)


@dataclass(frozen=True)
class Cell:
    guest: str
    hardware: str
    when: str
    outcome: str
    seconds: float
    network: str = ""


def _hardware(spec: GuestSpec, hardware: Hardware, *, after: bool) -> Hardware:
    """Guest (g) after its repair: the virtio-net NIC with the MAC given to --nic."""
    if spec.nic_name and after and hardware is not VMWARE_PVSCSI:
        return dataclasses.replace(hardware, nic="virtio-net-pci", nic_slot=0x3, nic_mac=NIC_MAC)
    return hardware


def _boot(spec: GuestSpec, image: Path, hardware: Hardware, when: str) -> Cell:
    used = _hardware(spec, hardware, after=when == "after")
    result = boot(
        image,
        "raw",
        OUTCOMES,
        timeout=TIMEOUT,
        hardware=used,
        network=bool(spec.nic_name),
        uefi=spec.firmware is Firmware.UEFI,
    )
    network = ""
    if spec.nic_name:
        line = result.line(rf"{NIC_REPORT_PREFIX}\S+ +UP")
        network = line.removeprefix(NIC_REPORT_PREFIX).split()[0] if line else "no NIC up"
        if line and "10.0.2.15/24" in line:
            network += " 10.0.2.15/24"
    return Cell(spec.name, hardware.name, when, result.outcome, round(result.seconds, 1), network)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--only", action="append", default=[], help="guest names (repeatable)")
    parser.add_argument(
        "--hardware",
        action="append",
        default=[],
        choices=[h.name for h in HARDWARE],
        help="only these columns (repeatable; default: all)",
    )
    args = parser.parse_args()
    hardware_set = tuple(h for h in HARDWARE if not args.hardware or h.name in args.hardware)
    cells: list[Cell] = []
    specs = [s for s in ALL_SPECS if not args.only or s.name in args.only]
    with tempfile.TemporaryDirectory(prefix="vmcraft-matrix-", dir="/var/tmp") as tmp:
        for spec in specs:
            facts = vmware_guest_facts(spec)
            before = writable_copy(facts.raw, Path(tmp) / f"{spec.name}-before.raw")
            for hardware in hardware_set:
                cells.append(_boot(spec, before, hardware, "before"))
                print(cells[-1], file=sys.stderr)
            before.unlink()
            after = writable_copy(facts.raw, Path(tmp) / f"{spec.name}.raw")
            nic = ["--nic", f"{spec.nic_name}={NIC_MAC}"] if spec.nic_name else []
            done = subprocess.run(
                [sys.executable, "-m", "vmcraft", "fix-boot", str(after), *nic, "--json"],
                capture_output=True,
                text=True,
                check=False,
            )
            repaired = done.returncode == 0
            for hardware in hardware_set:
                if repaired:
                    cells.append(_boot(spec, after, hardware, "after"))
                else:
                    cells.append(Cell(spec.name, hardware.name, "after", "fix-boot failed", 0.0))
                print(cells[-1], file=sys.stderr)
            after.unlink()
    print_table(cells, hardware_set)
    if args.json:
        args.json.write_text(json.dumps([dataclasses.asdict(c) for c in cells], indent=1) + "\n")
    return 0


def print_table(cells: list[Cell], hardware: tuple[Hardware, ...] = HARDWARE) -> None:
    names = [h.name for h in hardware]
    head = " | ".join(f"{n} {w}" for w in ("before", "after") for n in names)
    print(f"| guest | {head} |")
    print("|---" * (1 + 2 * len(names)) + "|")
    for guest in dict.fromkeys(c.guest for c in cells):
        row = []
        for when in ("before", "after"):
            for name in names:
                cell = next(
                    (c for c in cells if (c.guest, c.hardware, c.when) == (guest, name, when)),
                    None,
                )
                text = "" if cell is None else f"{cell.outcome} ({cell.seconds:.0f} s)"
                if cell is not None and cell.network:
                    text += f", {cell.network}"
                row.append(text)
        print(f"| {guest} | {' | '.join(row)} |")


if __name__ == "__main__":
    sys.exit(main())
