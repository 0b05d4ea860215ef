"""The enhanced chroot as a caller sees it: VMCraft.command_with_mounts and GRUB routing.

No root and no real mount: the mount syscalls, the mount probe, the reaper and
the command runner are replaced by the fake kernel of :mod:`tests.unit.fakes`,
while the guest root is a real directory so that safepath really opens (and
creates) ``proc``, ``dev`` and ``sys``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from pytest_mock import MockerFixture
from structlog.testing import capture_logs

import vmcraft
from vmcraft.chroot.run import CommandResult
from vmcraft.fixers.bootloader.grub import GRUB_COMMANDS, is_grub_command, run_guest_command
from vmcraft.mount import syscalls
from vmcraft.mount.pseudofs import guest_root_path

from .fakes import FakeKernel, install_fake_kernel

GRUB_NAMES = (
    "grub2-mkconfig",
    "grub-mkconfig",
    "update-grub",
    "update-grub2",
    "grub2-install",
    "grub-install",
    "grub2-probe",
    "grub-probe",
)
MKCONFIG = ["grub2-mkconfig", "-o", "/boot/grub2/grub.cfg"]
NO_DEVICE = "error: cannot find a device for / (is /dev mounted?)."


@pytest.fixture
def guest(tmp_path: Path) -> Path:
    """A bare guest root: no proc, dev or sys yet."""
    root = tmp_path / "guest"
    root.mkdir()
    return guest_root_path(root)


@pytest.fixture
def kernel(mocker: MockerFixture, guest: Path) -> FakeKernel:
    return install_fake_kernel(mocker, guest)


@pytest.fixture
def g(guest: Path, kernel: FakeKernel) -> vmcraft.VMCraft:
    return vmcraft.VMCraft.from_root(guest)


def failing(argv: list[str], stderr: str = NO_DEVICE, returncode: int = 1) -> CommandResult:
    return CommandResult(argv, returncode, "", stderr)


# (1) --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda h: h.command(["true"]), id="command"),
        pytest.param(lambda h: h.command_with_mounts(["true"]), id="command_with_mounts"),
        pytest.param(lambda h: h.command_quiet(["true"]), id="command_quiet"),
    ],
)
def test_not_launched_raises_not_launched_error(
    kernel: FakeKernel, call: Callable[[vmcraft.VMCraft], object]
) -> None:
    handle = vmcraft.VMCraft()
    with pytest.raises(vmcraft.NotLaunchedError, match="no guest root"):
        call(handle)
    # libguestfs callers catch RuntimeError: it must catch this too.
    with pytest.raises(RuntimeError):
        call(handle)
    assert issubclass(vmcraft.NotLaunchedError, RuntimeError)
    assert kernel.events == []


# (2) --------------------------------------------------------------------------


def test_binds_proc_dev_sys_from_host_in_that_order(g: vmcraft.VMCraft, kernel: FakeKernel) -> None:
    g.command_with_mounts(MKCONFIG)

    assert kernel.binds() == [("proc", "/proc"), ("dev", "/dev"), ("sys", "/sys")]
    for call in kernel.mount.call_args_list:
        target = call.args[1]
        assert target.startswith("/proc/self/fd/")
    bind_calls = [c for c in kernel.mount.call_args_list if c.args[0] is not None]
    assert [c.args[0] for c in bind_calls] == ["/proc", "/dev", "/sys"]
    for call in bind_calls:
        _source, _target, fstype, flags = call.args[:4]
        assert fstype is None
        assert flags & syscalls.MS_BIND
    # Each bind is taken out of the host's peer group right after it is made.
    assert [e for e in kernel.events if e[0] in ("mount", "private")] == [
        ("mount", "proc", "/proc", None, syscalls.MS_BIND),
        ("private", "proc"),
        ("mount", "dev", "/dev", None, syscalls.MS_BIND),
        ("private", "dev"),
        ("mount", "sys", "/sys", None, syscalls.MS_BIND),
        ("private", "sys"),
    ]
    # The command ran with all three in place.
    runs = [e for e in kernel.events if e[0] == "run"]
    assert runs == [("run", MKCONFIG, ["dev", "proc", "sys"])]


# (3) --------------------------------------------------------------------------


@pytest.mark.parametrize("already", [["proc"], ["dev", "sys"], ["proc", "dev", "sys"]])
def test_already_mounted_target_is_neither_mounted_nor_unmounted(
    g: vmcraft.VMCraft, kernel: FakeKernel, guest: Path, already: list[str]
) -> None:
    for name in already:
        (guest / name).mkdir()
        kernel.table.add(guest / name)

    g.command_with_mounts(MKCONFIG)

    bound = [target for target, _ in kernel.binds()]
    expected = [n for n in ("proc", "dev", "sys") if n not in already]
    assert bound == expected
    assert kernel.unmounts() == list(reversed(expected))
    for name in already:
        assert (guest / name) in kernel.table  # still there: not ours to take down


# (4) --------------------------------------------------------------------------


def test_cleanup_after_success(g: vmcraft.VMCraft, kernel: FakeKernel) -> None:
    assert g.command_with_mounts(MKCONFIG) == "ok\n"

    assert sorted(kernel.unmounts()) == ["dev", "proc", "sys"]
    assert kernel.table == set()
    # Nothing is taken down before the command has finished, and processes
    # left in the guest are ended before the mounts come down.
    assert kernel.kinds()[-5:] == ["run", "reap", "umount", "umount", "umount"]


# (5) --------------------------------------------------------------------------


def test_cleanup_when_command_fails(g: vmcraft.VMCraft, kernel: FakeKernel) -> None:
    kernel.result = failing(MKCONFIG)

    with pytest.raises(vmcraft.CommandError) as caught:
        g.command_with_mounts(MKCONFIG)

    assert caught.value.returncode == 1
    assert caught.value.stderr == NO_DEVICE
    assert sorted(kernel.unmounts()) == ["dev", "proc", "sys"]
    assert kernel.table == set()


def test_cleanup_when_runner_raises(g: vmcraft.VMCraft, kernel: FakeKernel) -> None:
    kernel.run_in_root.side_effect = vmcraft.CommandTimeoutError(MKCONFIG, 5, "", "")

    with pytest.raises(vmcraft.CommandTimeoutError):
        g.command_with_mounts(MKCONFIG)

    assert sorted(kernel.unmounts()) == ["dev", "proc", "sys"]
    assert kernel.table == set()


# (6) --------------------------------------------------------------------------


def test_unmounts_in_reverse_order(g: vmcraft.VMCraft, kernel: FakeKernel, guest: Path) -> None:
    g.command_with_mounts(MKCONFIG)

    assert kernel.unmounts() == ["sys", "dev", "proc"]
    assert [c.args for c in kernel.umount.call_args_list] == [
        (str(guest / "sys"), syscalls.UMOUNT_NOFOLLOW),
        (str(guest / "dev"), syscalls.UMOUNT_NOFOLLOW),
        (str(guest / "proc"), syscalls.UMOUNT_NOFOLLOW),
    ]


# (7) --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda h: h.command_quiet(MKCONFIG), id="command_quiet"),
        pytest.param(lambda h: h.command_with_mounts(MKCONFIG, quiet=True), id="with_mounts"),
    ],
)
def test_quiet_still_raises_but_logs_at_debug(
    g: vmcraft.VMCraft, kernel: FakeKernel, call: Callable[[vmcraft.VMCraft], object]
) -> None:
    kernel.result = failing(MKCONFIG)

    with capture_logs() as logs, pytest.raises(vmcraft.CommandError):
        call(g)

    failed = [e for e in logs if e["event"] == "command.failed"]
    assert [e["log_level"] for e in failed] == ["debug"]
    assert not [e for e in logs if e["log_level"] in ("warning", "error")]


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda h: h.command(MKCONFIG), id="command"),
        pytest.param(lambda h: h.command_with_mounts(MKCONFIG), id="with_mounts"),
    ],
)
def test_not_quiet_logs_failure_as_warning(
    g: vmcraft.VMCraft, kernel: FakeKernel, call: Callable[[vmcraft.VMCraft], object]
) -> None:
    kernel.result = failing(MKCONFIG)

    with capture_logs() as logs, pytest.raises(vmcraft.CommandError):
        call(g)

    failed = [e for e in logs if e["event"] == "command.failed"]
    assert [e["log_level"] for e in failed] == ["warning"]
    assert NO_DEVICE in failed[0]["error"]


# (8) --------------------------------------------------------------------------


def test_mount_points_created_when_missing(
    g: vmcraft.VMCraft, kernel: FakeKernel, guest: Path
) -> None:
    assert sorted(p.name for p in guest.iterdir()) == []

    g.command_with_mounts(MKCONFIG)

    for name in ("proc", "dev", "sys"):
        made = guest / name
        assert made.is_dir()
        assert not made.is_symlink()


# (9) --------------------------------------------------------------------------


def test_stdout_is_returned(g: vmcraft.VMCraft, kernel: FakeKernel) -> None:
    kernel.result = CommandResult(MKCONFIG, 0, "Generating grub configuration file ...\ndone\n", "")

    assert g.command_with_mounts(MKCONFIG) == "Generating grub configuration file ...\ndone\n"
    assert g.command(["cat", "/etc/hostname"]) == "Generating grub configuration file ...\ndone\n"


def test_timings_are_logged(g: vmcraft.VMCraft, kernel: FakeKernel) -> None:
    with capture_logs() as logs:
        g.command_with_mounts(MKCONFIG)

    (summary,) = [e for e in logs if e["event"] == "command_with_mounts.timings"]
    assert summary["argv"] == MKCONFIG
    assert summary["mounted"] == ["proc", "dev", "sys"]
    assert summary["already_mounted"] == []
    for key in ("mount_proc_ms", "mount_dev_ms", "mount_sys_ms", "unmount_ms", "total_ms"):
        assert isinstance(summary[key], float)


# (10) -------------------------------------------------------------------------


def test_grub_command_goes_through_command_with_mounts(mocker: MockerFixture) -> None:
    handle = mocker.create_autospec(vmcraft.VMCraft, instance=True)
    handle.command_with_mounts.return_value = "done\n"

    attempt = run_guest_command(handle, MKCONFIG)

    handle.command_with_mounts.assert_called_once_with(MKCONFIG, quiet=True)
    handle.command_quiet.assert_not_called()
    assert attempt.ok
    assert attempt.out == "done"


def test_grub_command_on_real_handle_gets_mounts(g: vmcraft.VMCraft, kernel: FakeKernel) -> None:
    attempt = run_guest_command(g, ["/usr/sbin/grub2-mkconfig", "-o", "/boot/grub2/grub.cfg"])

    assert attempt.ok
    assert [t for t, _ in kernel.binds()] == ["proc", "dev", "sys"]
    assert kernel.unmounts() == ["sys", "dev", "proc"]


# (11) -------------------------------------------------------------------------


def test_grub_command_set_is_exactly_the_eight() -> None:
    assert set(GRUB_NAMES) == GRUB_COMMANDS


@pytest.mark.parametrize("name", GRUB_NAMES)
@pytest.mark.parametrize("prefix", ["", "/usr/sbin/", "/sbin/", "/usr/bin/"])
def test_grub_commands_detected(name: str, prefix: str) -> None:
    assert is_grub_command([prefix + name, "--version"])
    assert is_grub_command([prefix + name])


@pytest.mark.parametrize(
    "cmd",
    [
        ["grub-editenv", "list"],
        ["grub2-mkconfig-extra"],
        ["/usr/sbin/grub2-mkconfig-extra"],
        ["grub2-mkconfig.sh"],
        ["mkconfig"],
        ["grub"],
        ["dracut", "-f"],
        ["sh", "-c", "grub2-mkconfig -o /boot/grub2/grub.cfg"],
        ["/usr/sbin/grub2-mkconfig/"],
        [""],
        [],
    ],
)
def test_non_grub_commands_not_detected(cmd: list[str]) -> None:
    assert not is_grub_command(cmd)


# (12) -------------------------------------------------------------------------


def test_other_commands_use_command_quiet(mocker: MockerFixture) -> None:
    handle = mocker.create_autospec(vmcraft.VMCraft, instance=True)
    handle.command_quiet.return_value = "4.19.0\n"

    attempt = run_guest_command(handle, ["uname", "-r"])

    handle.command_quiet.assert_called_once_with(["uname", "-r"])
    handle.command_with_mounts.assert_not_called()
    assert attempt.ok
    assert attempt.out == "4.19.0"


def test_other_commands_on_real_handle_get_no_mounts(
    g: vmcraft.VMCraft, kernel: FakeKernel
) -> None:
    attempt = run_guest_command(g, ["dracut", "-f"])

    assert attempt.ok
    assert kernel.mount.call_count == 0
    assert kernel.umount.call_count == 0
    assert kernel.kinds() == ["run"]


# (13) -------------------------------------------------------------------------


class LibguestfsLike:
    """A foreign handle: command_quiet only, as libguestfs's has."""

    def __init__(self, out: str = "done\n") -> None:
        self.out = out
        self.calls: list[list[str]] = []

    def command_quiet(self, cmd: list[str]) -> str:
        self.calls.append(cmd)
        return self.out


@pytest.mark.parametrize("name", GRUB_NAMES)
def test_handle_without_command_with_mounts_falls_back_to_command_quiet(name: str) -> None:
    handle = LibguestfsLike()
    assert not hasattr(handle, "command_with_mounts")

    attempt = run_guest_command(handle, [name])

    assert handle.calls == [[name]]
    assert attempt.ok
    assert attempt.out == "done"
