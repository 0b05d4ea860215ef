"""What vmcraft needs from the host: root, and a few programs."""

from __future__ import annotations

import os
import select
import shutil
import subprocess
from collections.abc import Sequence
from typing import Any

from vmcraft.errors import HostToolMissingError, HostToolTimeoutError, NotRootError

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


def run_tool(
    argv: Sequence[str],
    *,
    timeout: float,
    **kwargs: Any,  # noqa: ANN401 - subprocess.run's own keywords
) -> subprocess.CompletedProcess[Any]:
    """subprocess.run for host tools: bounded, and a hang is a VMCraftError.

    A host tool stuck on a bad device (blkid, lvm, qemu-img) must not hang
    a migration script or a notebook kernel forever.
    """
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    try:
        return subprocess.run(list(argv), timeout=timeout, check=False, **kwargs)
    except subprocess.TimeoutExpired as exc:
        raise HostToolTimeoutError(f"{argv[0]} did not finish within {timeout:g} s") from exc


def status_of(argv: Sequence[str], *, timeout: float) -> int:
    """Exit status of a host tool run for its status alone, bounded by ``timeout``.

    subprocess's own timeout polls with growing sleeps, which adds a
    millisecond or more to a tool that takes one; this waits on a pidfd
    instead, so a bounded call costs what the tool costs.
    """
    proc = subprocess.Popen(
        list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        pidfd = os.pidfd_open(proc.pid)
    except OSError:  # kernels before 5.3
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired as exc:
            proc.kill()
            proc.wait()
            raise HostToolTimeoutError(f"{argv[0]} did not finish within {timeout:g} s") from exc
    try:
        ready, _, _ = select.select([pidfd], [], [], timeout)
    finally:
        os.close(pidfd)
    if not ready:
        proc.kill()
        proc.wait()
        raise HostToolTimeoutError(f"{argv[0]} did not finish within {timeout:g} s")
    return proc.wait()
