"""Report values in the seed's shape, extended for the fix-boot workflow.

A step is ``{"attempts": [{"cmd", "ok", "out"}], "success"}`` as the seed's
report has it, plus the checks that were run on what the step produced:
exit status 0 is not success on its own (a grub.cfg naming ``/dev/loop0p2``
exits 0 and does not boot).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vmcraft.errors import last_line

OUTPUT_TAIL = 4000
"""Characters of a command's output kept in a report: the tail, where errors are."""


def trim(text: str, limit: int = OUTPUT_TAIL) -> str:
    text = text.strip()
    if len(text) <= limit:
        return text
    return f"[... {len(text) - limit} characters trimmed]\n{text[-limit:]}"


@dataclass(frozen=True)
class Attempt:
    """One command a fixer ran, and what came of it."""

    cmd: list[str]
    ok: bool
    out: str

    def to_dict(self) -> dict[str, Any]:
        return {"cmd": list(self.cmd), "ok": self.ok, "out": trim(self.out)}


@dataclass(frozen=True)
class Check:
    """One verification of what a step produced."""

    name: str
    ok: bool
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


@dataclass(frozen=True)
class Rewrite:
    """One change a step made to a guest file: the file, and the text before and after."""

    path: str
    before: str
    after: str

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "before": self.before, "after": self.after}


@dataclass
class StepReport:
    """Every attempt of one repair step (bootloader, initramfs) in order, and its checks.

    A step that edits files records each edit in ``rewrites``; one that
    found nothing to do is ``skipped`` with the reason (and succeeds); one
    whose failure rolled the run back lists what was put back in
    ``restores`` (file paths).
    """

    attempts: list[Attempt] = field(default_factory=list)
    rewrites: list[Rewrite] = field(default_factory=list)
    removals: list[str] = field(default_factory=list)
    restores: list[str] = field(default_factory=list)
    skipped: str | None = None
    failure: str | None = None
    """Why the step failed when no attempt or check says it (a step's own error)."""
    checks: list[Check] = field(default_factory=list)

    @property
    def success(self) -> bool:
        """The last attempt succeeded and everything checked afterwards holds."""
        if self.failure is not None:
            return False
        if self.skipped is not None:
            return all(c.ok for c in self.checks)
        if not (self.attempts or self.rewrites or self.removals):
            return False
        last_ok = not self.attempts or self.attempts[-1].ok
        return last_ok and all(c.ok for c in self.checks)

    @property
    def reason(self) -> str | None:
        """Why the step failed, or None."""
        if self.success:
            return None
        if self.failure is not None:
            return self.failure
        if not (self.attempts or self.rewrites or self.removals) and self.skipped is None:
            return "not run"
        if self.attempts and not self.attempts[-1].ok:
            tail = last_line(self.attempts[-1].out, default="failed")
            return f"{' '.join(self.attempts[-1].cmd)}: {tail}"
        failed = next(c for c in self.checks if not c.ok)
        return f"{failed.name}: {failed.detail}"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "attempts": [a.to_dict() for a in self.attempts],
            "success": self.success,
        }
        # Without checks or edits this is exactly the seed's shape.
        if self.checks:
            out["checks"] = [c.to_dict() for c in self.checks]
        if self.rewrites:
            out["rewrites"] = [r.to_dict() for r in self.rewrites]
        if self.removals:
            out["removals"] = list(self.removals)
        if self.restores:
            out["restores"] = list(self.restores)
        if self.skipped is not None:
            out["skipped"] = self.skipped
        if not self.success and (self.checks or self.failure or self.restores):
            out["reason"] = self.reason
        return out
