"""fix-boot's report is written however the run ends, with the error and its exit code.

A run that stops early (no operating system, an image that is not one) is
when a migration script most needs the report; these run the real CLI on
real images, so the report file is the one a user would get.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("leak_check")]

SCHEMA = json.loads((Path(__file__).parents[2] / "docs" / "report-schema.json").read_text())


def fix_boot(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmcraft", "fix-boot", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )


def blank_disk(path: Path) -> Path:
    """A GPT disk with one empty ext4 partition: a disk, but no operating system on it."""
    subprocess.run(["truncate", "-s", "64M", str(path)], check=True)
    subprocess.run(
        ["sfdisk", "-q", str(path)],
        input="label: gpt\ntype=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n",
        text=True,
        check=True,
    )
    return path


def test_no_os_found_still_writes_the_report(tmp_path: Path) -> None:
    image = blank_disk(tmp_path / "blank.raw")
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    report_path = tmp_path / "report.json"

    done = fix_boot(str(image), "--report", str(report_path))

    assert done.returncode == 5, done.stderr
    report = json.loads(report_path.read_text())
    jsonschema.validate(report, SCHEMA)
    assert report["success"] is False
    assert report["exit_code"] == 5
    assert report["error_type"] == "UnsupportedGuestError"
    assert "no Linux operating system found" in report["error"]
    assert report["image"] == str(image)
    assert hashlib.sha256(image.read_bytes()).hexdigest() == digest


def test_an_image_that_is_not_one_writes_the_report_with_exit_3(tmp_path: Path) -> None:
    image = tmp_path / "broken.qcow2"
    image.write_bytes(b"QFI\xfb" + b"\0" * 508)
    report_path = tmp_path / "report.json"

    done = fix_boot(str(image), "--format", "qcow2", "--report", str(report_path))

    assert done.returncode == 3, done.stderr
    report = json.loads(report_path.read_text())
    jsonschema.validate(report, SCHEMA)
    assert report["exit_code"] == 3
    assert report["error_type"] == "ImageFormatError"
    assert report["error"]


def test_json_output_carries_the_error_too(tmp_path: Path) -> None:
    image = blank_disk(tmp_path / "blank.raw")
    report_path = tmp_path / "report.json"

    done = fix_boot(str(image), "--json", "--report", str(report_path))

    assert done.returncode == 5
    assert json.loads(report_path.read_text())["exit_code"] == 5
    printed = json.loads(done.stdout)
    assert printed["exit_code"] == 5
    assert printed["error_type"] == "UnsupportedGuestError"
    assert "no Linux operating system found" in done.stderr
