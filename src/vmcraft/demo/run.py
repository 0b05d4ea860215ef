"""``vmcraft demo``: the main job on the demo guest, start to finish.

Builds (once) or reuses the demo Debian disk, copies it, breaks its boot
the way a VMware-to-KVM conversion leaves it (a grub.cfg whose kernel line
names ``root=/dev/sda2``, a SCSI name the virtio VM will not have: the guest
stops in its initramfs with "ALERT! /dev/sda2 does not exist"), and
repairs it with fix-boot.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vmcraft.demo.disk import debian_disk
from vmcraft.fixers.fixboot import FixBootOptions, FixBootReport, Progress, fix_boot
from vmcraft.handle import VMCraft
from vmcraft.host import require_privileges

VMWARE_GRUB_CFG = """\
# As a VMware guest's grub.cfg names its root: by the SCSI disk name.
set timeout=1
serial --unit=0 --speed=115200
terminal_input serial
terminal_output serial
menuentry 'Debian GNU/Linux (converted from VMware)' {{
    insmod part_gpt
    insmod ext2
    set root='hd0,gpt2'
    linux /boot/vmlinuz-{kernel} root=/dev/sda2 ro console=ttyS0,115200
    initrd /boot/initrd.img-{kernel}
}}
"""


def break_boot_like_vmware(image: Path, kernel: str) -> None:
    """Write the grub.cfg a converted VMware guest has into the image."""
    with VMCraft() as g:
        g.add_drive_opts(image, readonly=False)
        g.launch()
        g.mount("/dev/sda2", "/")
        g.write("/boot/grub/grub.cfg", VMWARE_GRUB_CFG.format(kernel=kernel))


def prepare_demo_image(image: Path) -> Path:
    """A fresh broken copy of the demo guest at ``image`` (qcow2)."""
    disk = debian_disk()
    image.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["cp", "--sparse=always", "--", os.fspath(disk.qcow2), os.fspath(image)], check=True
    )
    image.chmod(0o644)
    break_boot_like_vmware(image, disk.kernel)
    return image


def run_demo(
    args: argparse.Namespace,
    *,
    progress: Progress,
    render: Callable[[FixBootReport], str],
    emit: Callable[[dict[str, Any]], None],
) -> int:
    require_privileges("the demo (it attaches a disk image)")
    if not args.json:
        print(
            "vmcraft demo: preparing the demo Debian guest (built once with debootstrap, "
            "about a minute; reused after that)",
            file=sys.stderr,
        )
    image = prepare_demo_image(args.image)
    if not args.json:
        print(
            f"vmcraft demo: {image} now boots only to an initramfs shell "
            "(grub.cfg names root=/dev/sda2); repairing it",
            file=sys.stderr,
        )
    report = fix_boot(image, options=FixBootOptions(), progress=progress)
    if args.json:
        emit(report.to_dict())
    else:
        print(render(report))
        print(
            f"\nboot it:  qemu-system-x86_64 -machine pc,accel=tcg -m 1024 -nographic "
            f"-drive file={image},format=qcow2,if=virtio"
        )
    return 0 if report.success else 1
