"""Reading /proc/self/mountinfo, and the two ways of asking "is this mounted?"."""

from __future__ import annotations

import os
from pathlib import Path
from unittest.mock import MagicMock

import pytest
from pytest_mock import MockerFixture

import vmcraft
from vmcraft.errors import HostToolTimeoutError
from vmcraft.host import status_of
from vmcraft.mount import mountinfo
from vmcraft.mount.mountinfo import (
    MountCheck,
    MountEntry,
    MountinfoProbe,
    MountpointCommandProbe,
    make_probe,
    mount_ids,
    mount_points,
    parse_mountinfo,
)

SAMPLE = (
    "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro\n"
    "23 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw\n"
    "30 22 8:17 / /mnt/my\\040disk rw,relatime master:2 - ext4 /dev/sdb1 rw\n"
    "31 22 0:44 /sub /srv/both rw shared:3 master:2 - tmpfs tmp\\040fs rw,size=10k\n"
    "32 22 0:45 / /private\\011tab\\134back rw,nosuid - tmpfs none rw\n"
    "33 22 0:46 / /opt/unbindable rw unbindable - tmpfs none\n"
)


def fake_table(mocker: MockerFixture, text: str) -> MagicMock:
    return mocker.patch("vmcraft.mount.mountinfo._mountinfo_text", return_value=text)


def line(mount_id: int, point: str) -> str:
    escaped = point.replace("\\", "\\134").replace(" ", "\\040")
    return f"{mount_id} 1 0:{mount_id} / {escaped} rw,relatime - tmpfs tmpfs rw\n"


# -- parse_mountinfo ------------------------------------------------------------


def test_parse_mountinfo_fields() -> None:
    root, proc, *_ = parse_mountinfo(SAMPLE)

    assert root == MountEntry(
        mount_id=22,
        parent_id=1,
        device="8:1",
        root="/",
        mount_point="/",
        options="rw,relatime",
        optional=("shared:1",),
        fstype="ext4",
        source="/dev/sda1",
        super_options="rw,errors=remount-ro",
    )
    assert proc.mount_point == "/proc"
    assert proc.fstype == "proc"


def test_parse_mountinfo_unescapes_octal() -> None:
    entries = {e.mount_id: e for e in parse_mountinfo(SAMPLE)}

    assert entries[30].mount_point == "/mnt/my disk"
    assert entries[31].source == "tmp fs"
    assert entries[31].root == "/sub"
    assert entries[32].mount_point == "/private\ttab\\back"


def test_parse_mountinfo_optional_fields_and_propagation() -> None:
    entries = {e.mount_id: e for e in parse_mountinfo(SAMPLE)}

    assert entries[22].optional == ("shared:1",)
    assert entries[22].propagation == "shared"
    assert entries[30].optional == ("master:2",)
    assert entries[30].propagation == "slave"
    assert entries[31].optional == ("shared:3", "master:2")
    assert entries[31].propagation == "shared,slave"
    assert entries[32].optional == ()
    assert entries[32].propagation == "private"
    assert entries[33].propagation == "unbindable"


def test_parse_mountinfo_missing_super_options_and_blank_lines() -> None:
    entries = parse_mountinfo("\n" + SAMPLE + "\n")

    assert len(entries) == 6
    assert entries[-1].super_options == ""
    assert entries[-1].source == "none"


def test_parse_mountinfo_empty() -> None:
    assert parse_mountinfo("") == []


def test_read_mountinfo_uses_the_table(mocker: MockerFixture) -> None:
    fake_table(mocker, SAMPLE)
    assert [e.mount_id for e in mountinfo.read_mountinfo()] == [22, 23, 30, 31, 32, 33]


def test_read_mountinfo_on_this_host_has_a_root() -> None:
    # The real table: whatever the host, something is mounted on /.
    assert "/" in {e.mount_point for e in mountinfo.read_mountinfo()}
    assert mount_ids()


# -- fast scans -------------------------------------------------------------------


def test_mount_points_unescape(mocker: MockerFixture) -> None:
    fake_table(mocker, SAMPLE)

    assert mount_points() == {
        "/",
        "/proc",
        "/mnt/my disk",
        "/srv/both",
        "/private\ttab\\back",
        "/opt/unbindable",
    }


def test_mount_ids(mocker: MockerFixture) -> None:
    fake_table(mocker, SAMPLE)
    assert mount_ids() == {22, 23, 30, 31, 32, 33}


def test_scans_agree_with_full_parse(mocker: MockerFixture) -> None:
    fake_table(mocker, SAMPLE)
    entries = parse_mountinfo(SAMPLE)
    assert mount_points() == {e.mount_point for e in entries}
    assert mount_ids() == {e.mount_id for e in entries}


# -- MountinfoProbe ---------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    base = Path(os.path.realpath(tmp_path))
    (base / "a" / "b").mkdir(parents=True)
    (base / "ab").mkdir()
    (base / "with space").mkdir()
    return base


def test_probe_finds_mount_points(mocker: MockerFixture, tree: Path) -> None:
    fake_table(
        mocker, line(1, "/") + line(2, str(tree / "a" / "b")) + line(3, str(tree / "with space"))
    )
    probe = MountinfoProbe()

    assert probe.is_mounted(tree / "a" / "b")
    assert probe.is_mounted(tree / "with space")
    assert not probe.is_mounted(tree / "a")
    assert not probe.is_mounted(tree / "ab")


