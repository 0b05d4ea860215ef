"""How a handle runs guest commands: in the sandbox, or in the card's enhanced chroot."""

from __future__ import annotations

import enum


class Isolation(enum.StrEnum):
    """``sandbox``: bubblewrap (sandbox/bwrap.py); ``host``: chroot with host pseudo-filesystems.

    The sandbox is the default for handles on disk images, whose guest code
    is untrusted; handles made with ``from_root`` keep the enhanced chroot
    (``PseudoFSMounter``) unless the caller asks for the sandbox.
    """

    SANDBOX = "sandbox"
    HOST = "host"
