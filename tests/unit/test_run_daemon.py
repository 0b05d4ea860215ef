"""The watcher behind run_in_root, on host processes (no root, no chroot).

It sees the command exit and ends what still holds its output; it reads the
wakeup fd and kills the command for a Ctrl-C the main thread's wait missed;
and it never takes a signal the main thread must handle.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from unittest.mock import MagicMock

import pytest
from pytest_mock import MockerFixture

from vmcraft.chroot import run


def _shell(script: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["sh", "-c", script],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


@pytest.fixture
def kill_tree(mocker: MockerFixture) -> MagicMock:
    """_kill_tree without the guest: the command's process group, as the real one kills it."""

    def kill(proc: subprocess.Popen[str], _root: Path) -> None:
        os.killpg(proc.pid, signal.SIGKILL)

    return mocker.patch("vmcraft.chroot.run._kill_tree", side_effect=kill)


@pytest.fixture
def no_wakeup_fd() -> Iterator[None]:
    assert signal.set_wakeup_fd(-1) == -1, "a wakeup fd was left set"
    yield
    assert signal.set_wakeup_fd(-1) == -1, "a wakeup fd was left set"


def test_a_background_job_holding_stdout_is_ended_when_the_command_exits(
    kill_tree: MagicMock, tmp_path: Path
) -> None:
    proc = _shell("sleep 30 & echo started")
    watch = run._ExitWatch(proc, tmp_path)
    start = time.monotonic()
    out, _ = proc.communicate(timeout=10)
    watch.finish()
    assert time.monotonic() - start < 5
    assert out == "started\n"
    assert proc.returncode == 0
    kill_tree.assert_called_once_with(proc, tmp_path)


def test_a_job_that_let_go_of_the_output_is_left_alone(
    kill_tree: MagicMock, tmp_path: Path
) -> None:
    ready = tmp_path / "ready"
    proc = _shell(
        f"sh -c 'exec >/dev/null 2>&1; touch {ready}; exec sleep 30' & "
        f"while ! test -e {ready}; do sleep 0.01; done; echo $!"
    )
    watch = run._ExitWatch(proc, tmp_path)
    out, _ = proc.communicate(timeout=10)
    watch.finish()
    job = int(out)
    try:
        assert not kill_tree.called
        os.kill(job, 0)  # still running
    finally:
        os.killpg(proc.pid, signal.SIGKILL)


def test_a_ctrl_c_on_the_wakeup_fd_kills_the_command(
    kill_tree: MagicMock, tmp_path: Path, no_wakeup_fd: None
) -> None:
    ctrl_c = run._CtrlC(wanted=True)
    try:
        proc = _shell("sleep 30")
        watch = run._ExitWatch(proc, tmp_path, None, ctrl_c)
        # What Python's C-level handler writes on a SIGINT, without one.
        os.write(ctrl_c.write, bytes([signal.SIGINT]))
        start = time.monotonic()
        proc.communicate(timeout=10)
        watch.finish()
    finally:
        ctrl_c.close()
    assert time.monotonic() - start < 5
    assert watch.interrupted
    assert proc.returncode == -signal.SIGKILL
    # Whether the watcher then ends leftovers too depends on which member of
    # the group the kernel reaps first: either way the caller's
    # KeyboardInterrupt ends the rest, and a daemon in a session of its own
    # that still holds the output is ended by the watcher.


def test_other_signals_on_the_wakeup_fd_leave_the_command_alone(
    kill_tree: MagicMock, tmp_path: Path, no_wakeup_fd: None
) -> None:
    ctrl_c = run._CtrlC(wanted=True)
    try:
        proc = _shell("sleep 0.3; echo done")
        watch = run._ExitWatch(proc, tmp_path, None, ctrl_c)
        os.write(ctrl_c.write, bytes([signal.SIGTERM, signal.SIGUSR1]))
        out, _ = proc.communicate(timeout=10)
        watch.finish()
    finally:
        ctrl_c.close()
    assert out == "done\n"
    assert not watch.interrupted


def test_the_wakeup_fd_is_set_only_while_armed(no_wakeup_fd: None) -> None:
    ctrl_c = run._CtrlC(wanted=True)
    assert ctrl_c.write >= 0
    assert signal.set_wakeup_fd(ctrl_c.write, warn_on_full_buffer=False) == ctrl_c.write
    ctrl_c.close()
    ctrl_c.close()  # twice is fine


def test_someone_elses_wakeup_fd_is_left_alone() -> None:
    read, write = os.pipe2(os.O_NONBLOCK)
    signal.set_wakeup_fd(write)
    try:
        ctrl_c = run._CtrlC(wanted=True)
        assert ctrl_c.write == -1
        ctrl_c.close()
        assert signal.set_wakeup_fd(write) == write
    finally:
        signal.set_wakeup_fd(-1)
        os.close(read)
        os.close(write)


def test_not_armed_under_a_callers_own_handler_or_outside_the_main_thread() -> None:
    assert run._CtrlC.wanted()
    previous = signal.signal(signal.SIGINT, lambda _s, _f: None)
    try:
        assert not run._CtrlC.wanted()
    finally:
        signal.signal(signal.SIGINT, previous)
    elsewhere: list[bool] = []
    thread = threading.Thread(target=lambda: elsewhere.append(run._CtrlC.wanted()))
    thread.start()
    thread.join()
    assert elsewhere == [False]


def _blocked(tid: int) -> int:
    with open(f"/proc/self/task/{tid}/status") as f:
        line = next(x for x in f if x.startswith("SigBlk:"))
    return int(line.split()[1], 16)


def test_the_watcher_thread_takes_no_signal_the_main_thread_handles(tmp_path: Path) -> None:
    """Every watcher thread (new, or an idle one kept from an earlier command) blocks them."""
    main = threading.get_native_id()
    proc = _shell("sleep 0.5")
    watch = run._ExitWatch(proc, tmp_path)
    try:
        others = [int(t) for t in os.listdir("/proc/self/task") if int(t) != main]
        assert others, "no watcher thread"
        deadline = time.monotonic() + 5
        while not all(_blocked(t) for t in others) and time.monotonic() < deadline:
            time.sleep(0.01)
        for tid in others:
            for signum in (signal.SIGINT, signal.SIGTERM):
                assert _blocked(tid) & (1 << (signum - 1))
        assert not _blocked(main) & (1 << (signal.SIGINT - 1))
    finally:
        proc.communicate(timeout=10)
        watch.finish()


def test_a_mocked_popen_gets_a_watcher_that_goes_at_once(tmp_path: Path) -> None:
    """A Popen double (the unit tests' own): not our child, so nothing to watch."""
    before = len(os.listdir("/proc/self/fd"))
    watch = run._ExitWatch(MagicMock(), tmp_path)
    watch.finish()
    deadline = time.monotonic() + 5
    while len(os.listdir("/proc/self/fd")) != before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(os.listdir("/proc/self/fd")) == before
