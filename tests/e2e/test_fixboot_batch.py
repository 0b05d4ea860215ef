"""``vmcraft fix-boot IMG IMG...`` on the real Debian guest: side by side, one report each.

One image failing does not stop the others; Ctrl-C stops all of them, and
each leaves its guest as it found it and nothing on the host.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import psutil
import pytest

from tests.conftest import CopyImage
from tests.conftest import vmcraft_cli as vmcraft
from tests.leaks import snapshot

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("leak_check")]

SCHEMA = json.loads((Path(__file__).parents[2] / "docs" / "report-schema.json").read_text())


def findings(image: Path) -> list[dict[str, object]]:
    done = vmcraft("check", str(image), "--json")
    assert done.returncode in (0, 1), done.stderr
    found: list[dict[str, object]] = json.loads(done.stdout)["findings"]
    return found


def test_many_images_one_line_and_one_report_each(image_copy: CopyImage, tmp_path: Path) -> None:
    good = [image_copy("raw"), image_copy("qcow2")]
    missing = tmp_path / "missing.qcow2"
    reports = tmp_path / "reports"
    done = vmcraft(
        "fix-boot",
        *map(str, good),
        str(missing),
        "--jobs",
        "2",
        "--report-dir",
        str(reports),
        "--json",
    )
    assert done.returncode == 3, done.stderr  # the missing image's exit code: bad input
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    by_image = {line["image"]: line for line in lines}
    assert set(by_image) == {str(p) for p in [*good, missing]}
    for image in good:
        line = by_image[str(image)]
        assert line["success"] is True, line["error"]
        assert line["exit_code"] == 0
        jsonschema.validate(line["report"], SCHEMA)
        assert line["report"]["plan"], "the demo guest needs repairs"
    failed = by_image[str(missing)]
    assert failed["success"] is False
    assert failed["exit_code"] == 3
    assert "missing.qcow2" in failed["error"]
    assert sorted(p.name for p in reports.iterdir()) == [
        "guest.qcow2.json",
        "guest.raw.json",
        "missing.qcow2.json",
    ]
    for report in reports.iterdir():
        jsonschema.validate(json.loads(report.read_text()), SCHEMA)
    for image in good:
        assert findings(image) == [], "repaired"


def test_a_terminal_summary_names_each_image(image_copy: CopyImage, tmp_path: Path) -> None:
    image = image_copy("raw")
    done = vmcraft("fix-boot", str(image), str(tmp_path / "nope.raw"), "--jobs", "1")
    assert done.returncode == 3
    table = done.stdout.splitlines()
    assert table[0].split() == ["image", "result", "seconds", "what"]
    assert any(row.startswith(str(image)) and " ok " in row for row in table)
    assert any("nope.raw" in row and "FAILED" in row for row in table)
    assert table[-1] == "1 of 2 images repaired"


def test_ctrl_c_stops_every_image_and_each_is_as_it_was(image_copy: CopyImage) -> None:
    images = [image_copy("raw"), image_copy("qcow2")]
    before_findings = [findings(image) for image in images]
    before = snapshot()
    proc = subprocess.Popen(
        [sys.executable, "-m", "vmcraft", "fix-boot", *map(str, images), "--jobs", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, like a terminal's foreground job
    )
    try:
        # Both images are being repaired: a guest tool runs for each.
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            names = [_name(p) for p in _descendants(proc.pid)]
            if sum(name.startswith("update-initram") for name in names) >= 2:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the two repairs never both reached update-initramfs")
        os.killpg(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    assert snapshot() == before
    # Each run put back what it had changed: the same faults as before.
    assert [findings(image) for image in images] == before_findings


def _name(p: psutil.Process) -> str:
    try:
        return p.name()
    except psutil.Error:
        return ""


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
