"""PseudoFSMounter's error paths, nesting and target selection, on a fake kernel."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import tenacity
from pytest_mock import MockerFixture
from structlog.testing import capture_logs

import vmcraft
from vmcraft.mount import syscalls, unmount
from vmcraft.mount.pseudofs import (
    DEFAULT_TARGETS,
    DEV,
    DEV_PTS,
    EFIVARS,
    PROC,
    RUN,
    SYS,
    PseudoFS,
    PseudoFSMounter,
    guest_root_path,
    resolve_targets,
)

from .fakes import FakeKernel, install_fake_kernel

NOFOLLOW = syscalls.UMOUNT_NOFOLLOW
LAZY = syscalls.MNT_DETACH | syscalls.UMOUNT_NOFOLLOW


@pytest.fixture
def guest(tmp_path: Path) -> Path:
    root = tmp_path / "guest"
    root.mkdir()
    return guest_root_path(root)


@pytest.fixture
def kernel(mocker: MockerFixture, guest: Path) -> FakeKernel:
    fake = install_fake_kernel(mocker, guest)
    mocker.patch("vmcraft.mount.unmount.WAIT", tenacity.wait_none())
    return fake


def oserror(code: int, path: str = "") -> OSError:
    return OSError(code, os.strerror(code), path)


# -- mount failures ---------------------------------------------------------


def test_second_mount_failing_unmounts_the_first_only(guest: Path, kernel: FakeKernel) -> None:
    def refuse_dev(source: str | None, where: str, flags: int) -> None:
        if where == "dev" and flags & syscalls.MS_BIND:
            raise oserror(errno.EPERM)

    kernel.mount_hook = refuse_dev

    with (
        pytest.raises(vmcraft.MountError, match="cannot mount /dev") as caught,
        PseudoFSMounter(guest),
    ):
        pytest.fail("the block must not run when a mount failed")

    assert isinstance(caught.value.__cause__, OSError)
    assert caught.value.__cause__.errno == errno.EPERM
    assert kernel.mounts() == ["proc"]
    assert kernel.unmounts() == ["proc"]
    assert [c.args for c in kernel.umount.call_args_list] == [(str(guest / "proc"), NOFOLLOW)]
    assert kernel.run_in_root.call_count == 0
    # Nothing ran in the guest, so there is nothing to reap.
    assert kernel.reap.call_count == 0


def test_make_private_failing_detaches_that_mount(guest: Path, kernel: FakeKernel) -> None:
    def refuse_private_sys(source: str | None, where: str, flags: int) -> None:
        if where == "sys" and flags & syscalls.MS_PRIVATE:
            raise oserror(errno.EINVAL)

    kernel.mount_hook = refuse_private_sys

    with (
        pytest.raises(vmcraft.MountError, match=r"cannot make .*/sys private"),
        PseudoFSMounter(guest),
    ):
        pytest.fail("the block must not run when a mount failed")

    assert kernel.mounts() == ["proc", "dev", "sys"]
    # sys was on the stack before it was made private: all three come down
    # in reverse order.
    assert [(e[1], e[2]) for e in kernel.events if e[0] == "umount"] == [
        ("sys", NOFOLLOW),
        ("dev", NOFOLLOW),
        ("proc", NOFOLLOW),
    ]


def test_mount_id_failure_does_not_leak_the_mount(
    guest: Path, kernel: FakeKernel, mocker: MockerFixture
) -> None:
    mocker.patch(
        "vmcraft.mount.pseudofs.syscalls.mount_id_of_fd",
        side_effect=[100, OSError("no mnt_id in /proc/self/fdinfo/7")],
    )

    with pytest.raises(vmcraft.MountError), PseudoFSMounter(guest):
        pytest.fail("the block must not run when a mount failed")

    # Today dev stays mounted: only proc is unmounted.
    assert kernel.mounts() == ["proc", "dev"]
    assert sorted(kernel.unmounts()) == ["dev", "proc"]


# -- errors inside the block ------------------------------------------------


@pytest.mark.parametrize("error", [ValueError("boom"), KeyboardInterrupt()])
def test_error_in_block_unmounts_all_and_propagates(
    guest: Path, kernel: FakeKernel, error: BaseException
) -> None:
    seen: list[str] = []

    def block() -> None:
        with PseudoFSMounter(guest) as mounter:
            seen.extend(mounter.mounted)
            raise error

    with pytest.raises(type(error)) as caught:
        block()

    assert seen == ["proc", "dev", "sys"]

    assert caught.value is error
    assert kernel.unmounts() == ["sys", "dev", "proc"]
    assert kernel.table == set()
    assert kernel.reap.call_count == 1
    assert kernel.kinds().index("reap") < kernel.kinds().index("umount")


# -- cleanup failures -------------------------------------------------------


def refuse_umount_dev(where: str, flags: int) -> None:
    if where == "dev":
        raise oserror(errno.EPERM, where)


def test_cleanup_failure_never_hides_the_block_error(guest: Path, kernel: FakeKernel) -> None:
    kernel.umount_hook = refuse_umount_dev

    with (
        capture_logs() as logs,
        pytest.raises(ValueError, match="boom") as caught,
        PseudoFSMounter(guest),
    ):
        raise ValueError("boom")

    notes = getattr(caught.value, "__notes__", [])
    assert len(notes) == 1
    assert "cleanup after this error also failed" in notes[0]
    assert "cannot unmount" in notes[0]
    # The failure of dev does not stop proc from coming down.
    assert kernel.unmounts() == ["sys", "proc"]
    failed = [e for e in logs if e["event"] == "pseudofs.cleanup_failed"]
    assert [e["log_level"] for e in failed] == ["error"]


def test_cleanup_failure_without_block_error_raises_unmount_error(
    guest: Path, kernel: FakeKernel
) -> None:
    kernel.umount_hook = refuse_umount_dev

    with (
        pytest.raises(vmcraft.UnmountError, match=r"cannot unmount .*/dev") as caught,
        PseudoFSMounter(guest),
    ):
        pass

    assert isinstance(caught.value.__cause__, OSError)
    assert caught.value.__cause__.errno == errno.EPERM
    assert kernel.unmounts() == ["sys", "proc"]
    # EPERM is not worth retrying, nor a reason to detach lazily.
    assert [e for e in kernel.events if e[0] == "umount-failed"] == [
        ("umount-failed", "dev", NOFOLLOW, errno.EPERM)
    ]


def test_not_mounted_any_more_counts_as_unmounted(guest: Path, kernel: FakeKernel) -> None:
    def gone(where: str, flags: int) -> None:
        if where == "dev":
            raise oserror(errno.EINVAL, where)

    kernel.umount_hook = gone

    with PseudoFSMounter(guest):
        pass

    assert kernel.unmounts() == ["sys", "proc"]


# -- busy targets -----------------------------------------------------------


def test_busy_unmount_is_retried_then_succeeds(guest: Path, kernel: FakeKernel) -> None:
    busy = iter([errno.EBUSY, errno.EBUSY])

    def busy_twice(where: str, flags: int) -> None:
        if where == "sys":
            code = next(busy, None)
            if code is not None:
                raise oserror(code, where)

    kernel.umount_hook = busy_twice

    with capture_logs() as logs, PseudoFSMounter(guest):
        pass

    sys_calls = [c.args for c in kernel.umount.call_args_list if c.args[0].endswith("/sys")]
    assert sys_calls == [(str(guest / "sys"), NOFOLLOW)] * 3
    assert kernel.unmounts() == ["sys", "dev", "proc"]
    assert not [e for e in logs if e["event"] == "pseudofs.lazy_unmount"]


def test_busy_forever_falls_back_to_lazy_unmount(guest: Path, kernel: FakeKernel) -> None:
    def busy_unless_detached(where: str, flags: int) -> None:
        if where == "sys" and not flags & syscalls.MNT_DETACH:
            raise oserror(errno.EBUSY, where)

    kernel.umount_hook = busy_unless_detached

    with capture_logs() as logs, PseudoFSMounter(guest):
        pass

    sys_calls = [c.args[1] for c in kernel.umount.call_args_list if c.args[0].endswith("/sys")]
    # Retried while busy (with back-off, zero here), then detached lazily once.
    assert len(sys_calls) > unmount.ATTEMPTS
    assert sys_calls[:-1] == [NOFOLLOW] * (len(sys_calls) - 1)
    assert sys_calls[-1] == LAZY
    assert kernel.unmounts() == ["sys", "dev", "proc"]
    lazy = [e for e in logs if e["event"] == "pseudofs.lazy_unmount"]
    assert len(lazy) == 1
    assert lazy[0]["log_level"] == "warning"
    assert lazy[0]["target"] == str(guest / "sys")


def test_lazy_unmount_failing_raises_unmount_error(guest: Path, kernel: FakeKernel) -> None:
    def always_busy(where: str, flags: int) -> None:
        if where == "sys":
            raise oserror(errno.EBUSY if not flags & syscalls.MNT_DETACH else errno.EPERM, where)

    kernel.umount_hook = always_busy

    with pytest.raises(vmcraft.UnmountError, match="even lazily"), PseudoFSMounter(guest):
        pass

    assert kernel.unmounts() == ["dev", "proc"]


# -- nesting ----------------------------------------------------------------


def test_nested_mounter_mounts_and_unmounts_nothing(guest: Path, kernel: FakeKernel) -> None:
    with PseudoFSMounter(guest) as outer:
        assert outer.mounted == ["proc", "dev", "sys"]
        events_before_inner = len(kernel.events)
        with PseudoFSMounter(guest) as inner:
            assert inner.mounted == []
            assert inner.skipped == ["proc", "dev", "sys"]
        # The inner mounter made no syscall and ended no process.
        assert kernel.events[events_before_inner:] == []
        assert kernel.table == {guest / "proc", guest / "dev", guest / "sys"}

    assert kernel.unmounts() == ["sys", "dev", "proc"]
    assert kernel.reap.call_count == 1


def test_mounter_is_not_reentrant(guest: Path, kernel: FakeKernel) -> None:
    mounter = PseudoFSMounter(guest)
    with mounter, pytest.raises(RuntimeError, match="not reentrant"):
        mounter.__enter__()
    assert kernel.unmounts() == ["sys", "dev", "proc"]


def test_mounter_can_be_used_again_after_exit(guest: Path, kernel: FakeKernel) -> None:
    mounter = PseudoFSMounter(guest)
    with mounter:
        pass
    with mounter:
        assert mounter.mounted == ["proc", "dev", "sys"]
    assert kernel.mounts() == ["proc", "dev", "sys"] * 2
    assert kernel.unmounts() == ["sys", "dev", "proc"] * 2


def test_stacked_mount_is_swept(guest: Path, kernel: FakeKernel, mocker: MockerFixture) -> None:
    # After the normal unmounts, the table still shows our proc (id 100):
    # something was stacked on it, so it is detached until gone.
    mocker.patch("vmcraft.mount.pseudofs.mount_ids", side_effect=[{100, 1}, {1}])

    with capture_logs() as logs, PseudoFSMounter(guest):
        pass

    assert [(e[1], e[2]) for e in kernel.events if e[0] == "umount"] == [
        ("sys", NOFOLLOW),
        ("dev", NOFOLLOW),
        ("proc", NOFOLLOW),
        ("proc", LAZY),
    ]
    assert [e["target"] for e in logs if e["event"] == "pseudofs.stacked_mount"] == [
        str(guest / "proc")
    ]


def test_unsweepable_mount_raises_unmount_error(
    guest: Path, kernel: FakeKernel, mocker: MockerFixture
) -> None:
    mocker.patch("vmcraft.mount.pseudofs.mount_ids", return_value={101})

    with pytest.raises(vmcraft.UnmountError, match="still present"), PseudoFSMounter(guest):
        pass


# -- target selection -------------------------------------------------------


def test_default_targets_are_proc_dev_sys() -> None:
    assert DEFAULT_TARGETS == (PROC, DEV, SYS)
    assert all(fs.is_bind for fs in DEFAULT_TARGETS)
    assert [fs.source for fs in DEFAULT_TARGETS] == ["/proc", "/dev", "/sys"]
    assert resolve_targets(()) == DEFAULT_TARGETS


def test_resolve_targets_keeps_the_order_given() -> None:
    assert resolve_targets(["dev/pts", "run"]) == (PROC, DEV, SYS, DEV_PTS, RUN)
    assert resolve_targets(["run", "dev/pts"]) == (PROC, DEV, SYS, RUN, DEV_PTS)


def test_resolve_targets_accepts_slashes_specs_and_duplicates() -> None:
    assert resolve_targets(["/dev/pts/", "dev/pts", DEV_PTS]) == (PROC, DEV, SYS, DEV_PTS)
    assert resolve_targets([PROC, SYS]) == DEFAULT_TARGETS
    custom = PseudoFS("boot/efi", "/boot/efi")
    assert resolve_targets([custom]) == (*DEFAULT_TARGETS, custom)


@pytest.mark.parametrize("name", ["tmp", "dev/shm", "efivars", "sys/firmware", ""])
def test_resolve_targets_refuses_unknown_names(name: str) -> None:
    with pytest.raises(ValueError, match="unknown pseudo-filesystem"):
        resolve_targets([name])


def test_resolve_targets_refuses_spec_leaving_the_root() -> None:
    with pytest.raises(vmcraft.UnsafePathError):
        resolve_targets([PseudoFS("../etc", "/etc")])


def test_run_is_a_private_tmpfs_not_the_hosts_run() -> None:
    assert not RUN.is_bind
    assert RUN.fstype == "tmpfs"
    assert RUN.source != "/run"


def test_efivarfs_only_when_named() -> None:
    assert EFIVARS not in DEFAULT_TARGETS
    assert all(fs.fstype != "efivarfs" for fs in DEFAULT_TARGETS)
    assert EFIVARS not in resolve_targets(["dev/pts", "run"])
    assert resolve_targets(["efivarfs"])[-1] == EFIVARS
    assert resolve_targets(["sys/firmware/efi/efivars"])[-1] == EFIVARS


def test_default_mounter_never_mounts_efivarfs(guest: Path, kernel: FakeKernel) -> None:
    with PseudoFSMounter(guest, extra=["dev/pts", "run"]) as mounter:
        assert mounter.mounted == ["proc", "dev", "sys", "dev/pts", "run"]

    fstypes = [e[3] for e in kernel.events if e[0] == "mount"]
    assert "efivarfs" not in fstypes
    assert not (guest / "sys" / "firmware").exists()


def test_extras_mounted_after_defaults_and_unmounted_first(guest: Path, kernel: FakeKernel) -> None:
    with PseudoFSMounter(guest, extra=["dev/pts", "run"]):
        pass

    assert [e[1:] for e in kernel.events if e[0] == "mount"] == [
        ("proc", "/proc", None, syscalls.MS_BIND),
        ("dev", "/dev", None, syscalls.MS_BIND),
        ("sys", "/sys", None, syscalls.MS_BIND),
        ("dev/pts", "/dev/pts", None, syscalls.MS_BIND),
        ("run", "tmpfs", "tmpfs", syscalls.MS_NOSUID | syscalls.MS_NODEV),
    ]
    assert kernel.unmounts() == ["run", "dev/pts", "sys", "dev", "proc"]


def test_efivarfs_mount_point_is_not_created(guest: Path, kernel: FakeKernel) -> None:
    # Only bind and tmpfs targets get their directory made: a guest without
    # sys/firmware/efi/efivars is not an EFI guest.
    with (
        pytest.raises(vmcraft.UnsafePathError, match="does not exist"),
        PseudoFSMounter(guest, extra=["efivarfs"]),
    ):
        pytest.fail("the block must not run")

    assert kernel.unmounts() == ["sys", "dev", "proc"]


def test_guest_symlink_target_is_refused_before_any_mount(guest: Path, kernel: FakeKernel) -> None:
    (guest / "proc").symlink_to("/etc")

    with pytest.raises(vmcraft.UnsafePathError, match="symbolic link"), PseudoFSMounter(guest):
        pytest.fail("the block must not run")

    assert kernel.events == []


# -- the guest root itself --------------------------------------------------


def test_guest_root_path_refuses_host_root() -> None:
    with pytest.raises(vmcraft.GuestRootError, match="host's own root"):
        guest_root_path("/")


def test_guest_root_path_refuses_symlink_to_host_root(tmp_path: Path) -> None:
    link = tmp_path / "root-link"
    link.symlink_to("/")
    with pytest.raises(vmcraft.GuestRootError):
        guest_root_path(link)


def test_guest_root_path_refuses_a_file(tmp_path: Path) -> None:
    file = tmp_path / "disk.img"
    file.write_bytes(b"")
    with pytest.raises(vmcraft.GuestRootError, match="not a directory"):
        guest_root_path(file)


def test_guest_root_path_refuses_missing_dir(tmp_path: Path) -> None:
    with pytest.raises(vmcraft.GuestRootError):
        guest_root_path(tmp_path / "missing")


def test_guest_root_path_is_canonical(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    assert guest_root_path(tmp_path / "link") == Path(os.path.realpath(real))
    assert guest_root_path(str(real)) == Path(os.path.realpath(real))


def test_mounter_refuses_host_root(kernel: FakeKernel) -> None:
    with pytest.raises(vmcraft.GuestRootError):
        PseudoFSMounter("/")
    assert kernel.events == []


# -- timings ----------------------------------------------------------------


def test_timings_cover_each_phase(guest: Path, kernel: FakeKernel) -> None:
    with PseudoFSMounter(guest) as mounter:
        assert set(mounter.timings) == {"mount proc", "mount dev", "mount sys"}

    assert set(mounter.timings) == {"mount proc", "mount dev", "mount sys", "unmount"}
    assert all(isinstance(v, float) and v >= 0 for v in mounter.timings.values())


def test_timings_recorded_for_skipped_targets_and_failed_cleanup(
    guest: Path, kernel: FakeKernel
) -> None:
    kernel.table.add(guest / "dev")
    (guest / "dev").mkdir()
    kernel.umount_hook = refuse_umount_dev  # never reached: dev is not ours

    with PseudoFSMounter(guest) as mounter:
        pass

    assert mounter.skipped == ["dev"]
    assert set(mounter.timings) == {"mount proc", "mount dev", "mount sys", "unmount"}


def test_repr_shows_state(guest: Path, kernel: FakeKernel) -> None:
    mounter = PseudoFSMounter(guest)
    assert "idle" in repr(mounter)
    with mounter:
        assert "held" in repr(mounter)
        assert "mounted=['proc', 'dev', 'sys']" in repr(mounter)
