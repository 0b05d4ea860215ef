"""fix_boot() writes its report on every way out: errors, Ctrl-C, success."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pytest_mock import MockerFixture

from vmcraft.errors import ExitCode, GuestMountError, ImageNotFoundError, exit_code_for
from vmcraft.fixers import fixboot


def patch_launch(mocker: MockerFixture, error: BaseException) -> None:
    handle = mocker.MagicMock()
    handle.__enter__.return_value = handle
    handle.__exit__.return_value = False
    handle.launch.side_effect = error
    mocker.patch.object(fixboot, "VMCraft", return_value=handle)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (GuestMountError("cannot mount /dev/sda2 (ext4): Structure needs cleaning"), 6),
        (ImageNotFoundError("disk.qcow2: no such file"), 3),
        (KeyboardInterrupt(), 130),
    ],
)
def test_report_written_with_error_and_exit_code(
    tmp_path: Path, mocker: MockerFixture, error: BaseException, code: int
) -> None:
    patch_launch(mocker, error)
    out = tmp_path / "report.json"

    with pytest.raises(type(error)):
        fixboot.fix_boot("disk.qcow2", report_path=out)

    report = json.loads(out.read_text())
    assert report["success"] is False
    assert report["exit_code"] == code
    assert report["error_type"] == type(error).__name__
    assert report["error"]
    assert report["analysis"]["timings"]["total"] >= 0


def test_raise_error_false_returns_the_report_instead(
    tmp_path: Path, mocker: MockerFixture
) -> None:
    patch_launch(mocker, GuestMountError("boom"))

    report = fixboot.fix_boot("disk.qcow2", raise_error=False)

    assert report.error == "boom"
    assert report.exit_code == ExitCode.HOST


def test_ctrl_c_is_raised_even_when_errors_are_not(mocker: MockerFixture) -> None:
    patch_launch(mocker, KeyboardInterrupt())

    with pytest.raises(KeyboardInterrupt):
        fixboot.fix_boot("disk.qcow2", raise_error=False)


def test_exit_code_of_something_unexpected_is_failed() -> None:
    assert exit_code_for(ValueError("x")) == ExitCode.FAILED
