"""LVM metadata to byte ranges, without LVM or device-mapper."""

from __future__ import annotations

from pathlib import Path

import pytest
from pytest_mock import MockerFixture

import vmcraft
from vmcraft.disks import lvm
from vmcraft.disks.lvm import ByteRange, LogicalVolume, Segment, linear_range

PV = Path("/dev/loop7p2")
MIB4 = 4 * 1024 * 1024


def lv(segtype: str = "linear", *segments: Segment) -> LogicalVolume:
    return LogicalVolume("vg", "lv", segtype, MIB4, segments)


def test_single_segment_is_one_range() -> None:
    assert linear_range(lv("linear", Segment(PV, 10, 8)), {PV: 1048576}) == ByteRange(
        PV, 1048576 + 10 * MIB4, 8 * MIB4
    )


def test_adjacent_segments_merge() -> None:
    span = linear_range(lv("linear", Segment(PV, 0, 8), Segment(PV, 8, 2)), {PV: 0})
    assert span == ByteRange(PV, 0, 10 * MIB4)


@pytest.mark.parametrize(
    ("volume", "reason"),
    [
        (lv("linear", Segment(PV, 0, 8), Segment(PV, 10, 2)), "not contiguous"),
        (lv("linear", Segment(PV, 0, 8), Segment(Path("/dev/loop8p1"), 8, 2)), "not contiguous"),
        (lv("striped", Segment(PV, 0, 8)), "needs device-mapper"),
        (lv("thin-pool", Segment(PV, 0, 8)), "needs device-mapper"),
        (lv("linear"), "no segments"),
    ],
)
def test_unreachable_without_device_mapper(volume: LogicalVolume, reason: str) -> None:
    span = linear_range(volume, {PV: 0, Path("/dev/loop8p1"): 0})
    assert isinstance(span, str)
    assert reason in span


def test_scan_reads_only_the_guest_pvs(mocker: MockerFixture) -> None:
    reports = {
        "pvs": {"report": [{"pv": [{"pv_name": str(PV), "pe_start": "1048576"}]}]},
        "lvs": {
            "report": [
                {
                    "seg": [
                        {
                            "vg_name": "vg",
                            "lv_name": "root",
                            "segtype": "linear",
                            "vg_extent_size": str(MIB4),
                            "seg_start_pe": "8",
                            "seg_pe_ranges": f"{PV}:10-11",
                        },
                        {
                            "vg_name": "vg",
                            "lv_name": "root",
                            "segtype": "linear",
                            "vg_extent_size": str(MIB4),
                            "seg_start_pe": "0",
                            "seg_pe_ranges": f"{PV}:0-7",
                        },
                    ]
                }
            ]
        },
    }
    run = mocker.patch("vmcraft.disks.lvm._lvm", side_effect=lambda args, pvs: reports[args[0]])
    volumes, pe_start = lvm.scan([PV])
    assert pe_start == {PV: 1048576}
    assert volumes == [
        LogicalVolume("vg", "root", "linear", MIB4, (Segment(PV, 0, 8), Segment(PV, 10, 2)))
    ]
    assert all(call.args[1] == [PV] for call in run.call_args_list)


def test_lvm_failure_is_a_drive_error(mocker: MockerFixture) -> None:
    mocker.patch("vmcraft.disks.lvm.host_tool", return_value="/bin/false")
    with pytest.raises(vmcraft.DriveError, match="lvm pvs failed"):
        lvm.scan([PV])


def test_missing_lvm_tool_names_the_package(mocker: MockerFixture) -> None:
    mocker.patch("vmcraft.host.shutil.which", return_value=None)
    with pytest.raises(vmcraft.HostToolMissingError, match="lvm2"):
        lvm.scan([PV])


def test_launch_needs_root(mocker: MockerFixture, tmp_path: Path) -> None:
    image = tmp_path / "disk.raw"
    image.write_bytes(b"\0" * 1024 * 1024)
    mocker.patch("vmcraft.host.os.geteuid", return_value=1000)
    g = vmcraft.VMCraft()
    g.add_drive_opts(image)
    with pytest.raises(vmcraft.NotRootError, match="needs root"):
        g.launch()
