"""Report values in the seed's shape: ``{"attempts": [{cmd, ok, out}], "success"}``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Attempt:
    """One command a fixer ran, and what came of it."""

    cmd: list[str]
    ok: bool
    out: str

    def to_dict(self) -> dict[str, Any]:
        return {"cmd": list(self.cmd), "ok": self.ok, "out": self.out}


@dataclass
class StepReport:
    """Every attempt of one repair step (bootloader, initramfs) in order."""

    attempts: list[Attempt] = field(default_factory=list)

    @property
    def success(self) -> bool:
        """The step succeeded when its last attempt did."""
        return bool(self.attempts) and self.attempts[-1].ok

    def to_dict(self) -> dict[str, Any]:
        return {"attempts": [a.to_dict() for a in self.attempts], "success": self.success}
