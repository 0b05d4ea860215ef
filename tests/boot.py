"""Booting a guest image under qemu (software emulation) and watching its serial console.

``boot()`` plays a virtual machine's hardware: by default KVM's virtio-blk
disk without a NIC (what the repaired guests get); ``hardware=`` picks
VMware's (PVSCSI or LSI SAS disk, vmxnet3 NIC) or KVM's (virtio-blk or
virtio-scsi disk, virtio-net NIC). ``network=True`` attaches the profile's
NIC to qemu's user network with ``restrict=on``: the guest reaches nothing
outside the VM. ``uefi=True`` boots OVMF (Debian's ``ovmf`` package) with a
fresh copy of its empty variable store, as a VM has after a migration (its
NVRAM boot entries are gone); the copy is removed afterwards. The machine
stays ``pc`` (i440fx) with TCG: OVMF's non-SMM build runs on it. That OVMF
has no PVSCSI or LSI driver, so on VMware's hardware it reads the disk
through a throwaway IDE view (see ``hardware_argv``). Under qemu 7.2, Linux's
mptsas finds no disk behind the LSI SAS 1068: ``VMWARE_LSI`` boots GRUB, not
the guest.
"""

from __future__ import annotations

import enum
import os
import re
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
_ESCAPES = re.compile(r"\x1b(\[[0-9;=?]*[A-Za-z]|[()][A-Z0-9]|[=>c])")
DISK_SLOT = 0x4
"""The disk controller's PCI slot (clear of the NICs' slots 3 and 0x10)."""


class Controller(enum.Enum):
    """The disk controller, by qemu device name."""

    VIRTIO_BLK = "virtio-blk-pci"
    VIRTIO_SCSI = "virtio-scsi-pci"
    PVSCSI = "pvscsi"
    LSI_SAS = "mptsas1068"


@dataclass(frozen=True)
class Hardware:
    """A VM's hardware as the guest sees it: its disk controller and NIC."""

    name: str
    controller: Controller
    nic: str
    """The NIC's qemu device model."""
    nic_slot: int
    """The NIC's PCI slot: it names the NIC in the guest (slot 0x10: ``ens16``)."""
    nic_mac: str | None = None
    """The NIC's MAC address; None: qemu's default (52:54:00:12:34:56 for the first NIC)."""

    @property
    def ovmf_reads_disk(self) -> bool:
        """Debian 12's OVMF has virtio drivers but none for PVSCSI or LSI SAS."""
        return self.controller in (Controller.VIRTIO_BLK, Controller.VIRTIO_SCSI)


VMWARE_PVSCSI = Hardware("vmware-pvscsi", Controller.PVSCSI, "vmxnet3", 0x10)
VMWARE_LSI = Hardware("vmware-lsi", Controller.LSI_SAS, "vmxnet3", 0x10)
KVM_VIRTIO_BLK = Hardware("kvm-virtio-blk", Controller.VIRTIO_BLK, "virtio-net-pci", 0x3)
KVM_VIRTIO_SCSI = Hardware("kvm-virtio-scsi", Controller.VIRTIO_SCSI, "virtio-net-pci", 0x3)


@dataclass(frozen=True)
class BootResult:
    outcome: str
    """The name of the first pattern seen, or ``timeout``."""
    seconds: float
    transcript: str

    def tail(self, lines: int = 25) -> str:
        return "\n".join(self.transcript.splitlines()[-lines:])

    def line(self, pattern: str) -> str | None:
        """The first transcript line ``pattern`` matches, terminal escapes removed."""
        rx = re.compile(pattern)
        plain = _ESCAPES.sub("", self.transcript).replace("\r", "\n")
        return next((ln.strip() for ln in plain.splitlines() if rx.search(ln)), None)


def hardware_argv(
    image: Path, fmt: str, hardware: Hardware, *, network: bool, uefi: bool = False
) -> list[str]:
    """qemu's device arguments for ``image`` on ``hardware``.

    On UEFI with a controller OVMF cannot drive (as VMware's firmware can),
    the firmware and GRUB read the disk through a second view of it: an IDE
    disk on a throwaway snapshot (``snapshot=on``: the image is written only
    through the controller). Linux finds its root on the controller (the
    guest's initrd has no ATA driver) and sees the view later as one more
    ``sdX``, with the same filesystem UUIDs.
    """
    view = uefi and not hardware.ovmf_reads_disk
    locking = ",file.locking=off" if view else ""
    drive = f"file={image},format={fmt},if=none,id=disk0,cache=unsafe{locking}"
    firmware_view = [
        "-drive",
        f"file={image},format={fmt},if=none,id=fwview,snapshot=on,file.locking=off",
        "-device",
        "ide-hd,drive=fwview,bus=ide.0,bootindex=1",
    ]
    ctl = hardware.controller
    if ctl is Controller.VIRTIO_BLK:
        disk = ["-device", f"virtio-blk-pci,drive=disk0,addr={DISK_SLOT:#x},bootindex=0"]
    else:
        disk = [
            "-device",
            f"{ctl.value},id=scsi0,addr={DISK_SLOT:#x}",
            "-device",
            "scsi-hd,drive=disk0,bus=scsi0.0,bootindex=0",
        ]
    if network:
        nic = [
            "-netdev",
            "user,id=net0,restrict=on,net=10.0.2.0/24",
            "-device",
            f"{hardware.nic},netdev=net0,addr={hardware.nic_slot:#x}"
            + (f",mac={hardware.nic_mac}" if hardware.nic_mac else ""),
        ]
    else:
        nic = ["-nic", "none"]
    return ["-drive", drive, *disk, *(firmware_view if view else []), *nic]


def _firmware_argv(vars_copy: Path) -> list[str]:
    for needed in (OVMF_CODE, OVMF_VARS):
        if not needed.is_file():
            raise FileNotFoundError(f"{needed} is missing: apt-get install -y ovmf")
    shutil.copyfile(OVMF_VARS, vars_copy)
    return [
        "-drive",
        f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
        "-drive",
        f"if=pflash,format=raw,unit=1,file={vars_copy}",
    ]


def boot(
    image: Path,
    fmt: str,
    patterns: dict[str, str],
    timeout: float = 300,
    *,
    hardware: Hardware = KVM_VIRTIO_BLK,
    network: bool = False,
    uefi: bool = False,
) -> BootResult:
    """Boot ``image`` on ``hardware`` (default: a virtio disk, no NIC) until a pattern shows."""
    with tempfile.TemporaryDirectory(prefix="vmcraft-boot-") as scratch:
        firmware = _firmware_argv(Path(scratch) / OVMF_VARS.name) if uefi else []
        argv = [
            "qemu-system-x86_64",
            "-machine",
            "pc,accel=tcg",
            "-m",
            "1024",
            "-smp",
            "2",
            "-nographic",
            "-no-reboot",
            *firmware,
            *hardware_argv(image, fmt, hardware, network=network, uefi=uefi),
        ]
        return _watch(argv, patterns, timeout)


def _watch(argv: list[str], patterns: dict[str, str], timeout: float) -> BootResult:
    compiled = {name: re.compile(rx) for name, rx in patterns.items()}
    start = time.monotonic()
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    assert proc.stdout is not None
    out = b""
    try:
        while time.monotonic() - start < timeout:
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            if ready:
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                out += chunk
                text = out.decode(errors="replace")
                for name, rx in compiled.items():
                    if rx.search(text):
                        return BootResult(name, time.monotonic() - start, text)
            elif proc.poll() is not None:
                break
        return BootResult("timeout", time.monotonic() - start, out.decode(errors="replace"))
    finally:
        proc.kill()
        proc.wait()
