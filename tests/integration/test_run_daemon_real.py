"""A command that leaves a process holding its output: the call returns when the command exits.

A package's postinst that starts a service without redirecting its output
leaves a daemon with the command's stdout and stderr open. ``communicate``
alone would wait for EOF on them, that is for the daemon, up to the
command's timeout (an hour by default). Here the result comes when the
command itself exits, with the output written so far, and what it left
running in the guest is ended.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from tests.leaks import mount_table
from vmcraft import CommandError, CommandTimeoutError, VMCraft
from vmcraft.chroot import reaper

pytestmark = pytest.mark.root

# Well under the command's default timeout (an hour), and under anything a
# machine under load needs to start, kill and reap a few processes.
PROMPT_S = 10.0

Call = Callable[[VMCraft, list[str]], str]


# A timeout (not the default hour) so that, were the call to wait for the
# background job, it would fail with CommandTimeoutError instead of hanging.
def _command(g: VMCraft, cmd: list[str]) -> str:
    return g.command(cmd, timeout=PROMPT_S)


def _with_mounts(g: VMCraft, cmd: list[str]) -> str:
    return g.command_with_mounts(cmd, timeout=PROMPT_S)


def _run(g: VMCraft, cmd: list[str]) -> str:
    result = g.run(cmd, timeout=PROMPT_S)
    assert result.returncode == 0, result
    return result.stdout


CALLS = [
    pytest.param(_with_mounts, id="command_with_mounts"),
    pytest.param(_command, id="command"),
    pytest.param(_run, id="run"),
]


@pytest.fixture
def g(guest_root: Path) -> Iterator[VMCraft]:
    # dash opens /dev/null for every background job's stdin, redirected or
    # not, and the cached root's /dev is empty: give the plain chroot one
    # (the pseudo-filesystems' /dev covers it in command_with_mounts).
    os.mknod(guest_root / "dev" / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    with VMCraft.from_root(guest_root) as handle:
        yield handle


def _gone(pid: int, root: Path) -> bool:
    """Not running in the guest any more (gone, a zombie, or the pid reused outside)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state in ("Z", "X") or not os.readlink(f"/proc/{pid}/root").startswith(
            os.fspath(root)
        )
    except OSError:
        return True


def _timed(call: Call, g: VMCraft, cmd: list[str]) -> tuple[str, float]:
    start = time.monotonic()
    out = call(g, cmd)
    return out, time.monotonic() - start


@pytest.mark.parametrize("call", CALLS)
def test_background_job_holding_stdout_does_not_hold_the_call(g: VMCraft, call: Call) -> None:
    before = mount_table()
    with capture_logs() as events:
        out, took = _timed(call, g, ["sh", "-c", "sleep 300 & echo started"])
    assert took < PROMPT_S, f"the call waited {took:.1f} s for the background job"
    assert out == "started\n"
    assert [e["event"] for e in events if e["event"] == "command.output_held"] == [
        "command.output_held"
    ]
    assert reaper.processes_rooted_in(g.root) == []
    assert mount_table() == before


def test_output_written_before_the_exit_is_all_returned(g: VMCraft) -> None:
    # The job writes after the command has exited (and then sleeps): nothing
    # it writes later is waited for, and what came before is all there.
    script = "i=0; while [ $i -lt 500 ]; do echo line$i; i=$((i+1)); done; sleep 300 & exit 0"
    out, took = _timed(_with_mounts, g, ["sh", "-c", script])
    assert took < PROMPT_S
    assert out.splitlines() == [f"line{i}" for i in range(500)]
    assert reaper.processes_rooted_in(g.root) == []


def test_exit_status_is_the_commands_own(g: VMCraft) -> None:
    start = time.monotonic()
    with pytest.raises(CommandError) as caught:
        g.command_with_mounts(
            ["sh", "-c", "sleep 300 & echo out; echo err >&2; exit 3"], timeout=PROMPT_S
        )
    assert time.monotonic() - start < PROMPT_S
    assert caught.value.returncode == 3
    assert caught.value.stdout == "out\n"
    assert caught.value.stderr == "err\n"
    assert reaper.processes_rooted_in(g.root) == []


def test_only_stderr_held(g: VMCraft) -> None:
    out, took = _timed(_with_mounts, g, ["sh", "-c", "sleep 300 >/dev/null & echo started"])
    assert took < PROMPT_S
    assert out == "started\n"
    assert reaper.processes_rooted_in(g.root) == []


@pytest.mark.parametrize("call", CALLS)
def test_double_forked_setsid_daemon(g: VMCraft, call: Call) -> None:
    """A daemon in a session of its own, reparented away from the command: the reaper's."""
    before = mount_table()
    # The subshell forks and exits; setsid(1) makes the daemon a session
    # leader; it ignores SIGTERM, so only SIGKILL ends it. The command exits
    # once the daemon has written its line.
    script = (
        "( setsid sh -c \"trap '' TERM; echo daemon up; touch /tmp/ready; exec sleep 300\" & ); "
        "while ! test -e /tmp/ready; do sleep 0.02; done; echo started"
    )
    with capture_logs() as events:
        out, took = _timed(call, g, ["sh", "-c", script])
    assert took < PROMPT_S
    assert out == "daemon up\nstarted\n"
    killed = [e["event"] for e in events if e["event"] in ("reaper.terminate", "reaper.kill")]
    assert killed == ["reaper.terminate", "reaper.kill"]
    assert reaper.processes_rooted_in(g.root) == []
    assert mount_table() == before


def test_daemon_that_let_go_of_the_output_is_not_the_watchers(g: VMCraft) -> None:
    """Nothing holds the pipes: the call returns at EOF as before, and ends nothing itself."""
    with capture_logs() as events:
        # It has let go before the command exits: the command waits for that.
        script = (
            "sh -c 'exec >/dev/null 2>&1; touch /tmp/ready; exec sleep 300' & "
            "while ! test -e /tmp/ready; do sleep 0.02; done; echo $!"
        )
        out = g.command(["sh", "-c", script])
    pid = int(out)
    try:
        assert not _gone(pid, g.root), "a plain command leaves a detached job alone"
        assert not [e for e in events if e["event"] == "command.output_held"]
    finally:
        reaper.reap(g.root, grace=1.0)
    assert _gone(pid, g.root)


def test_timeout_still_kills_a_command_that_does_not_exit(g: VMCraft) -> None:
    before = mount_table()
    start = time.monotonic()
    with pytest.raises(CommandTimeoutError) as caught:
        g.command_with_mounts(["sh", "-c", "sleep 300 & echo started; sleep 300"], timeout=1)
    assert time.monotonic() - start < PROMPT_S
    assert caught.value.stdout == "started\n"
    assert reaper.processes_rooted_in(g.root) == []
    assert mount_table() == before


def test_many_quick_commands_leave_no_thread_or_descriptor(g: VMCraft) -> None:
    fds = len(os.listdir("/proc/self/fd"))
    for _ in range(50):
        assert g.command(["echo", "x"]) == "x\n"
    # Watchers exit with their command; give the last few a moment to unwind.
    deadline = time.monotonic() + 5
    while len(os.listdir(f"/proc/{os.getpid()}/task")) > 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(os.listdir(f"/proc/{os.getpid()}/task")) == 1
    assert len(os.listdir("/proc/self/fd")) == fds
