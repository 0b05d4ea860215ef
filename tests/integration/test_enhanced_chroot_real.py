"""The enhanced chroot on a real debootstrapped Debian root, with real mounts."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_mock
from structlog.testing import capture_logs

from tests.leaks import mount_table
from vmcraft import (
    CommandError,
    CommandTimeoutError,
    MountCheck,
    UnsafePathError,
    VMCraft,
)
from vmcraft.chroot import reaper
from vmcraft.fixers.bootloader.grub import GrubFixer
from vmcraft.mount import syscalls
from vmcraft.mount.mountinfo import (
    MountinfoProbe,
    MountpointCommandProbe,
    read_mountinfo,
)

pytestmark = pytest.mark.root

MS_SHARED = 1 << 20


def is_mountpoint(path: Path) -> bool:
    return os.fspath(path) in {e.mount_point for e in read_mountinfo()}


@pytest.fixture(params=[MountCheck.MOUNTPOINT, MountCheck.MOUNTINFO])
def g(request: pytest.FixtureRequest, guest_root: Path) -> Iterator[VMCraft]:
    with VMCraft.from_root(guest_root, mount_check=request.param) as handle:
        yield handle


# -- what the command sees ----------------------------------------------------

SEEN_ONLY_WITH_MOUNTS = [
    pytest.param(["test", "-e", "/proc/self/mountinfo"], id="proc-mountinfo"),
    pytest.param(["test", "-c", "/dev/null"], id="dev-null"),
    pytest.param(["test", "-d", "/sys/kernel"], id="sys-kernel"),
]


@pytest.mark.parametrize("probe", SEEN_ONLY_WITH_MOUNTS)
def test_pseudofs_present_with_mounts_absent_without(g: VMCraft, probe: list[str]) -> None:
    with pytest.raises(CommandError):
        g.command(probe)
    g.command_with_mounts(probe)
    with pytest.raises(CommandError):
        g.command(probe)


def test_guest_sees_its_own_mount_points(g: VMCraft) -> None:
    mountinfo = g.command_with_mounts(["cat", "/proc/self/mountinfo"])
    points = {line.split()[4] for line in mountinfo.splitlines()}
    assert {"/proc", "/dev", "/sys"} <= points


def test_stdout_returned_and_errors_carry_details(g: VMCraft) -> None:
    assert g.command_with_mounts(["echo", "hello from the guest"]) == "hello from the guest\n"
    with pytest.raises(CommandError) as caught:
        g.command_with_mounts(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert caught.value.returncode == 3
    assert caught.value.stdout == "out\n"
    assert caught.value.stderr == "err\n"
    assert caught.value.argv[0] == "sh"


def test_command_environment_is_the_guests(g: VMCraft, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMCRAFT_HOST_SECRET", "leaked")
    env = dict(line.split("=", 1) for line in g.command(["env"]).splitlines())
    assert "VMCRAFT_HOST_SECRET" not in env
    assert env["LANG"] == "C"
    assert env["PATH"].split(":")[:2] == ["/usr/local/sbin", "/usr/local/bin"]
    extra = g.command(["env"], env={"GRUB_DISABLE_OS_PROBER": "true"})
    assert "GRUB_DISABLE_OS_PROBER=true" in extra.splitlines()


def test_stdin_is_dev_null(g: VMCraft) -> None:
    start = time.monotonic()
    assert g.command(["cat"], timeout=20) == ""
    assert time.monotonic() - start < 20


# -- the host's mount table is the same afterwards, whatever happens ----------


def _success(g: VMCraft) -> None:
    g.command_with_mounts(["true"])


def _failure(g: VMCraft) -> None:
    with pytest.raises(CommandError):
        g.command_with_mounts(["false"])


def _timeout(g: VMCraft) -> None:
    start = time.monotonic()
    with pytest.raises(CommandTimeoutError):
        g.command_with_mounts(["sleep", "60"], timeout=0.5)
    assert time.monotonic() - start < 15


def _raise_inside_mounts(g: VMCraft, error: BaseException) -> None:
    with g.pseudofs():
        assert is_mountpoint(g.root / "proc")
        assert is_mountpoint(g.root / "sys")
        raise error


def _exception(g: VMCraft) -> None:
    with pytest.raises(ValueError, match="caller's own"):
        _raise_inside_mounts(g, ValueError("the caller's own error"))


def _keyboard_interrupt(g: VMCraft) -> None:
    with pytest.raises(KeyboardInterrupt):
        _raise_inside_mounts(g, KeyboardInterrupt())


def _real_sigint_during_command(g: VMCraft) -> None:
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            g.command_with_mounts(["sleep", "60"])
    finally:
        timer.cancel()


@pytest.mark.parametrize(
    "outcome",
    [_success, _failure, _timeout, _exception, _keyboard_interrupt, _real_sigint_during_command],
    ids=lambda f: f.__name__.strip("_"),
)
def test_mount_table_identical_before_and_after(g: VMCraft, outcome: object) -> None:
    before = mount_table()
    assert callable(outcome)
    outcome(g)
    assert mount_table() == before
    assert reaper.processes_rooted_in(g.root) == []


def test_process_left_running_is_ended_and_leaves_no_mount(g: VMCraft) -> None:
    before = mount_table()
    # One daemon sits in /proc (keeping it busy) and ignores SIGTERM.
    with capture_logs() as events:
        out = g.command_with_mounts(
            [
                "sh",
                "-c",
                "cd /proc && setsid sh -c \"trap '' TERM; touch /tmp/ready; exec sleep 300\" "
                "</dev/null >/dev/null 2>&1 & "
                "while ! test -e /tmp/ready; do sleep 0.05; done; echo $!",
            ]
        )
    daemon_pid = int(out.strip())
    reaped = {e["event"]: e["pids"] for e in events if e["event"].startswith("reaper.")}
    assert reaped == {"reaper.terminate": [daemon_pid], "reaper.kill": [daemon_pid]}
    assert mount_table() == before
    assert not os.path.exists(f"/proc/{daemon_pid}") or _is_zombie_or_other(daemon_pid, g.root)
    assert reaper.processes_rooted_in(g.root) == []


def _is_zombie_or_other(pid: int, root: Path) -> bool:
    try:
        return not os.readlink(f"/proc/{pid}/root").startswith(os.fspath(root))
    except OSError:
        return True


def test_busy_host_process_gets_retries_then_lazy_unmount(g: VMCraft) -> None:
    before = mount_table()
    holder: subprocess.Popen[bytes] | None = None
    try:
        with capture_logs() as events, g.pseudofs():
            # A host process (not in the chroot, so not ours to kill) whose
            # working directory is inside the bind-mounted /dev.
            holder = subprocess.Popen(["sleep", "60"], cwd=g.root / "dev")
        assert mount_table() == before
        lazy = [e for e in events if e["event"] == "pseudofs.lazy_unmount"]
        assert [e["target"] for e in lazy] == [os.fspath(g.root / "dev")]
        assert lazy[0]["log_level"] == "warning"
        assert holder.poll() is None, "a host process must not be killed"
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()


def test_already_mounted_proc_is_left_alone(g: VMCraft) -> None:
    proc = g.root / "proc"
    syscalls.mount("proc", os.fspath(proc), "proc", 0, None)
    try:
        ours = [e.mount_id for e in read_mountinfo() if e.mount_point == os.fspath(proc)]
        with g.pseudofs() as mounter:
            assert mounter.skipped == ["proc"]
            assert mounter.mounted == ["dev", "sys"]
        g.command_with_mounts(["test", "-e", "/proc/self/mountinfo"])
        after = [e.mount_id for e in read_mountinfo() if e.mount_point == os.fspath(proc)]
        assert after == ours
        assert not is_mountpoint(g.root / "dev")
        assert not is_mountpoint(g.root / "sys")
    finally:
        syscalls.umount(os.fspath(proc))


def test_nested_mounters_mount_once(g: VMCraft) -> None:
    before = mount_table()
    with g.pseudofs() as outer:
        assert outer.mounted == ["proc", "dev", "sys"]
        held = mount_table()
        for _ in range(3):
            g.command_with_mounts(["test", "-c", "/dev/null"])
            assert mount_table() == held
        with g.pseudofs() as inner:
            assert inner.mounted == []
            assert inner.skipped == ["proc", "dev", "sys"]
        assert mount_table() == held
    assert mount_table() == before


def test_held_mounts_serve_a_batch_without_remounting(g: VMCraft) -> None:
    before = mount_table()
    with capture_logs() as events, g.hold_mounts() as held:
        table = mount_table()
        for _ in range(8):
            g.command_with_mounts(["test", "-e", "/proc/self/mountinfo"])
            assert mount_table() == table
        # Asking for more than is held mounts just the extra, for that call.
        g.command_with_mounts(["test", "-d", "/dev/pts/"], extra=["dev/pts"])
        assert mount_table() == table
    assert held is not None, "a from_root handle holds the enhanced chroot's mounts"
    assert held.mounted == ["proc", "dev", "sys"]
    timings = [e for e in events if e["event"] == "command_with_mounts.timings"]
    assert len(timings) == 1
    assert timings[0]["mounted"] == ["dev/pts"]
    assert timings[0]["already_mounted"] == ["proc", "dev", "sys"]
    assert mount_table() == before


def test_mount_points_created_when_missing(g: VMCraft) -> None:
    for name in ("proc", "sys"):
        (g.root / name).rmdir()
    g.command_with_mounts(["test", "-d", "/sys/kernel"])
    assert (g.root / "proc").is_dir()
    assert (g.root / "sys").is_dir()


# -- a hostile guest ----------------------------------------------------------


@pytest.fixture
def sentinel(tmp_path: Path) -> Path:
    """A host directory outside the guest that a bad symlink points at."""
    path = tmp_path / "host-sentinel"
    path.mkdir()
    (path / "host-file").write_text("host data\n")
    return path


HOSTILE = ["absolute-symlink", "relative-symlink", "dotdot-symlink", "dangling-symlink", "file"]


@pytest.mark.parametrize("target", ["proc", "dev", "sys"])
@pytest.mark.parametrize("kind", HOSTILE)
def test_hostile_target_is_refused_and_host_untouched(
    g: VMCraft, sentinel: Path, tmp_path: Path, target: str, kind: str
) -> None:
    path = g.root / target
    if path.is_dir():
        path.rmdir()
    must_not_exist = tmp_path / "must-not-be-created"
    match kind:
        case "absolute-symlink":
            path.symlink_to(sentinel)
        case "relative-symlink":
            path.symlink_to("../host-sentinel")
        case "dotdot-symlink":
            path.symlink_to("../../..")
        case "dangling-symlink":
            path.symlink_to(must_not_exist)
        case "file":
            path.write_text("not a directory\n")
    before = mount_table()
    with pytest.raises(UnsafePathError, match=f"/{target} in the guest is"):
        g.command_with_mounts(["touch", "/command-ran"])
    assert mount_table() == before
    assert not (g.root / "command-ran").exists()
    assert not must_not_exist.exists()
    assert sorted(p.name for p in sentinel.iterdir()) == ["host-file"]
    assert not is_mountpoint(sentinel)
    assert stat.S_ISLNK(path.lstat().st_mode) or path.is_file()


def test_new_mounts_are_private_even_when_host_dev_is_shared(g: VMCraft) -> None:
    syscalls.mount(None, "/dev", None, MS_SHARED)
    try:
        with g.pseudofs():
            ours = {e.mount_point: e for e in read_mountinfo()}
            for name in ("proc", "dev", "sys"):
                assert ours[os.fspath(g.root / name)].optional == ()
        host_dev = {e.mount_point for e in read_mountinfo() if e.mount_point.startswith("/dev")}
        assert {"/dev", "/dev/pts", "/dev/shm"} <= host_dev
    finally:
        syscalls.mount(None, "/dev", None, syscalls.MS_PRIVATE)


def test_extra_targets_dev_pts_and_run(g: VMCraft) -> None:
    before = mount_table()
    with g.pseudofs(extra=["dev/pts", "run"]) as mounter:
        assert mounter.mounted == ["proc", "dev", "sys", "dev/pts", "run"]
        table = {e.mount_point: e for e in read_mountinfo()}
        assert table[os.fspath(g.root / "run")].fstype == "tmpfs"
        assert table[os.fspath(g.root / "dev/pts")].fstype == "devpts"
        g.command_with_mounts(["sh", "-c", "touch /run/written && test -d /dev/pts"])
    assert mount_table() == before
    assert not (g.root / "run" / "written").exists()


def test_efivarfs_is_never_mounted_by_default(g: VMCraft) -> None:
    with g.pseudofs():
        assert not any(e.fstype == "efivarfs" for e in read_mountinfo())
        assert not is_mountpoint(g.root / "sys/firmware/efi/efivars")


# -- timeouts -----------------------------------------------------------------


def test_timeout_kills_the_whole_tree(g: VMCraft) -> None:
    start = time.monotonic()
    with pytest.raises(CommandTimeoutError) as caught:
        g.command(["sh", "-c", "sleep 100 & setsid sleep 100 & sleep 100; wait"], timeout=0.5)
    assert caught.value.timeout == 0.5
    assert time.monotonic() - start < 15
    assert reaper.processes_rooted_in(g.root) == []


# -- GRUB routing through real mounts -------------------------------------------

FAKE_GRUB_MKCONFIG = """#!/bin/sh
# Stands in for grub-mkconfig: it needs what the real one needs to find /.
if ! test -e /proc/self/mountinfo || ! test -c /dev/null; then
    echo "error: cannot find a device for / (is /dev mounted?)." >&2
    exit 1
