"""A writable ESP on a host whose kernel has no FAT driver: staged, written back with mtools.

Containers and minimal VMs often lack vfat, and fusefat's writes were seen
to leave a FAT that mtools refuses. So a writable FAT filesystem is staged:
its files are copied with mtools into a private tmpfs mounted where the guest
expects the ESP, the guest's tools work on that, and at unmount every
change (new and changed files, new directories, removals) is written back
with mtools, the userspace FAT implementation dosfstools' users trust.
An ESP holds a few megabytes of files, so staging costs little.
"""

from __future__ import annotations

import hashlib
import os
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
        self.dirs, self.files = snapshot(self.tree)

    def write_back(self) -> list[str]:
        """Write every change since load() to the FAT filesystem; returns what changed."""
        image = os.fspath(self.node)
        dirs, files = snapshot(self.tree)
        changes: list[str] = []
        for gone in sorted(set(self.files) - set(files)):
            _mtools("mdel", "-i", image, f"::/{gone}")
            changes.append(f"-{gone}")
        for gone in sorted(self.dirs - dirs, key=lambda d: d.count("/"), reverse=True):
            _mtools("mrd", "-i", image, f"::/{gone}")
            changes.append(f"-{gone}/")
        for new in sorted(dirs - self.dirs, key=lambda d: d.count("/")):
            _mtools("mmd", "-i", image, f"::/{new}")
            changes.append(f"+{new}/")
        for path, digest in sorted(files.items()):
            if self.files.get(path) != digest:
                _mtools("mcopy", "-o", "-m", "-i", image, os.fspath(self.tree / path), f"::/{path}")
                changes.append(f"+{path}")
        self.dirs, self.files = dirs, files
        if changes:
            log.info("fat.write_back", device=str(self.node), changes=changes)
        return changes
