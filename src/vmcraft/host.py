"""What vmcraft needs from the host: root, and a few programs."""

from __future__ import annotations

import os
import shutil

from vmcraft.errors import HostToolMissingError, NotRootError

# Where a minimal host keeps its tools, for when the caller's PATH is odd
# (a notebook kernel, a systemd unit with an empty environment).
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def require_privileges(action: str) -> None:
    if os.geteuid() != 0:
        raise NotRootError(f"{action} needs root (running as uid {os.geteuid()})")


def host_tool(name: str, package: str) -> str:
    """Absolute path of a host program, or a typed error naming its package."""
    found = shutil.which(name) or shutil.which(name, path=SYSTEM_PATH)
    if found is None:
        raise HostToolMissingError(name, package)
    return found
