"""A writable ESP on a host whose kernel has no FAT driver: staged, written back with mtools.

Containers and minimal VMs often lack vfat, and fusefat's writes were seen
to leave a FAT that mtools refuses. So a writable FAT filesystem is staged:
its files are copied with mtools into a private tmpfs mounted where the guest
expects the ESP, the guest's tools work on that, and at unmount every
change (new and changed files, new directories, removals) is written back
with mtools, the userspace FAT implementation dosfstools' users trust.
An ESP holds a few megabytes of files, so staging costs little.

Space is checked twice. Once loaded, the tmpfs is sized to what the FAT
can still take (:meth:`StagedFat.capacity`), so a write that would not fit
fails at once with ENOSPC, in the call that made it. Before anything is
written back, the clusters the changes need are counted against the FAT's
free ones (:meth:`StagedFat.write_back`): ``mcopy -o`` deletes the file it
replaces before it finds the disk full, so a write-back that ran out of
space halfway would lose the old file (a grub.cfg, say) as well as the new.
What that check cannot foresee (an I/O error, a full FAT12/16 root
directory) stops the write-back where it happened: the changes before it
are on the FAT, the rest are not, and the FAT itself stays consistent
(mtools updates it entry by entry).
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

from vmcraft.errors import GuestMountError, last_line
from vmcraft.host import host_tool, run_tool
from vmcraft.log import get_logger

log = get_logger(__name__)

_ENV = {"MTOOLS_SKIP_CHECK": "1", "MTOOLS_NO_VFAT": "0", "LANG": "C", "PATH": "/usr/bin:/bin"}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(tree: Path) -> tuple[set[str], dict[str, str]]:
    """Directories and files (with content hashes) below ``tree``, relative to it."""
    dirs: set[str] = set()
    files: dict[str, str] = {}
    for top, dirnames, filenames in os.walk(tree):
        rel = os.path.relpath(top, tree)
        for name in dirnames:
            dirs.add(os.path.normpath(os.path.join(rel, name)))
        for name in filenames:
            path = Path(top) / name
            if path.is_file() and not path.is_symlink():
                files[os.path.normpath(os.path.join(rel, name))] = _digest(path)
    return dirs, files


def _clusters(size: int, cluster: int) -> int:
    return -(-size // cluster)


def _mtools(tool: str, *args: str) -> None:
    done = run_tool(
        [host_tool(tool, "mtools"), *args],
        env=_ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        tail = last_line(done.stderr, done.stdout, default=f"{tool} failed")
        raise GuestMountError(f"{tool}: {tail}")


@dataclass
class StagedFat:
    """A FAT filesystem's files in a tmpfs, and what they were when staged."""

    node: Path
    tree: Path
    dirs: set[str] = field(default_factory=set)
    files: dict[str, str] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    """The size of each file in ``files``, as the FAT holds it."""
    cluster: int = 512
    fat32: bool = False

    def _read_geometry(self) -> None:
        """Cluster size and FAT type, from the boot sector."""
        with open(self.node, "rb") as device:
            boot = device.read(512)
        if len(boot) < 512:
            raise GuestMountError(f"{self.node}: too short for a FAT filesystem")
        sector, per_cluster = struct.unpack_from("<HB", boot, 11)
        (fat16_sectors,) = struct.unpack_from("<H", boot, 22)
        if not sector or not per_cluster:
            raise GuestMountError(f"{self.node}: no FAT boot sector")
        self.cluster = sector * per_cluster
        self.fat32 = fat16_sectors == 0

    def free_bytes(self) -> int:
        """What the FAT filesystem has free, as mdir counts it."""
        done = run_tool(
            [host_tool("mdir", "mtools"), "-i", os.fspath(self.node), "::/"],
            env=_ENV,
            capture_output=True,
            text=True,
            timeout=120,
        )
        found = re.search(r"([\d ]+) bytes free", done.stdout)
        if found is None:
            tail = last_line(done.stderr, done.stdout, default="mdir failed")
            raise GuestMountError(f"cannot read the free space of {self.node}: {tail}")
        return int(found.group(1).replace(" ", ""))

    def capacity(self) -> int:
        """What the staged tree may hold: what it holds now and what the FAT has free."""
        st = os.statvfs(self.tree)
        return (st.f_blocks - st.f_bfree) * st.f_frsize + self.free_bytes()

    def _sizes(self, files: dict[str, str]) -> dict[str, int]:
        return {path: (self.tree / path).stat().st_size for path in files}

    def load(self) -> None:
        """Copy the whole filesystem into the (empty, mounted) tree."""
        image = f"{os.fspath(self.node)}"
        listing = run_tool(
            [host_tool("mdir", "mtools"), "-b", "-i", image, "::/"],
            env=_ENV,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if listing.returncode != 0 and "File not found" not in listing.stderr:
            tail = last_line(listing.stderr, default="mdir failed")
            raise GuestMountError(f"cannot read the FAT filesystem on {self.node}: {tail}")
        if listing.stdout.strip():
            _mtools("mcopy", "-s", "-p", "-m", "-n", "-i", image, "::/*", os.fspath(self.tree))
        self._read_geometry()
        self.dirs, self.files = snapshot(self.tree)
        self.sizes = self._sizes(self.files)

    def _check_space(
        self, removed: list[str], new_dirs: list[str], written: dict[str, int]
    ) -> None:
        """Refuse, before anything is written, changes the FAT has no room for."""
        cluster = self.cluster
        # A directory gaining entries may need a cluster more; the FAT12/16
        # root directory is a fixed area and never does.
        grown = {os.path.dirname(p) for p in [*new_dirs, *written] if p not in self.sizes}
        if not self.fat32:
            grown.discard("")
        need = len(new_dirs) + len(grown)
        need += sum(_clusters(size, cluster) for size in written.values())
        freed = sum(_clusters(self.sizes.get(p, 0), cluster) for p in [*removed, *written])
        free = self.free_bytes() // cluster
        if need - freed > free:
            raise GuestMountError(
                f"{self.node}: the changes need {(need - freed) * cluster} bytes, the FAT "
                f"filesystem has {free * cluster} free; nothing was written back"
            )

    def write_back(self) -> list[str]:
        """Write every change since load() to the FAT filesystem; returns what changed."""
        image = os.fspath(self.node)
        dirs, files = snapshot(self.tree)
        removed = sorted(set(self.files) - set(files))
        removed_dirs = sorted(self.dirs - dirs, key=lambda d: d.count("/"), reverse=True)
        new_dirs = sorted(dirs - self.dirs, key=lambda d: d.count("/"))
        written = {
            path: (self.tree / path).stat().st_size
            for path, digest in sorted(files.items())
            if self.files.get(path) != digest
        }
        if removed or removed_dirs or new_dirs or written:
            self._check_space(removed, new_dirs, written)
        changes: list[str] = []
        for gone in removed:
            _mtools("mdel", "-i", image, f"::/{gone}")
            changes.append(f"-{gone}")
        for gone in removed_dirs:
            _mtools("mrd", "-i", image, f"::/{gone}")
            changes.append(f"-{gone}/")
        for new in new_dirs:
            _mtools("mmd", "-i", image, f"::/{new}")
            changes.append(f"+{new}/")
        for path in written:
            _mtools("mcopy", "-o", "-m", "-i", image, os.fspath(self.tree / path), f"::/{path}")
            changes.append(f"+{path}")
        self.dirs, self.files = dirs, files
        self.sizes = self._sizes(files)
        if changes:
            log.info("fat.write_back", device=str(self.node), changes=changes)
        return changes