fi
echo "menuentry 'Debian GNU/Linux' {}" > "$2"
"""


class _OldHandle:
    """A handle without command_with_mounts, as older libraries have."""

    def __init__(self, g: VMCraft) -> None:
        self._g = g

    def command_quiet(self, cmd: list[str]) -> str:
        return self._g.command_quiet(cmd)


def test_grub_fixer_routes_through_real_mounts(g: VMCraft) -> None:
    tool = g.root / "usr/sbin/grub-mkconfig"
    tool.write_text(FAKE_GRUB_MKCONFIG)
    tool.chmod(0o755)
    (g.root / "boot/grub").mkdir(parents=True, exist_ok=True)
    cmd = ["grub-mkconfig", "-o", "/boot/grub/grub.cfg"]

    fallback = GrubFixer(_OldHandle(g)).regenerate([cmd])
    assert fallback.to_dict() == {
        "attempts": [
            {
                "cmd": cmd,
                "ok": False,
                "out": "error: cannot find a device for / (is /dev mounted?).",
            }
        ],
        "success": False,
    }

    report = GrubFixer(g).regenerate([["grub2-mkconfig", "-o", "/boot/grub2/grub.cfg"], cmd])
    assert [a.ok for a in report.attempts] == [False, True]
    assert report.success
    assert "menuentry" in (g.root / "boot/grub/grub.cfg").read_text()


# -- the two already-mounted checks agree ---------------------------------------


@pytest.fixture
def probe_cases(tmp_path: Path) -> Iterator[dict[str, tuple[Path, bool]]]:
    made: list[str] = []

    def mount(source: str, target: Path, fstype: str | None, flags: int = 0) -> None:
        target.mkdir(parents=True, exist_ok=True)
        syscalls.mount(source, os.fspath(target), fstype, flags, None)
        made.append(os.fspath(target))

    plain = tmp_path / "plain"
    plain.mkdir()
    mount("tmpfs", tmp_path / "mounted", "tmpfs")
    (tmp_path / "bind-src").mkdir()
    mount(os.fspath(tmp_path / "bind-src"), tmp_path / "bind-same-fs", None, syscalls.MS_BIND)
    mount("tmpfs", tmp_path / "with space", "tmpfs")
    (tmp_path / "link-to-mounted").symlink_to(tmp_path / "mounted")
    (tmp_path / "link-to-plain").symlink_to(plain)
    cases = {
        "mounted": (tmp_path / "mounted", True),
        "not-mounted": (plain, False),
        "bind-of-same-fs": (tmp_path / "bind-same-fs", True),
        "path-with-spaces": (tmp_path / "with space", True),
        "symlink-to-mountpoint": (tmp_path / "link-to-mounted", True),
        "symlink-to-plain-dir": (tmp_path / "link-to-plain", False),
        "missing": (tmp_path / "missing", False),
    }
    try:
        yield cases
    finally:
        for target in reversed(made):
            syscalls.umount(target)


def test_mountpoint_and_mountinfo_checks_agree(
    probe_cases: dict[str, tuple[Path, bool]],
) -> None:
    command, inproc = MountpointCommandProbe(), MountinfoProbe()
    answers = {
        name: (command.is_mounted(path), inproc.is_mounted(path), expected)
        for name, (path, expected) in probe_cases.items()
    }
    assert answers == {name: (exp, exp, exp) for name, (_, exp) in probe_cases.items()}


def test_binds_are_private_before_they_are_attached(
    g: VMCraft, mocker: pytest_mock.MockerFixture
) -> None:
    """On kernels with the new mount API the clone is private while still detached."""
    spy = mocker.spy(syscalls, "bind_private")
    mounts = mocker.spy(syscalls, "mount")
    with g.pseudofs():
        pass
    assert [c.args[0] for c in spy.call_args_list] == ["/proc", "/dev", "/sys"]
    assert spy.spy_exception is None
    # mount(2) is not asked to bind at all.
    assert not [c for c in mounts.call_args_list if c.args[3] & syscalls.MS_BIND]
