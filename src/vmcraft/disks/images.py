"""What an image file is, asked of ``qemu-img info``.

A guest image is hostile input. Letting qemu probe the format of a raw
image lets the guest choose it (a raw disk whose first sector is a qcow2
header naming ``/etc/shadow`` as its backing file, CVE-2010-3851), so images
with a backing file, or VMDK descriptors whose extents lie elsewhere, are
refused unless the caller gave the format and allowed them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmcraft.errors import ImageFormatError, ImageNotFoundError, last_line
from vmcraft.host import host_tool, run_tool

# Formats qemu reads that vmcraft attaches; "raw" goes straight to a loop
# device, the others through a qemu-storage-daemon export.
SUPPORTED_FORMATS = frozenset({"raw", "qcow2", "vmdk", "vhdx", "vpc", "vdi", "qed"})


@dataclass(frozen=True)
class ImageInfo:
    path: Path
    format: str
    virtual_size: int
    backing: str | None
    extents: tuple[str, ...]


def check_readable(path: Path, *, writable: bool) -> None:
    if not path.exists():
        raise ImageNotFoundError(f"image {os.fspath(path)!r} does not exist")
    if not path.is_file() and not path.is_block_device():
        raise ImageNotFoundError(f"image {os.fspath(path)!r} is not a file or block device")
    mode = os.R_OK | (os.W_OK if writable else 0)
    if not os.access(path, mode):
        what = "readable and writable" if writable else "readable"
        raise ImageNotFoundError(f"image {os.fspath(path)!r} is not {what}")


def image_info(path: Path, fmt: str | None = None) -> ImageInfo:
    """Ask qemu-img what the image is; ``fmt`` skips format probing."""
    argv = [host_tool("qemu-img", "qemu-utils"), "info", "--output=json", "--force-share"]
    if fmt is not None:
        argv += ["-f", fmt]
    done = run_tool([*argv, "--", os.fspath(path)], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        reason = last_line(done.stderr, default="qemu-img failed")
        raise ImageFormatError(f"cannot read {os.fspath(path)!r} as a disk image: {reason}")
    data: dict[str, Any] = json.loads(done.stdout)
    specific = data.get("format-specific", {}).get("data", {})
    extents = tuple(str(e.get("filename", "")) for e in specific.get("extents", []))
    return ImageInfo(
        path=path,
        format=str(data["format"]),
        virtual_size=int(data.get("virtual-size", 0)),
        backing=data.get("full-backing-filename") or data.get("backing-filename"),
        extents=extents,
    )


def vet_image(path: Path, fmt: str | None, *, writable: bool) -> ImageInfo:
    """Check an image can be opened as asked; return what it is."""
    check_readable(path, writable=writable)
    if fmt is not None and fmt not in SUPPORTED_FORMATS:
        raise ImageFormatError(
            f"format {fmt!r} is not supported (supported: {', '.join(sorted(SUPPORTED_FORMATS))})"
        )
    info = image_info(path, fmt)
    if info.format not in SUPPORTED_FORMATS:
        raise ImageFormatError(f"{os.fspath(path)!r} is {info.format!r}, which is not supported")
    if info.backing:
        raise ImageFormatError(
            f"{os.fspath(path)!r} has a backing file ({info.backing}); vmcraft opens "
            "single-file images only: flatten it with 'qemu-img convert' first"
        )
    real = os.path.realpath(path)
    for extent in info.extents:
        if extent and os.path.realpath(extent) != real:
            raise ImageFormatError(
                f"{os.fspath(path)!r} is a VMDK descriptor with an extent elsewhere ({extent}); "
                "convert it to a single file first"
            )
    if info.virtual_size <= 0:
        raise ImageFormatError(f"{os.fspath(path)!r} has no size")
    return info
