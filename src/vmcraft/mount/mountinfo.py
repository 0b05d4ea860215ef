"""Is this path a mount point? Two answers that must agree.

``mountpoint -q`` is what the user asked for and what shell users know; it
costs a process spawn (~2.5 ms) per path. :class:`MountinfoProbe` answers the
same question in-process from ``/proc/self/mountinfo``, the table
``mountpoint`` itself consults, for callers who pay the check per command.
"""

from __future__ import annotations

import enum
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from vmcraft.errors import HostToolMissingError
from vmcraft.host import status_of

_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


def _unescape(field: str) -> str:
    # The kernel escapes space, tab, newline and backslash as \ooo.
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


@dataclass(frozen=True)
class MountEntry:
    """One line of /proc/self/mountinfo (see proc(5))."""

    mount_id: int
    parent_id: int
    device: str
    root: str
    mount_point: str
    options: str
    optional: tuple[str, ...]
    fstype: str
    source: str
    super_options: str

    @property
    def propagation(self) -> str:
        """``shared``, ``slave``, ``private`` or a combination, as findmnt says it."""
        kinds = [tag.split(":")[0] for tag in self.optional]
        if not kinds:
            return "private"
        return ",".join(dict.fromkeys("slave" if k == "master" else k for k in kinds))


def parse_mountinfo(text: str) -> list[MountEntry]:
    entries = []
    for line in text.splitlines():
        if not line:
            continue
        fields = line.split(" ")
        sep = fields.index("-")
        entries.append(
            MountEntry(
                mount_id=int(fields[0]),
                parent_id=int(fields[1]),
                device=fields[2],
                root=_unescape(fields[3]),
                mount_point=_unescape(fields[4]),
                options=fields[5],
                optional=tuple(fields[6:sep]),
                fstype=fields[sep + 1],
                source=_unescape(fields[sep + 2]),
                super_options=fields[sep + 3] if len(fields) > sep + 3 else "",
            )
        )
    return entries


def _mountinfo_text() -> str:
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        return f.read()


def read_mountinfo() -> list[MountEntry]:
    return parse_mountinfo(_mountinfo_text())


# The two questions asked on every command get a scan that splits only the
# fields they need: a full parse costs ~0.1 ms on a small host, and hosts
# with thousands of mounts exist.


def mount_points() -> set[str]:
    """The mount point of every entry in the table."""
    points = set()
    for line in _mountinfo_text().splitlines():
        point = line.split(" ", 5)[4]
        points.add(_unescape(point) if "\\" in point else point)
    return points


def mount_ids() -> set[int]:
    """The id of every mount in the table."""
    return {int(line.split(" ", 1)[0]) for line in _mountinfo_text().splitlines()}


class MountCheck(enum.StrEnum):
    """How to ask whether a pseudo-filesystem is already mounted."""

    MOUNTPOINT = "mountpoint"
    """Spawn ``mountpoint -q PATH`` (util-linux), as the seed does."""
    MOUNTINFO = "mountinfo"
    """Read /proc/self/mountinfo in-process: same answer, no spawn."""


class MountProbe(Protocol):
    def is_mounted(self, path: Path, *, canonical: bool = False) -> bool:
        """``canonical``: the caller vouches that ``path`` has no symlink or ``..`` in it."""

    def note_mounted(self, path: Path) -> None:
        """Tell the probe the caller has just mounted on ``path`` (canonical) itself."""


class MountpointCommandProbe:
    """``mountpoint -q``: exit 0 means a mount point, anything else means not."""

    def __init__(self) -> None:
        tool = shutil.which("mountpoint") or shutil.which("mountpoint", path="/usr/bin:/bin")
        if tool is None:
            raise HostToolMissingError("mountpoint", "util-linux")
        self._tool = tool

    def is_mounted(self, path: Path, *, canonical: bool = False) -> bool:
        return status_of([self._tool, "-q", "--", os.fspath(path)], timeout=10) == 0

    def note_mounted(self, path: Path) -> None:
        pass  # every question spawns a fresh mountpoint(1)


class MountinfoProbe:
    """The in-process equivalent of ``mountpoint -q``.

    Like util-linux, it canonicalizes the path (following symlinks) and
    looks for a mount table entry whose target is exactly that path, which
    is what tells a bind mount of the same filesystem from a plain
    directory where comparing ``st_dev`` with the parent cannot.

    The table is read once per probe: a mounter asks about three to five
    targets in a row and tells the probe about the mounts it makes itself.
    """

    def __init__(self) -> None:
        self._points: set[str] | None = None

    def is_mounted(self, path: Path, *, canonical: bool = False) -> bool:
        if not canonical:
            if not os.path.exists(path):
                return False
            path = Path(os.path.realpath(path))
        if self._points is None:
            self._points = mount_points()
        return os.fspath(path) in self._points

    def note_mounted(self, path: Path) -> None:
        if self._points is None:
            return
        target = os.fspath(path)
        # Whatever was mounted below the new mount is hidden under it now.
        self._points = {p for p in self._points if not p.startswith(target + "/")}
        self._points.add(target)


def make_probe(check: MountCheck | str) -> MountProbe:
    match MountCheck(check):
        case MountCheck.MOUNTPOINT:
            return MountpointCommandProbe()
        case MountCheck.MOUNTINFO:
            return MountinfoProbe()