def test_probe_reads_the_table_once(mocker: MockerFixture, tree: Path) -> None:
    table = fake_table(mocker, line(1, "/"))
    probe = MountinfoProbe()

    for _ in range(3):
        probe.is_mounted(tree / "a")

    assert table.call_count == 1


def test_probe_missing_path_is_not_mounted(mocker: MockerFixture, tree: Path) -> None:
    table = fake_table(mocker, line(1, str(tree / "gone")))
    probe = MountinfoProbe()

    assert not probe.is_mounted(tree / "gone")
    assert table.call_count == 0


def test_probe_follows_symlinks_like_mountpoint(mocker: MockerFixture, tree: Path) -> None:
    (tree / "link").symlink_to(tree / "a" / "b")
    fake_table(mocker, line(2, str(tree / "a" / "b")))

    assert MountinfoProbe().is_mounted(tree / "link")


def test_note_mounted_hides_entries_below(mocker: MockerFixture, tree: Path) -> None:
    fake_table(mocker, line(1, "/") + line(2, str(tree / "a" / "b")) + line(3, str(tree / "ab")))
    probe = MountinfoProbe()
    assert probe.is_mounted(tree / "a" / "b")
    assert not probe.is_mounted(tree / "a")

    probe.note_mounted(tree / "a")

    assert probe.is_mounted(tree / "a")
    # a/b was a mount point, but the new mount on a now covers it...
    assert not probe.is_mounted(tree / "a" / "b")
    # ...and only what is below a: "ab" merely shares the prefix.
    assert probe.is_mounted(tree / "ab")


def test_note_mounted_before_any_question_is_a_no_op(mocker: MockerFixture, tree: Path) -> None:
    table = fake_table(mocker, line(1, "/"))
    probe = MountinfoProbe()

    probe.note_mounted(tree / "a")

    assert table.call_count == 0
    # The table is read when first asked (it then shows the new mount itself).
    assert not probe.is_mounted(tree / "a")
    assert table.call_count == 1


# -- MountpointCommandProbe -------------------------------------------------------


def test_mountpoint_tool_missing(mocker: MockerFixture) -> None:
    which = mocker.patch("vmcraft.mount.mountinfo.shutil.which", return_value=None)

    with pytest.raises(vmcraft.HostToolMissingError) as caught:
        MountpointCommandProbe()

    assert caught.value.tool == "mountpoint"
    assert caught.value.package == "util-linux"
    assert "util-linux" in str(caught.value)
    assert isinstance(caught.value, RuntimeError)
    assert which.call_count == 2  # the caller's PATH, then the system one


def test_mountpoint_tool_found_on_system_path(mocker: MockerFixture) -> None:
    mocker.patch("vmcraft.mount.mountinfo.shutil.which", side_effect=[None, "/usr/bin/mountpoint"])
    status = mocker.patch("vmcraft.mount.mountinfo.status_of", return_value=0)

    assert MountpointCommandProbe().is_mounted(Path("/guest/proc"))
    assert status.call_args.args[0] == ["/usr/bin/mountpoint", "-q", "--", "/guest/proc"]


@pytest.mark.parametrize(("returncode", "mounted"), [(0, True), (1, False), (32, False)])
def test_mountpoint_exit_status(mocker: MockerFixture, returncode: int, mounted: bool) -> None:
    mocker.patch("vmcraft.mount.mountinfo.shutil.which", return_value="/bin/mountpoint")
    status = mocker.patch("vmcraft.mount.mountinfo.status_of", return_value=returncode)
    probe = MountpointCommandProbe()

    assert probe.is_mounted(Path("/guest/dev")) is mounted
    probe.note_mounted(Path("/guest/dev"))  # nothing to remember
    assert status.call_args.kwargs["timeout"] > 0


def test_status_of_is_bounded() -> None:
    assert status_of(["true"], timeout=10) == 0
    assert status_of(["false"], timeout=10) == 1
    with pytest.raises(HostToolTimeoutError, match=r"did not finish within 0\.2 s"):
        status_of(["sleep", "5"], timeout=0.2)


# -- make_probe -------------------------------------------------------------------


def test_make_probe_mountinfo(mocker: MockerFixture) -> None:
    which = mocker.patch("vmcraft.mount.mountinfo.shutil.which")
    assert isinstance(make_probe("mountinfo"), MountinfoProbe)
    assert isinstance(make_probe(MountCheck.MOUNTINFO), MountinfoProbe)
    which.assert_not_called()


def test_make_probe_mountpoint(mocker: MockerFixture) -> None:
    mocker.patch("vmcraft.mount.mountinfo.shutil.which", return_value="/bin/mountpoint")
    assert isinstance(make_probe("mountpoint"), MountpointCommandProbe)
    assert isinstance(make_probe(MountCheck.MOUNTPOINT), MountpointCommandProbe)


def test_make_probe_unknown() -> None:
    with pytest.raises(ValueError, match="findmnt"):
        make_probe("findmnt")


def test_mount_check_values() -> None:
    assert MountCheck("mountpoint") is MountCheck.MOUNTPOINT
    assert MountCheck("mountinfo") is MountCheck.MOUNTINFO
    assert vmcraft.MountCheck is MountCheck
