"""fstab(5) entries, and which of them name a filesystem to mount."""

from __future__ import annotations

from dataclasses import dataclass

_VIRTUAL = frozenset(
    {
        "proc",
        "sysfs",
        "tmpfs",
        "devpts",
        "devtmpfs",
        "swap",
        "none",
        "cgroup",
        "cgroup2",
        "debugfs",
        "securityfs",
        "efivarfs",
        "nfs",
        "nfs4",
        "cifs",
        "auto.master",
    }
)


@dataclass(frozen=True)
class FstabEntry:
    spec: str
    mountpoint: str
    fstype: str
    options: str


def _unescape(field: str) -> str:
    # fstab escapes spaces and tabs as \040 and \011.
    return field.replace("\\040", " ").replace("\\011", "\t")


def parse_fstab(text: str) -> list[FstabEntry]:
    entries = []
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) < 3:
            continue
        options = fields[3] if len(fields) > 3 else "defaults"
        entries.append(FstabEntry(_unescape(fields[0]), _unescape(fields[1]), fields[2], options))
    return entries


def local_filesystems(entries: list[FstabEntry]) -> list[FstabEntry]:
    """Entries for block-device filesystems under /, as inspection reports them."""
    return [e for e in entries if e.mountpoint.startswith("/") and e.fstype not in _VIRTUAL]
