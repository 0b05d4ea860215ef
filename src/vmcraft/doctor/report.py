"""What ``vmcraft doctor`` found: one :class:`Probe` per host feature, and the verdict.

The verdict is a rule over severities, not a judgement per host: vmcraft
cannot work at all when a :attr:`Severity.REQUIRED` feature is missing, and
works (doing what each ``fallback`` says) when only others are. The JSON
shape (:meth:`HostReport.to_dict`) is a stable interface for scripts that
check a fleet of conversion hosts; fields are added, never renamed.
"""

from __future__ import annotations

import enum
import textwrap
from dataclasses import dataclass
from typing import Any

from vmcraft.errors import ExitCode

SCHEMA_VERSION = 1
"""Bumped only if a field of :meth:`HostReport.to_dict` changes meaning or goes."""


class Feature(enum.StrEnum):
    """What the host is probed for; the values are the names the report shows."""

    ROOT = "root"
    LOOP = "loop"
    LOOP_CONFIGURE = "loop-configure"
    QEMU_IMG = "qemu-img"
    BLKID = "blkid"
    PARTX = "partx"
    FUSE = "fuse"
    QEMU_STORAGE_DAEMON = "qemu-storage-daemon"
    NBD = "nbd"
    DEVICE_MAPPER = "device-mapper"
    LVM = "lvm2"
    CRYPTSETUP = "cryptsetup"
    VFAT = "vfat"
    MTOOLS = "mtools"
    BUBBLEWRAP = "bubblewrap"
    SECCOMP = "seccomp"
    USER_NAMESPACES = "user-namespaces"
    IDMAPPED_MOUNTS = "idmapped-mounts"
    E2FSPROGS = "e2fsprogs"
    SYSTEMD_NSPAWN = "systemd-nspawn"
    QEMU_SYSTEM = "qemu-system-x86_64"
    OVMF = "ovmf"
    DEBOOTSTRAP = "debootstrap"


class Severity(enum.StrEnum):
    """How much a missing feature costs vmcraft."""

    REQUIRED = "required"
    """Without it vmcraft cannot work at all: no image can be attached or repaired."""
    DEGRADED = "degraded"
    """Some images, guests or commands need it; ``fallback`` says what vmcraft does instead."""
    OPTIONAL = "optional"
    """No vmcraft command depends on it alone: an alternative path, a peer, test tooling."""


@dataclass(frozen=True)
class Probe:
    """One feature of the host, as probed, and what vmcraft does without it."""

    name: Feature
    available: bool
    severity: Severity
    detail: str
    """What was found (a version, a path, the kernel's answer)."""
    fallback: str
    """What vmcraft does where the feature is missing; said whether or not it is."""
    method: str
    """How it was found out: a file read, a device opened, a trial run, a kernel version."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name.value,
            "available": self.available,
            "severity": self.severity.value,
            "detail": self.detail,
            "fallback": self.fallback,
            "method": self.method,
        }


@dataclass(frozen=True)
class HostReport:
    """Every probe, in a fixed order, with the kernel they ran on and how long they took."""

    probes: tuple[Probe, ...]
    kernel: str
    machine: str
    elapsed_ms: float

    @property
    def usable(self) -> bool:
        """Can vmcraft work here at all: is every required feature available?"""
        return all(p.available for p in self.probes if p.severity is Severity.REQUIRED)

    @property
    def missing(self) -> tuple[Probe, ...]:
        return tuple(p for p in self.probes if not p.available)

    @property
    def exit_code(self) -> ExitCode:
        """``vmcraft doctor``'s status: what any other command would exit with here.

        Not root: 4, as every other command exits for it. Root, but a
        required feature missing: 6, the host problem. Otherwise 0, however
        many degraded or optional features are missing.
        """
        if not self.probe(Feature.ROOT).available:
            return ExitCode.ROOT
        return ExitCode.OK if self.usable else ExitCode.HOST

    def probe(self, name: Feature) -> Probe:
        for probe in self.probes:
            if probe.name is name:
                return probe
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "usable": self.usable,
            "exit_code": int(self.exit_code),
            "kernel": self.kernel,
            "machine": self.machine,
            "elapsed_ms": self.elapsed_ms,
            "probes": [p.to_dict() for p in self.probes],
        }

    def to_text(self, width: int = 100) -> str:
        """A table for a person: name, ok or missing, what was found, and for a missing
        feature what vmcraft does instead."""
        lines = [
            f"vmcraft doctor: Linux {self.kernel} ({self.machine}), "
            f"probed in {self.elapsed_ms:.0f} ms",
            "",
            f"{'feature':<20} {'status':<8} {'severity':<9} detail",
        ]
        indent = " " * 39
        for p in self.probes:
            status = (
                "ok" if p.available else "MISSING" if p.severity is Severity.REQUIRED else "missing"
            )
            lines.append(f"{p.name.value:<20} {status:<8} {p.severity.value:<9} {p.detail}")
            if not p.available:
                lines += textwrap.wrap(
                    f"without it: {p.fallback}",
                    width=width,
                    initial_indent=indent,
                    subsequent_indent=indent + "  ",
                    break_on_hyphens=False,
                )
        lines.append("")
        missing = [p.name.value for p in self.missing]
        if self.usable:
            lines.append(
                "vmcraft can work on this host"
                + (f"; missing: {', '.join(missing)} (see above)" if missing else "")
            )
        else:
            required = [p.name.value for p in self.missing if p.severity is Severity.REQUIRED]
            lines.append(f"vmcraft cannot work on this host: it needs {', '.join(required)}")
        return "\n".join(lines)
