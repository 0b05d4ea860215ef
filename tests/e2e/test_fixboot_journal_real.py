"""A failed repair leaves the guest as it found it; --undo puts a repair back; twice is once.

On the real Debian guest (the demo disk: no grub.cfg yet, an initramfs
without fsck): every file's content and mode are compared by sha256 before
and after, so "as it found it" means byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import jsonschema
import pytest

from tests.conftest import CopyImage
from tests.conftest import vmcraft_cli as vmcraft
from vmcraft import VMCraft

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("leak_check")]

SCHEMA = json.loads((Path(__file__).parents[2] / "docs" / "report-schema.json").read_text())
JOURNAL = "var/lib/vmcraft"


def contents(image: Path) -> dict[str, tuple[int, str]]:
    """Every file and link in the guest: (mode, sha256 of its content or link target)."""
    with VMCraft() as g:
        g.add_drive_opts(image)
        g.launch()
        g.mount("/dev/sda2", "/")
        found = {}
        for top, dirs, names in os.walk(g.root):
            for name in [*names, *dirs]:
                path = Path(top) / name
                st = path.lstat()
                rel = os.fspath(path.relative_to(g.root))
                if path.is_symlink():
                    found[rel] = (st.st_mode, os.readlink(path))
                elif path.is_file():
                    found[rel] = (st.st_mode, hashlib.sha256(path.read_bytes()).hexdigest())
                else:
                    found[rel] = (st.st_mode, "")
    return found


def diff(before: dict[str, tuple[int, str]], after: dict[str, tuple[int, str]]) -> set[str]:
    return {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}


def put(image: Path, path: str, text: str, mode: int = 0o755) -> None:
    with VMCraft() as g:
        g.add_drive_opts(image, readonly=False)
        g.launch()
        g.mount("/dev/sda2", "/")
        g.write(path, text)
        g.chmod(mode, path)


def test_a_step_that_fails_puts_back_what_the_run_changed(
    image_copy: CopyImage, tmp_path: Path
) -> None:
    image = image_copy("raw")
    # The guest's update-grub writes half a config, then fails.
    put(image, "/usr/sbin/update-grub", "#!/bin/sh\necho broken > /boot/grub/grub.cfg\nexit 1\n")
    before = contents(image)
    report_path = tmp_path / "report.json"

    done = vmcraft("fix-boot", str(image), "--json", "--report", str(report_path))

    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    jsonschema.validate(report, SCHEMA)
    assert report["initramfs"]["success"] is True, "the first step worked"
    assert report["bootloader"]["success"] is False
    assert report["bootloader"]["attempts"][-1]["ok"] is False
    restored = {r["path"]: r["action"] for r in report["restored"]}
    assert restored == {
        f"/boot/initrd.img-{report['guest']['kernels'][0]}": "restored",
        "/boot/grub/grub.cfg": "removed",
    }
    assert sorted(report["bootloader"]["restores"]) == sorted(restored)
    assert diff(before, contents(image)) == set(), "the guest is byte for byte as it was"


def test_undo_puts_back_a_repair_and_a_second_run_changes_nothing(
    image_copy: CopyImage,
) -> None:
    image = image_copy("qcow2")
    before = contents(image)

    first = vmcraft("fix-boot", str(image), "--json")
    assert first.returncode == 0, first.stderr
    repaired = contents(image)
    changed = diff(before, repaired)
    assert "boot/grub/grub.cfg" in changed
    assert any(p.startswith(JOURNAL) for p in changed)

    second = vmcraft("fix-boot", str(image), "--json")
    assert second.returncode == 0, second.stderr
    again = json.loads(second.stdout)
    assert again["plan"] == []
    assert {s["skipped"] for s in (again["initramfs"], again["bootloader"])} == {"nothing to fix"}
    assert "nothing to change: the guest is already repaired" in again["notes"]
    assert diff(repaired, contents(image)) == set()

    check = vmcraft("check", str(image), "--json")
    assert check.returncode == 0, check.stdout
    assert json.loads(check.stdout)["findings"] == []

    undone = vmcraft("fix-boot", "--undo", str(image), "--json")
    assert undone.returncode == 0, undone.stderr
    assert {r["path"] for r in json.loads(undone.stdout)["restored"]} >= {"/boot/grub/grub.cfg"}
    assert diff(before, contents(image)) == set(), "--undo leaves the guest as it was"


def test_a_filesystem_with_a_journal_to_replay_is_not_touched(image_copy: CopyImage) -> None:
    image = image_copy("raw")
    table = json.loads(
        subprocess.run(["sfdisk", "-J", str(image)], capture_output=True, check=True).stdout
    )
    root = table["partitiontable"]["partitions"][1]["start"] * 512
    # What a crash leaves: EXT4_FEATURE_INCOMPAT_RECOVER set (debugfs keeps the checksum right).
    subprocess.run(
        ["debugfs", "-w", "-R", "feature needs_recovery", f"{image}?offset={root}"],
        capture_output=True,
        check=True,
    )
    digest = hashlib.sha256(image.read_bytes()).hexdigest()

    done = vmcraft("fix-boot", str(image))

    assert done.returncode == 3, done.stderr
    assert "has a journal to replay" in done.stderr
    assert hashlib.sha256(image.read_bytes()).hexdigest() == digest


def test_check_lists_what_would_break(image_copy: CopyImage) -> None:
    image = image_copy("raw")

    done = vmcraft("check", str(image), "--json")

    assert done.returncode == 1
    findings = json.loads(done.stdout)["findings"]
    assert {f["step"] for f in findings} == {"initramfs", "bootloader"}
    text = vmcraft("check", str(image))
    assert "grub.cfg" in text.stdout
