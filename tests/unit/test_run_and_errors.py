"""The guest's environment, command results, the error hierarchy and deferred signals."""

from __future__ import annotations

import inspect
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from unittest.mock import MagicMock

import pytest
from pytest_mock import MockerFixture

import vmcraft
from vmcraft import errors
from vmcraft.chroot.run import GUEST_ENV, CommandResult, check, guest_environment, run_in_root
from vmcraft.host import SYSTEM_PATH
from vmcraft.signals import deferred_signals

MKCONFIG = ["grub2-mkconfig", "-o", "/boot/grub2/grub.cfg"]
NO_DEVICE = "error: cannot find a device for / (is /dev mounted?)."

# -- guest_environment --------------------------------------------------------


def test_guest_environment_is_fixed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMCRAFT_HOST_ONLY", "leak")
    monkeypatch.setenv("LD_PRELOAD", "/host/lib/evil.so")
    monkeypatch.setenv("PATH", "/host/venv/bin:/usr/bin")

    env = guest_environment()

    assert env["PATH"] == SYSTEM_PATH
    assert env["LANG"] == "C"
    assert env["LC_ALL"] == "C"
    assert env["HOME"] == "/root"
    assert "VMCRAFT_HOST_ONLY" not in env
    assert "LD_PRELOAD" not in env
    assert set(env) == {"PATH", "HOME", "LANG", "LC_ALL"}


def test_guest_environment_merges_extras_without_touching_defaults() -> None:
    env = guest_environment({"GRUB_DISABLE_OS_PROBER": "true", "LANG": "C.UTF-8"})

    assert env["GRUB_DISABLE_OS_PROBER"] == "true"
    assert env["LANG"] == "C.UTF-8"
    assert env["PATH"] == SYSTEM_PATH
    assert GUEST_ENV["LANG"] == "C"
    assert "GRUB_DISABLE_OS_PROBER" not in guest_environment()


def test_guest_environment_with_empty_extra() -> None:
    assert guest_environment({}) == dict(GUEST_ENV)
    assert guest_environment(None) == dict(GUEST_ENV)


# -- errors -----------------------------------------------------------------


def test_command_error_message_and_attributes() -> None:
    argv = ("grub2-mkconfig", "-o", "/boot/grub2/grub.cfg")
    error = vmcraft.CommandError(argv, 1, "Generating grub configuration file ...\n", NO_DEVICE)

    assert str(error) == f"grub2-mkconfig: exited with status 1: {NO_DEVICE}"
    assert error.argv == list(argv)
    assert error.returncode == 1
    assert error.stdout == "Generating grub configuration file ...\n"
    assert error.stderr == NO_DEVICE


def test_command_error_message_uses_last_line_then_stdout() -> None:
    several = vmcraft.CommandError(["x"], 2, "", "first\nsecond\nlast line\n\n")
    from_stdout = vmcraft.CommandError(["x"], 3, "only stdout\n", "  \n")
    silent = vmcraft.CommandError(["x"], 4, "", "")

    assert str(several) == "x: exited with status 2: last line"
    assert str(from_stdout) == "x: exited with status 3: only stdout"
    assert str(silent) == "x: exited with status 4: no output"


def test_command_error_explicit_message() -> None:
    error = vmcraft.CommandError(["x"], 1, "", "err", message="custom")
    assert str(error) == "custom"
    assert error.stderr == "err"


def test_command_timeout_error_is_a_command_error() -> None:
    error = vmcraft.CommandTimeoutError(MKCONFIG, 5.0, "partial\n", "")

    assert isinstance(error, vmcraft.CommandError)
    assert issubclass(vmcraft.CommandTimeoutError, vmcraft.CommandError)
    assert error.timeout == 5.0
    assert error.returncode == -9
    assert error.stdout == "partial\n"
    assert str(error) == "grub2-mkconfig: killed after the 5 s timeout"


def test_host_tool_missing_error() -> None:
    error = vmcraft.HostToolMissingError("chroot", "coreutils")
    assert error.tool == "chroot"
    assert error.package == "coreutils"
    assert "coreutils" in str(error)
    assert vmcraft.HostToolMissingError("x").package is None


ERROR_CLASSES = [
    cls
    for _, cls in inspect.getmembers(errors, inspect.isclass)
    if issubclass(cls, BaseException) and cls.__module__ == errors.__name__
]


def test_error_classes_found() -> None:
    assert len(ERROR_CLASSES) >= 10
    # Every error class is exported from the package.
    assert {cls.__name__ for cls in ERROR_CLASSES} <= set(vmcraft.__all__)


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda cls: cls.__name__)
def test_every_error_is_a_vmcraft_error_and_a_runtime_error(cls: type[BaseException]) -> None:
    assert issubclass(cls, vmcraft.VMCraftError)
    assert issubclass(cls, RuntimeError)
    assert getattr(vmcraft, cls.__name__) is cls


# -- CommandResult and check ------------------------------------------------


def test_check_returns_stdout_on_success() -> None:
    result = CommandResult(MKCONFIG, 0, "done\n", "warning: noise\n")
    assert check(result) == "done\n"


def test_check_raises_on_failure() -> None:
    result = CommandResult(MKCONFIG, 1, "partial\n", NO_DEVICE)

    with pytest.raises(vmcraft.CommandError) as caught:
        check(result)

    assert caught.value.argv == MKCONFIG
    assert caught.value.returncode == 1
    assert caught.value.stdout == "partial\n"
    assert caught.value.stderr == NO_DEVICE


