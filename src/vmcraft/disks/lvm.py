"""The guest's LVM volumes, with device-mapper where the host has it and without where not.

Every LVM command here sees only the guest's physical volumes (``--devices``)
so the host's own volume groups are never scanned, activated or changed,
and reads metadata with activation disabled, which needs no device-mapper.

Hosts without device-mapper (containers, minimal VMs; ``/dev/mapper/control``
cannot be opened) can still reach a *linear* LV: its extents are one
contiguous byte range of a PV, so a loop device at that offset and size is
the LV. Striped, mirrored, thin or scattered LVs need device-mapper and are
reported as unreachable with the reason.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from vmcraft.errors import DriveError, last_line
from vmcraft.host import host_tool, run_tool
from vmcraft.log import get_logger

log = get_logger(__name__)

# Read metadata only: no device-mapper, no hints or locks written on the host.
_READ_CONFIG = 'global/activation=0 devices/hints="none"'


@dataclass(frozen=True)
class Segment:
    pv: Path
    start_pe: int
    count: int


@dataclass(frozen=True)
class LogicalVolume:
    vg: str
    name: str
    segtype: str
    extent_size: int
    segments: tuple[Segment, ...]

    @property
    def guest_name(self) -> str:
        return f"/dev/{self.vg}/{self.name}"


@dataclass(frozen=True)
class ByteRange:
    pv: Path
    offset: int
    size: int


def device_mapper_available() -> bool:
    try:
        fd = os.open("/dev/mapper/control", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


def _lvm(args: list[str], pvs: list[Path]) -> dict[str, object]:
    argv = [
        host_tool("lvm", "lvm2"),
        *args,
        "--devices",
        ",".join(os.fspath(p) for p in pvs),
        "--config",
        _READ_CONFIG,
        "--nolocking",
        "--reportformat",
        "json",
        "--units",
        "b",
        "--nosuffix",
    ]
    done = run_tool(
        argv,
        capture_output=True,
        text=True,
        env={"PATH": os.environ.get("PATH", ""), "LVM_SUPPRESS_FD_WARNINGS": "1", "LANG": "C"},
        timeout=300,
    )
    if done.returncode != 0:
        errors = "\n".join(ln for ln in done.stderr.splitlines() if "WARNING" not in ln)
        reason = last_line(errors, default=f"exit status {done.returncode}")
        raise DriveError(f"lvm {args[0]} failed: {reason}")
    report: dict[str, object] = json.loads(done.stdout)
    return report


def _rows(report: dict[str, object], key: str) -> list[dict[str, str]]:
    blocks = report.get("report", [])
    if not isinstance(blocks, list):
        return []
    rows: list[dict[str, str]] = []
    for block in blocks:
        rows.extend(block.get(key, []))
    return rows


def scan(pvs: list[Path]) -> tuple[list[LogicalVolume], dict[Path, int]]:
    """The LVs on the given PVs, with each PV's first-extent offset in bytes."""
    pv_rows = _rows(_lvm(["pvs", "-o", "pv_name,pe_start"], pvs), "pv")
    pe_start = {Path(r["pv_name"]): int(r["pe_start"]) for r in pv_rows}
    seg_rows = _rows(
        _lvm(
            [
                "lvs",
                "--segments",
                "-o",
                "vg_name,lv_name,segtype,vg_extent_size,seg_start_pe,seg_pe_ranges",
            ],
            pvs,
        ),
        "seg",
    )
    volumes: dict[tuple[str, str], list[dict[str, str]]] = {}
    for row in seg_rows:
        volumes.setdefault((row["vg_name"], row["lv_name"]), []).append(row)
    found = []
    for (vg, name), rows in sorted(volumes.items()):
        rows.sort(key=lambda r: int(r["seg_start_pe"]))
        segments = []
        segtypes = {r["segtype"] for r in rows}
        for row in rows:
            for pe_range in row["seg_pe_ranges"].split():
                pv, _, span = pe_range.rpartition(":")
                first, _, last = span.partition("-")
                segments.append(Segment(Path(pv), int(first), int(last) - int(first) + 1))
        found.append(
            LogicalVolume(
                vg=vg,
                name=name,
                segtype=segtypes.pop() if len(segtypes) == 1 else "mixed",
                extent_size=int(rows[0]["vg_extent_size"]),
                segments=tuple(segments),
            )
        )
    return found, pe_start


def linear_range(lv: LogicalVolume, pe_start: dict[Path, int]) -> ByteRange | str:
    """The single byte range of a PV that is the LV, or why there is none."""
    if lv.segtype != "linear":
        return f"{lv.segtype} LV: needs device-mapper"
    if not lv.segments:
        return "no segments"
    first = lv.segments[0]
    expected = first.start_pe
    for seg in lv.segments:
        if seg.pv != first.pv or seg.start_pe != expected:
            return "linear but not contiguous on one PV: needs device-mapper"
        expected += seg.count
    count = sum(seg.count for seg in lv.segments)
    return ByteRange(
        pv=first.pv,
        offset=pe_start[first.pv] + first.start_pe * lv.extent_size,
        size=count * lv.extent_size,
    )


def activate(vg: str, pvs: list[Path]) -> None:
    """Activate a guest VG through device-mapper (hosts that have it)."""
    done = run_tool(
        [
            host_tool("lvm", "lvm2"),
            "vgchange",
            "-ay",
            "--devices",
            ",".join(os.fspath(p) for p in pvs),
            "--config",
            "activation/udev_sync=0 activation/udev_rules=0 activation/verify_udev_operations=1",
            vg,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        tail = last_line(done.stderr, default="vgchange failed")
        raise DriveError(f"cannot activate the guest's volume group {vg}: {tail}")
    log.info("lvm.activate", vg=vg)


def deactivate(vg: str, pvs: list[Path]) -> None:
    run_tool(
        [
            host_tool("lvm", "lvm2"),
            "vgchange",
            "-an",
            "--devices",
            ",".join(os.fspath(p) for p in pvs),
            vg,
        ],
        capture_output=True,
        timeout=300,
    )
    log.info("lvm.deactivate", vg=vg)
