"""The libguestfs conformance table: every call, its status, how it differs.

Each call mixin keeps its own rows beside its code (``CALLS``); this joins
them in the order the handle presents them. docs/conformance.md is
generated from it (``vmcraft conformance``) and a test fails if either
drifts from the handle.
"""

from __future__ import annotations

from vmcraft.guestfs.base import IMPLEMENTED, Conformance
from vmcraft.guestfs.devices import DeviceCalls
from vmcraft.guestfs.files import FileCalls
from vmcraft.guestfs.inspection import InspectionCalls
from vmcraft.guestfs.mounts import MountCalls
from vmcraft.handle import VMCraft

__all__ = ["CALLS", "IMPLEMENTED", "conformance_table"]

CALLS: Conformance = {
    **VMCraft.CALLS,
    **DeviceCalls.CALLS,
    **InspectionCalls.CALLS,
    **MountCalls.CALLS,
    **FileCalls.CALLS,
}


def conformance_table() -> str:
    lines = [
        "# libguestfs conformance",
        "",
        "Every call hyper2kvm 0.2.1's offline fixers make, as `vmcraft.VMCraft` answers it.",
        "Generated from `vmcraft.guestfs.conformance.CALLS` by `python -m vmcraft conformance`;",
        "a test fails if this file or the handle drifts from it.",
        "",
        "| call | status | notes |",
        "|---|---|---|",
    ]
    lines += [f"| `{name}` | {status} | {note} |" for name, (status, note) in CALLS.items()]
    return "\n".join(lines) + "\n"