def test_command_result_repr_and_ok() -> None:
    failed = CommandResult(MKCONFIG, 1, "", NO_DEVICE + "\n", duration_ms=12.4)
    passed = CommandResult(["true"], 0, "", "")

    assert "exit=1" in repr(failed)
    assert "grub2-mkconfig -o /boot/grub2/grub.cfg" in repr(failed)
    assert "12ms" in repr(failed)
    assert "cannot find a device" in repr(failed)
    assert "exit=0" in repr(passed)
    assert not failed.ok
    assert passed.ok


def test_command_result_equality_ignores_duration() -> None:
    assert CommandResult(["x"], 0, "o", "e", 1.0) == CommandResult(["x"], 0, "o", "e", 2.0)


# -- run_in_root ------------------------------------------------------------


def test_run_in_root_refuses_empty_argv(mocker: MockerFixture) -> None:
    popen = mocker.patch("vmcraft.chroot.run.subprocess.Popen")
    with pytest.raises(ValueError, match="empty command"):
        run_in_root(Path("/guest"), [])
    popen.assert_not_called()


@pytest.fixture
def popen(mocker: MockerFixture) -> MagicMock:
    mocker.patch("vmcraft.chroot.run.require_privileges")
    mocker.patch("vmcraft.chroot.run.host_tool", return_value="/usr/sbin/chroot")
    proc = MagicMock()
    proc.communicate.return_value = ("out\n", "err\n")
    proc.returncode = 0
    return mocker.patch("vmcraft.chroot.run.subprocess.Popen", return_value=proc)


def test_run_in_root_runs_chroot_with_guest_env(
    popen: MagicMock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VMCRAFT_HOST_ONLY", "leak")

    result = run_in_root(Path("/guest"), MKCONFIG, env={"EXTRA": "1"}, timeout=30)

    argv = popen.call_args.args[0]
    kwargs = popen.call_args.kwargs
    assert argv == ["/usr/sbin/chroot", "--", "/guest", *MKCONFIG]
    assert kwargs["env"] == guest_environment({"EXTRA": "1"})
    assert kwargs["stdin"] == subprocess.DEVNULL
    assert kwargs["start_new_session"] is True
    popen.return_value.communicate.assert_called_once_with(timeout=30)
    assert result.argv == MKCONFIG
    assert result.returncode == 0
    assert result.stdout == "out\n"
    assert result.stderr == "err\n"


def test_run_in_root_does_not_raise_on_failure(popen: MagicMock) -> None:
    popen.return_value.returncode = 1
    result = run_in_root(Path("/guest"), ["false"])
    assert result.returncode == 1
    assert not result.ok


def test_run_in_root_timeout_kills_and_raises(popen: MagicMock, mocker: MockerFixture) -> None:
    kill = mocker.patch("vmcraft.chroot.run._kill_tree")
    popen.return_value.communicate.side_effect = [
        subprocess.TimeoutExpired(MKCONFIG, 5),
        ("partial\n", ""),
    ]

    with pytest.raises(vmcraft.CommandTimeoutError) as caught:
        run_in_root(Path("/guest"), MKCONFIG, timeout=5)

    kill.assert_called_once_with(popen.return_value, Path("/guest"))
    assert caught.value.timeout == 5
    assert caught.value.stdout == "partial\n"


def test_run_in_root_interrupt_kills_and_reraises(popen: MagicMock, mocker: MockerFixture) -> None:
    kill = mocker.patch("vmcraft.chroot.run._kill_tree")
    popen.return_value.communicate.side_effect = [KeyboardInterrupt(), ("", "")]

    with pytest.raises(KeyboardInterrupt):
        run_in_root(Path("/guest"), MKCONFIG)

    kill.assert_called_once()


# -- deferred_signals ---------------------------------------------------------


def test_sigint_is_held_until_the_block_ends() -> None:
    continued = False
    with pytest.raises(KeyboardInterrupt), deferred_signals():  # noqa: PT012
        signal.raise_signal(signal.SIGINT)
        # Still here: the Ctrl-C was recorded, not delivered.
        continued = True
    assert continued
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.fixture
def sigterm_calls() -> Iterator[list[int]]:
    calls: list[int] = []

    def handler(signum: int, _frame: FrameType | None) -> None:
        calls.append(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield calls
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_sigterm_is_delivered_once_after_the_block(sigterm_calls: list[int]) -> None:
    with deferred_signals():
        signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGTERM)
        assert sigterm_calls == []

    assert sigterm_calls == [signal.SIGTERM]


def test_block_error_still_propagates(sigterm_calls: list[int]) -> None:
    with pytest.raises(ValueError, match="boom"), deferred_signals():
        raise ValueError("boom")
    assert sigterm_calls == []


def test_handlers_restored_without_signals() -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with deferred_signals():
        assert signal.getsignal(signal.SIGINT) is not before[signal.SIGINT]
    assert {s: signal.getsignal(s) for s in before} == before


def test_deferred_signals_outside_main_thread_is_a_no_op() -> None:
    outcome: list[object] = []

    def worker() -> None:
        try:
            with deferred_signals():
                outcome.append("ran")
        except Exception as exc:  # pragma: no cover - reported below
            outcome.append(exc)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(timeout=5)
    assert outcome == ["ran"]
