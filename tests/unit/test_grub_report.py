"""GrubFixer.regenerate and the report it keeps, in the seed's shape."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

import vmcraft
from vmcraft.fixers.bootloader.grub import GrubFixer, run_guest_command
from vmcraft.report import Attempt, StepReport

NO_DEVICE = "error: cannot find a device for / (is /dev mounted?)."
FEDORA = ["grub2-mkconfig", "-o", "/boot/grub2/grub.cfg"]
DEBIAN = ["grub-mkconfig", "-o", "/boot/grub/grub.cfg"]
UPDATE = ["update-grub"]


class ScriptedHandle:
    """A VMCraft-shaped handle whose commands answer from a script.

    Each command's base name maps to stdout (success) or an exception.
    """

    def __init__(self, script: dict[str, str | BaseException]) -> None:
        self.script = script
        self.calls: list[tuple[str, list[str], bool]] = []

    def _answer(self, cmd: Sequence[str]) -> str:
        outcome = self.script[cmd[0]]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def command_with_mounts(self, cmd: Sequence[str], quiet: bool = False) -> str:
        self.calls.append(("command_with_mounts", list(cmd), quiet))
        return self._answer(cmd)

    def command_quiet(self, cmd: Sequence[str]) -> str:
        self.calls.append(("command_quiet", list(cmd), True))
        return self._answer(cmd)


class ForeignHandle:
    """libguestfs-shaped: command_quiet only, raising plain RuntimeError."""

    def __init__(self, error: RuntimeError | None = None, out: str = "") -> None:
        self.error = error
        self.out = out
        self.calls: list[list[str]] = []

    def command_quiet(self, cmd: list[str]) -> str:
        self.calls.append(cmd)
        if self.error is not None:
            raise self.error
        return self.out


def no_device(cmd: list[str]) -> vmcraft.CommandError:
    return vmcraft.CommandError(cmd, 1, "Generating grub configuration file ...\n", NO_DEVICE)


def test_regenerate_stops_at_first_success() -> None:
    handle = ScriptedHandle(
        {
            "grub2-mkconfig": no_device(FEDORA),
            "grub-mkconfig": "Generating grub configuration file ...\ndone\n",
            "update-grub": "never run\n",
        }
    )
    fixer = GrubFixer(handle)

    report = fixer.regenerate([FEDORA, DEBIAN, UPDATE])

    assert report is fixer.report
    assert report.success
    assert [call[1] for call in handle.calls] == [FEDORA, DEBIAN]
    assert report.to_dict() == {
        "attempts": [
            {"cmd": FEDORA, "ok": False, "out": NO_DEVICE},
            {"cmd": DEBIAN, "ok": True, "out": "Generating grub configuration file ...\ndone"},
        ],
        "success": True,
    }


def test_regenerate_records_every_failure() -> None:
    handle = ScriptedHandle(
        {
            "grub2-mkconfig": no_device(FEDORA),
            "grub-mkconfig": vmcraft.CommandError(DEBIAN, 127, "", "chroot: failed to run\n"),
            "update-grub": vmcraft.CommandError(UPDATE, 1, "only stdout\n", ""),
        }
    )

    report = GrubFixer(handle).regenerate([FEDORA, DEBIAN, UPDATE])

    assert not report.success
    assert report.to_dict() == {
        "attempts": [
            {"cmd": FEDORA, "ok": False, "out": NO_DEVICE},
            {"cmd": DEBIAN, "ok": False, "out": "chroot: failed to run"},
            {"cmd": UPDATE, "ok": False, "out": "only stdout"},
        ],
        "success": False,
    }


def test_failure_out_carries_the_stderr() -> None:
    attempt = run_guest_command(ScriptedHandle({"grub2-mkconfig": no_device(FEDORA)}), FEDORA)

    assert attempt == Attempt(cmd=FEDORA, ok=False, out=NO_DEVICE)


def test_failure_without_output_uses_the_message() -> None:
    error = vmcraft.CommandError(FEDORA, 1, "", "")
    attempt = run_guest_command(ScriptedHandle({"grub2-mkconfig": error}), FEDORA)

    assert attempt.out == "grub2-mkconfig: exited with status 1: no output"


def test_grub_routing_in_regenerate() -> None:
    handle = ScriptedHandle({"grub2-mkconfig": "ok\n", "/usr/sbin/grub2-probe": "ext2\n"})
    fixer = GrubFixer(handle)

    fixer.run(["/usr/sbin/grub2-probe", "--target=fs", "/boot"])
    fixer.regenerate([FEDORA])

    assert [(name, quiet) for name, _, quiet in handle.calls] == [
        ("command_with_mounts", True),
        ("command_with_mounts", True),
    ]
    assert len(fixer.report.attempts) == 2


def test_foreign_runtime_error_is_recorded_as_failure() -> None:
    handle = ForeignHandle(RuntimeError("libguestfs: error: command: grub2-mkconfig: failed"))

    report = GrubFixer(handle).regenerate([FEDORA])

    assert handle.calls == [FEDORA]
    assert report.to_dict() == {
        "attempts": [
            {
                "cmd": FEDORA,
                "ok": False,
                "out": "libguestfs: error: command: grub2-mkconfig: failed",
            }
        ],
        "success": False,
    }


def test_foreign_handle_success() -> None:
    report = GrubFixer(ForeignHandle(out="  done \n")).regenerate([FEDORA, DEBIAN])

    assert report.success
    assert report.to_dict()["attempts"] == [{"cmd": FEDORA, "ok": True, "out": "done"}]


def test_non_runtime_errors_are_not_swallowed() -> None:
    handle = ScriptedHandle({"grub2-mkconfig": KeyboardInterrupt()})
    fixer = GrubFixer(handle)

    with pytest.raises(KeyboardInterrupt):
        fixer.regenerate([FEDORA, DEBIAN])

    assert fixer.report.attempts == []


def test_regenerate_with_no_candidates() -> None:
    report = GrubFixer(ForeignHandle()).regenerate([])
    assert report.to_dict() == {"attempts": [], "success": False}


def test_empty_step_report_is_not_success() -> None:
    report = StepReport()
    assert not report.success
    assert report.to_dict() == {"attempts": [], "success": False}


def test_step_report_success_follows_the_last_attempt() -> None:
    report = StepReport([Attempt(["a"], True, "x"), Attempt(["b"], False, "y")])
    assert not report.success
    report.attempts.append(Attempt(["c"], True, "z"))
    assert report.success


def test_attempt_to_dict_copies_cmd() -> None:
    cmd = ["update-grub"]
    as_dict = Attempt(cmd, True, "done").to_dict()
    as_dict["cmd"].append("--mutated")
    assert cmd == ["update-grub"]
    assert as_dict == {"cmd": ["update-grub", "--mutated"], "ok": True, "out": "done"}
