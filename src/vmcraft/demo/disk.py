"""The demo guest: a real Debian bookworm disk (raw, qcow2, vmdk).

Built once by ``build-debian-disk.sh`` with debootstrap (about a minute or
two) and cached under ``/var/cache/vmcraft``, keyed by the recipe below.
GPT with a BIOS boot partition and an ext4 root, fstab by UUID, GRUB in the
boot sectors, the console on ttyS0, and no grub.cfg yet. ``vmcraft demo``
and the end-to-end tests work on copies; the cached images stay read-only.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from vmcraft.demo.cache import cached, run_logged

BUILDER = Path(__file__).with_name("build-debian-disk.sh")

PACKAGES = [
    "systemd-sysv",
    "udev",
    "kmod",
    "e2fsprogs",
    "zstd",
    "initramfs-tools",
    "grub-pc",
    "linux-image-amd64",
]
RECIPE: dict[str, object] = {
    "suite": "bookworm",
    "size": "2G",
    "packages": PACKAGES,
    "builder": BUILDER.read_text(),
    "revision": 1,
}


@dataclass(frozen=True)
class DebianDisk:
    """The cached images and what the tests need to know about them."""

    raw: Path
    qcow2: Path
    vmdk: Path
    root_uuid: str
    root_partuuid: str
    kernel: str

    def image(self, fmt: str) -> Path:
        return {"raw": self.raw, "qcow2": self.qcow2, "vmdk": self.vmdk}[fmt]


def _probe(raw: Path) -> dict[str, str]:
    """Read back the root partition's ids and the kernel version."""
    script = (
        "set -e; loop=$(losetup --find --show --read-only \"$1\"); trap 'losetup -d $loop' EXIT;"
        ' { partx -a "$loop" 2>/dev/null || true; }; m=$(mktemp -d);'
        ' mount -o ro,noload "${loop}p2" "$m";'
        ' kernel=$(ls "$m/lib/modules"); umount "$m"; rmdir "$m";'
        ' echo "{\\"uuid\\": \\"$(blkid -s UUID -o value ${loop}p2)\\",'
        ' \\"partuuid\\": \\"$(blkid -p -s PART_ENTRY_UUID -o value ${loop}p2)\\",'
        ' \\"kernel\\": \\"$kernel\\"}"'
    )
    out = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "--", "bash", "-c", script, "-", raw],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    info: dict[str, str] = json.loads(out)
    return info


def _build(work: Path) -> None:
    raw = work / "disk.raw"
    log = work / "build.log"
    run_logged(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
            "bash",
            str(BUILDER),
            str(raw),
            str(RECIPE["suite"]),
            str(RECIPE["size"]),
            ",".join(PACKAGES),
        ],
        log,
    )
    for fmt in ("qcow2", "vmdk"):
        run_logged(["qemu-img", "convert", "-O", fmt, str(raw), str(work / f"disk.{fmt}")], log)
    (work / "info.json").write_text(json.dumps(_probe(raw)))
    for image in work.glob("disk.*"):
        image.chmod(0o444)


def debian_disk() -> DebianDisk:
    """The cached Debian guest disk, built first when it is missing."""
    top = cached("debian-disk", RECIPE, _build)
    info = json.loads((top / "info.json").read_text())
    return DebianDisk(
        raw=top / "disk.raw",
        qcow2=top / "disk.qcow2",
        vmdk=top / "disk.vmdk",
        root_uuid=info["uuid"],
        root_partuuid=info["partuuid"],
        kernel=info["kernel"],
    )
