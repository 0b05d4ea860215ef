"""What is on a block device, from ``blkid -p`` (a low-level probe, no cache)."""

from __future__ import annotations

import os
from pathlib import Path

from vmcraft.host import host_tool, run_tool


def probe(node: Path) -> dict[str, str]:
    """blkid's KEY=VALUE pairs for ``node`` (TYPE, UUID, LABEL, PART_ENTRY_UUID...).

    An empty dict when blkid finds nothing it knows.
    """
    done = run_tool(
        [host_tool("blkid", "util-linux"), "-p", "-o", "export", "--", os.fspath(node)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Exit 2: nothing found; other failures also mean "nothing we can use".
    if done.returncode != 0:
        return {}
    values = {}
    for line in done.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key] = value
    return values
