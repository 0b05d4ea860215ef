"""Whether a guest filesystem may be mounted writable without changing it first.

An ext3/ext4 filesystem whose journal still holds transactions (the VM was
not shut down cleanly, or was snapshotted running) is replayed by the
kernel on a writable mount: a change made before any repair has been
decided, which a failed repair could not put back. The superblock says so
(``EXT4_FEATURE_INCOMPAT_RECOVER``); it is read directly, so the check
costs one 1 KiB read.
"""

from __future__ import annotations

import os
from pathlib import Path

from vmcraft.errors import os_error

_SUPERBLOCK_OFFSET = 1024
_EXT_MAGIC = 0xEF53
_INCOMPAT_RECOVER = 0x0004


def needs_journal_replay(node: Path) -> bool:
    """True for an ext3/ext4 filesystem on ``node`` with a journal to replay."""
    with os_error("needs_journal_replay", node):
        fd = os.open(node, os.O_RDONLY | os.O_CLOEXEC)
        try:
            block = os.pread(fd, 1024, _SUPERBLOCK_OFFSET)
        finally:
            os.close(fd)
    return superblock_needs_replay(block)


def superblock_needs_replay(block: bytes) -> bool:
    if len(block) < 0x64 or int.from_bytes(block[0x38:0x3A], "little") != _EXT_MAGIC:
        return False
    incompat = int.from_bytes(block[0x60:0x64], "little")
    return bool(incompat & _INCOMPAT_RECOVER)
