"""Batch fix-boot's logic: report names, usage errors, the summary, exit codes, SIGTERM."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from vmcraft import UsageError, cli
from vmcraft.fixers import batch
from vmcraft.fixers.batch import BatchResult, fix_boot_many, report_file
from vmcraft.fixers.fixboot import FixBootOptions
from vmcraft.signals import terminate_as_interrupt


def result(image: str, code: int, *, error: str | None = None, plan: bool = True) -> BatchResult:
    report: dict[str, Any] = {"success": code == 0, "plan": [{"step": "x"}] if plan else []}
    return BatchResult(image, code, report, error, 1.5)


def test_report_names_keep_images_of_the_same_name_apart(tmp_path: Path) -> None:
    taken: set[str] = set()
    names = [report_file(tmp_path, p, taken).name for p in ("a/disk.raw", "b/disk.raw", "c.img")]
    assert names == ["disk.raw.json", "disk.raw-2.json", "c.img.json"]


def test_no_image_and_no_jobs_are_usage_errors() -> None:
    with pytest.raises(UsageError):
        fix_boot_many([])
    with pytest.raises(UsageError, match="at least 1"):
        fix_boot_many(["x.raw"], jobs=0)


@pytest.mark.parametrize("extra", [["--undo"], ["--report", "r.json"]], ids=["undo", "report-file"])
def test_several_images_refuse_single_image_options(
    extra: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["fix-boot", "a.raw", "b.raw", *extra]) == 2
    assert "one image" in capsys.readouterr().err


def test_exit_code_is_the_worst_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    outcomes = [result("a", 0), result("b", 3, error="missing"), result("c", 1, error="step")]
    monkeypatch.setattr(cli, "fix_boot_many", lambda *a, **k: outcomes)
    assert cli.main(["fix-boot", "a", "b", "c"]) == 3
    monkeypatch.setattr(cli, "fix_boot_many", lambda *a, **k: outcomes[:1])
    assert cli.main(["fix-boot", "a", "--jobs", "1"]) == 0


def test_summary_lists_every_image_in_order() -> None:
    table = cli.render_batch(
        [result("/x/a.raw", 0), result("/x/b.raw", 0, plan=False), result("/x/c", 3, error="gone")]
    ).splitlines()
    assert table[1].split()[:2] == ["/x/a.raw", "ok"]
    assert table[2].endswith("nothing to change")
    assert table[3].split()[:2] == ["/x/c", "FAILED"]
    assert table[3].endswith("gone")
    assert table[-1] == "2 of 3 images repaired"


def test_a_child_without_a_report_fails_with_its_last_words() -> None:
    class Child:
        returncode = 6

        def communicate(self, _data: bytes) -> tuple[bytes, bytes]:
            return b"", b"Traceback...\nvmcraft: no loop device\n"

    class Children:
        def start(self, _argv: list[str]) -> Child:
            return Child()

        def done(self, _proc: object) -> None:
            pass

    job = batch.Job("a.raw", None, FixBootOptions(), None)
    got = batch._run_one(Children(), job)  # type: ignore[arg-type]
    assert got is not None
    assert (got.success, got.exit_code, got.error) == (False, 6, "vmcraft: no loop device")


def test_sigterm_is_taken_as_ctrl_c() -> None:
    previous = signal.getsignal(signal.SIGTERM)
    try:
        terminate_as_interrupt()
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, previous)
