"""A small /dev for guests on attached disks: what the tools need, and only that.

Binding the host's /dev would show every host disk to grub-probe and
os-prober, and on a host without udev it has no ``/dev/disk/by-uuid``, so
GRUB writes ``root=/dev/loop0p2`` into the guest's config and the guest
stops at boot. Instead the guest gets a fresh tmpfs holding the standard
character devices, its own block devices under the host names its mounts
show in /proc/self/mountinfo (``loop0p2``) and its guest names (``sda2``,
``VG/LV``, ``mapper/VG-LV``), and the ``disk/by-uuid``, ``by-partuuid``
and ``by-label`` links udev would make. It lives exactly as long as the
mount, and the host's /dev is never touched. This is what the libguestfs
appliance and systemd-nspawn give their guests too.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field

from vmcraft.mount import syscalls
from vmcraft.mount.pseudofs import PseudoFS

_CHAR_DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
_LINKS = {
    "fd": "/proc/self/fd",
    "stdin": "/proc/self/fd/0",
    "stdout": "/proc/self/fd/1",
    "stderr": "/proc/self/fd/2",
    "ptmx": "pts/ptmx",
}


def udev_escape(value: str) -> str:
    """Escape a label the way udev does for by-label names."""
    out = []
    for ch in value:
        if ch in {"/", "\\"} or not ch.isprintable() or ch.isspace():
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)


@dataclass(frozen=True)
class BlockDevice:
    """One guest block device as it is to appear in the guest's /dev."""

    host_node: str
    """The host's node, e.g. ``/dev/loop0p2``; its name is kept in the tree."""
    aliases: tuple[str, ...] = ()
    """Guest names relative to /dev: ``sda2``, ``vg/root``, ``mapper/vg-root``."""
    ids: Mapping[str, str] = field(default_factory=dict)
    """``by-uuid``/``by-partuuid``/``by-label`` -> value."""


def populate(dev_fd: int, devices: tuple[BlockDevice, ...]) -> None:
    """Fill a fresh, empty tmpfs (opened as ``dev_fd``) with the guest's /dev."""
    for name in _CHAR_DEVICES:
        host = os.stat(f"/dev/{name}")
        os.mknod(name, stat.S_IFCHR | 0o666, host.st_rdev, dir_fd=dev_fd)
        os.chmod(name, 0o666, dir_fd=dev_fd)  # noqa: S103 - as on every host; mknod obeys umask
    for name, target in _LINKS.items():
        os.symlink(target, name, dir_fd=dev_fd)
    os.mkdir("pts", 0o755, dir_fd=dev_fd)
    os.mkdir("shm", 0o1777, dir_fd=dev_fd)
    os.chmod("shm", 0o1777, dir_fd=dev_fd)  # noqa: S103 - /dev/shm is world-writable, sticky
    for device in devices:
        host = os.stat(device.host_node)
        name = os.path.basename(device.host_node)
        os.mknod(name, stat.S_IFBLK | 0o660, host.st_rdev, dir_fd=dev_fd)
        for alias in device.aliases:
            _link(dev_fd, alias, name)
        for kind, value in device.ids.items():
            _link(dev_fd, f"disk/{kind}/{udev_escape(value)}", name)


def _link(dev_fd: int, relpath: str, node_name: str) -> None:
    """A symlink at ``relpath`` (under /dev) pointing at the node ``node_name``."""
    parts = relpath.split("/")
    fd = os.dup(dev_fd)
    try:
        for part in parts[:-1]:
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o755, dir_fd=fd)
            child = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = child
        target = "../" * (len(parts) - 1) + node_name
        # Two devices sharing a UUID (a cloned disk): the first wins, as in udev.
        with contextlib.suppress(FileExistsError):
            os.symlink(target, parts[-1], dir_fd=fd)
    finally:
        os.close(fd)


def dev_tree(devices: tuple[BlockDevice, ...]) -> PseudoFS:
    """The ``dev`` target for a guest on attached disks."""
    return PseudoFS(
        "dev",
        "tmpfs",
        "tmpfs",
        syscalls.MS_NOSUID | syscalls.MS_NOEXEC,
        "mode=0755,size=4m",
        populate=lambda fd: populate(fd, devices),
    )
