"""Finding the operating systems on a handle's drives, libguestfs-style.

Each filesystem that could hold a root is mounted read-only, without
journal replay, in a scratch directory of its own, and read through the
same in-guest path resolution as every other guest file; nothing the guest
says is followed out of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from vmcraft.disks.attach import AttachedDisks
from vmcraft.errors import GuestFileError, VMCraftError
from vmcraft.guest.files import GuestFiles
from vmcraft.inspect.fstab import FstabEntry, local_filesystems, parse_fstab
from vmcraft.inspect.osrelease import distro_name, parse_os_release, version_numbers
from vmcraft.log import get_logger
from vmcraft.mount.guest import NO_REPLAY, GuestMounts

log = get_logger(__name__)

LINUX_ROOT_FS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "jfs", "reiserfs"})


@dataclass(frozen=True)
class OSInfo:
    """One inspected operating system."""

    root: str
    type: str
    distro: str
    product_name: str
    major_version: int
    minor_version: int
    arch: str
    os_release: dict[str, str] = field(repr=False)
    fstab: list[FstabEntry] = field(repr=False)
    mountpoints: dict[str, str] = field(default_factory=dict)
    """Guest mount point -> guest device, from the guest's fstab."""

    def __repr__(self) -> str:
        mounts = ", ".join(f"{m}={d}" for m, d in sorted(self.mountpoints.items()))
        return (
            f"<OSInfo {self.root} {self.distro} {self.major_version}.{self.minor_version} "
            f"{self.product_name!r} mounts: {mounts}>"
        )


def resolve_spec(spec: str, disks: AttachedDisks) -> str | None:
    """The guest device an fstab spec names, looked up among the guest's own devices."""
    keys = {
        "UUID": "UUID",
        "LABEL": "LABEL",
        "PARTUUID": "PART_ENTRY_UUID",
        "PARTLABEL": "PART_ENTRY_NAME",
    }
    links = {
        "/dev/disk/by-uuid/": "UUID",
        "/dev/disk/by-label/": "LABEL",
        "/dev/disk/by-partuuid/": "PART_ENTRY_UUID",
    }
    key = value = None
    name, sep, rest = spec.partition("=")
    if sep and name in keys:
        key, value = keys[name], rest.strip('"')
    for prefix, blkid_key in links.items():
        if spec.startswith(prefix):
            key, value = blkid_key, spec.removeprefix(prefix)
    if key is not None and value is not None:
        for device, ids in disks.ids.items():
            if ids.get("TYPE") == "LVM2_member":
                continue
            if ids.get(key, "").lower() == value.lower():
                return device
        return None
    if spec.startswith("/dev/"):
        try:
            canon = disks.table.canonical(spec)
            disks.table.host_node(canon)
            return canon
        except VMCraftError:
            return None
    return None


_ELF_MACHINES = {
    0x3E: "x86_64",
    0x03: "i386",
    0xB7: "aarch64",
    0x28: "arm",
    0xF3: "riscv64",
    0x15: "ppc64",
    0x16: "s390x",
}


class _Reads(Protocol):
    def read_file(self, path: str) -> bytes: ...


def elf_arch(files: _Reads) -> str:
    """The architecture of the guest's /bin/sh, from its ELF header (as libguestfs does)."""
    for path in ("/bin/sh", "/usr/bin/sh", "/bin/ls", "/usr/bin/ls"):
        try:
            head = files.read_file(path)[:20]
        except GuestFileError:
            continue
        if head[:4] == b"\x7fELF":
            return _ELF_MACHINES.get(int.from_bytes(head[18:20], "little"), "unknown")
    return "unknown"


def _read(files: GuestFiles, *paths: str) -> str | None:
    for path in paths:
        try:
            return files.read_file(path).decode(errors="replace")
        except GuestFileError:
            continue
    return None


def inspect_device(
    name: str, disks: AttachedDisks, scratch: Path, mounted_at: Path | None = None
) -> OSInfo | None:
    """Inspect one filesystem; None when it holds no operating system root.

    A filesystem the handle has mounted already (``mounted_at``) is read
    where it is: the kernel refuses a second, read-only mount of it.
    """
    fstype = disks.ids.get(name, {}).get("TYPE", "")
    mounts = GuestMounts(scratch)
    if mounted_at is None:
        scratch.mkdir(exist_ok=True)
        try:
            mounts.mount(
                name,
                disks.table.host_node(name),
                "/",
                readonly=True,
                options=NO_REPLAY.get(fstype, ""),
                fstype=fstype,
            )
        except VMCraftError as exc:
            log.debug("inspect.unmountable", device=name, error=str(exc))
            return None
    try:
        files = GuestFiles(mounted_at or scratch)
        release_text = _read(files, "/etc/os-release", "/usr/lib/os-release")
        if release_text is None or not files.is_dir("/etc"):
            return None
        release = parse_os_release(release_text)
        distro = distro_name(release)
        major, minor = version_numbers(release.get("VERSION_ID", ""))
        if distro == "debian":
            debian_version = _read(files, "/etc/debian_version")
            if debian_version and debian_version.strip()[:1].isdigit():
                major, minor = version_numbers(debian_version)
        fstab = parse_fstab(_read(files, "/etc/fstab") or "")
        arch = elf_arch(files)
    finally:
        mounts.umount_all()
    mountpoints = {"/": name}
    for entry in local_filesystems(fstab):
        device = resolve_spec(entry.spec, disks)
        if device is not None:
            mountpoints[entry.mountpoint] = device
    return OSInfo(
        root=name,
        type="linux",
        distro=distro,
        product_name=release.get("PRETTY_NAME") or release.get("NAME", "Linux"),
        major_version=major,
        minor_version=minor,
        arch=arch,
        os_release=release,
        fstab=fstab,
        mountpoints=mountpoints,
    )


def inspect_all(
    disks: AttachedDisks, scratch: Path, mounted: Mapping[str, Path] | None = None
) -> dict[str, OSInfo]:
    """Every OS root on the drives; ``mounted`` maps devices the handle has mounted."""
    found = {}
    for name in disks.table.all_devices():
        if disks.ids.get(name, {}).get("TYPE") not in LINUX_ROOT_FS:
            continue
        info = inspect_device(name, disks, scratch, (mounted or {}).get(name))
        if info is not None:
            found[name] = info
    log.info("inspect.done", roots=sorted(found))
    return found
