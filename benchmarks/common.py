"""What every benchmark does first: root, quiet logs, a private mount namespace."""

from __future__ import annotations

import logging
import os
import sys

import structlog

from vmcraft.mount import syscalls


def isolate(what: str) -> None:
    """Exit 2 unless root; drop log events below warnings; unshare the mount namespace.

    Events are not what is measured, and the benchmark's mounts must not
    reach the host's mount table even if it crashes.
    """
    if os.geteuid() != 0:
        print(f"the benchmark {what}: run it as root", file=sys.stderr)
        raise SystemExit(2)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    syscalls.unshare(syscalls.CLONE_NEWNS)
    syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
