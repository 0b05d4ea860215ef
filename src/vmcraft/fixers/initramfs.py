"""Checking that an initramfs step produced a fresh, complete image per kernel.

update-initramfs exits 0 without /proc and /sys and leaves fsck out of the
image; dracut exits 0 and silently drops the guest's modules-load.d list.
So the step is judged by its images: one per installed kernel, written by
this run, not empty, and (where the guest's tool can list it) holding fsck.
"""

from __future__ import annotations

from vmcraft.report import Check

# Tools, inside the guest, that list an initramfs, by family.
LISTERS = {"debian": "lsinitramfs", "redhat": "lsinitrd", "suse": "lsinitrd"}


def check_images(images: dict[str, tuple[int, float] | None], started: float) -> list[Check]:
    """``images``: kernel -> (size, mtime) of its initramfs, or None when missing."""
    checks = []
    for kernel, info in sorted(images.items()):
        if info is None:
            checks.append(Check(f"initramfs for {kernel}", False, "missing"))
            continue
        size, mtime = info
        fresh = mtime >= started - 2  # filesystems with coarse timestamps
        checks.append(
            Check(
                f"initramfs for {kernel} is fresh",
                size > 0 and fresh,
                f"{size} bytes" if fresh else "not rewritten by this run",
            )
        )
    if not images:
        checks.append(Check("initramfs for every kernel", False, "no kernel found in /boot"))
    return checks


def check_fsck(kernel: str, listing: list[str]) -> Check:
    has = any(
        path.rstrip().endswith(
            ("bin/fsck", "bin/e2fsck", "bin/fsck.ext4", "bin/fsck.xfs", "bin/xfs_repair")
        )
        for path in listing
    )
    return Check(f"initramfs for {kernel} holds fsck", has, "" if has else "fsck missing")
