"""The choice between LOOP_CONFIGURE and LOOP_SET_FD + LOOP_SET_STATUS64, with a fake kernel.

Kernels before 5.8 answer LOOP_CONFIGURE with EINVAL or ENOTTY; vmcraft then
sets the device up in two ioctls, with the same flags, and remembers that for
the rest of the process. The real kernel path is in
tests/integration/test_loop_fallback_real.py.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from pytest_mock import MockerFixture

from vmcraft.disks import loop
from vmcraft.errors import DriveError

NAMES = {
    loop.LOOP_SET_FD: "SET_FD",
    loop.LOOP_CLR_FD: "CLR_FD",
    loop.LOOP_SET_STATUS64: "SET_STATUS64",
    loop.LOOP_GET_STATUS64: "GET_STATUS64",
    loop.LOOP_CONFIGURE: "CONFIGURE",
    loop.LOOP_CTL_GET_FREE: "GET_FREE",
}
CONTROL = 900
BACKING = 7


@dataclass
class FakeLoops:
    """/dev/loop-control and /dev/loopN, answering ioctls as the test says."""

    answers: dict[str, list[int]] = field(default_factory=dict)
    """Per ioctl name, errnos to fail with, in turn (0: succeed)."""
    kept_flags: int | None = None
    """What GET_STATUS64 reports; None: the flags SET_STATUS64 was given."""
    calls: list[tuple[str, int, object]] = field(default_factory=list)
    closed: list[int] = field(default_factory=list)
    free: Iterator[int] = field(default_factory=lambda: iter(range(100)))
    status: loop._LoopInfo64 | None = None

    def open(self, path: str, flags: int, *args: object) -> int:
        if path == "/dev/loop-control":
            return CONTROL
        return 1000 + int(path.removeprefix("/dev/loop"))

    def close(self, fd: int) -> None:
        self.closed.append(fd)

    def ioctl(self, fd: int, request: int, arg: object = 0) -> object:
        name = NAMES[request]
        self.calls.append((name, fd, arg))
        queue = self.answers.get(name, [])
        err = queue.pop(0) if queue else 0
        if err:
            raise OSError(err, os.strerror(err))
        if name == "GET_FREE":
            return next(self.free)
        if name == "SET_STATUS64":
            assert isinstance(arg, bytes)
            self.status = loop._LoopInfo64.from_buffer_copy(arg)
        if name == "GET_STATUS64":
            info = loop._LoopInfo64.from_buffer_copy(bytes(self.status or loop._LoopInfo64()))
            if self.kept_flags is not None:
                info.lo_flags = self.kept_flags
            return bytes(info)
        return 0

    def names(self) -> list[str]:
        return [name for name, _, _ in self.calls]


@pytest.fixture
def kernel(mocker: MockerFixture, monkeypatch: pytest.MonkeyPatch) -> FakeLoops:
    fake = FakeLoops()
    monkeypatch.setattr(loop, "use_loop_configure", True)
    mocker.patch.object(fcntl, "ioctl", side_effect=fake.ioctl)
    mocker.patch.object(os, "open", side_effect=fake.open)
    mocker.patch.object(os, "close", side_effect=fake.close)
    mocker.patch.object(time, "sleep")
    return fake


def config(*, readonly: bool = False, offset: int = 0, size: int = 0) -> loop._LoopConfig:
    c = loop._LoopConfig()
    c.fd = BACKING
    c.info.lo_flags = (
        loop.LO_FLAGS_AUTOCLEAR
        | loop.LO_FLAGS_PARTSCAN
        | (loop.LO_FLAGS_READ_ONLY if readonly else 0)
    )
    c.info.lo_offset = offset
    c.info.lo_sizelimit = size
    c.info.lo_file_name = b"/images/disk.raw"
    return c


def test_loop_configure_when_the_kernel_has_it(kernel: FakeLoops) -> None:
    assert loop._configure_free_device(config(), readonly=False) == (0, 1000)
    assert kernel.names() == ["GET_FREE", "CONFIGURE"]
    assert loop.use_loop_configure is True


@pytest.mark.parametrize("err", [errno.EINVAL, errno.ENOTTY])
def test_a_kernel_without_loop_configure_gets_the_two_ioctls(kernel: FakeLoops, err: int) -> None:
    kernel.answers["CONFIGURE"] = [err]
    assert loop._configure_free_device(config(offset=4096, size=1 << 20), readonly=False) == (
        0,
        1000,
    )
    assert kernel.names() == ["GET_FREE", "CONFIGURE", "SET_FD", "SET_STATUS64", "GET_STATUS64"]
    set_fd = kernel.calls[2]
    assert set_fd[1:] == (1000, BACKING)  # the loop device's fd, the backing file's fd
    status = kernel.status
    assert status is not None
    assert status.lo_flags & loop.LO_FLAGS_AUTOCLEAR
    assert status.lo_flags & loop.LO_FLAGS_PARTSCAN
    assert (status.lo_offset, status.lo_sizelimit) == (4096, 1 << 20)
    assert status.lo_file_name == b"/images/disk.raw"
    # Learnt once: the next device goes straight to the two ioctls.
    assert loop.use_loop_configure is False
    kernel.calls.clear()
    loop._configure_free_device(config(), readonly=False)
    assert kernel.names() == ["GET_FREE", "SET_FD", "SET_STATUS64", "GET_STATUS64"]


def test_other_loop_configure_errors_are_no_reason_to_fall_back(kernel: FakeLoops) -> None:
    kernel.answers["CONFIGURE"] = [errno.EPERM]
    with pytest.raises(DriveError, match="cannot configure /dev/loop0"):
        loop._configure_free_device(config(), readonly=False)
    assert "SET_FD" not in kernel.names()
    assert 1000 in kernel.closed
    assert loop.use_loop_configure is True


@pytest.mark.parametrize("configure", [True, False])
def test_a_device_taken_meanwhile_means_the_next_one(kernel: FakeLoops, configure: bool) -> None:
    loop.use_loop_configure = configure
    kernel.answers["CONFIGURE" if configure else "SET_FD"] = [errno.EBUSY, errno.EBUSY]
    assert loop._configure_free_device(config(), readonly=False) == (2, 1002)
    assert kernel.closed[:2] == [1000, 1001]
    assert "CLR_FD" not in kernel.names()  # EBUSY: the device was never ours


def test_a_failed_set_status_clears_the_device(kernel: FakeLoops) -> None:
    loop.use_loop_configure = False
    kernel.answers["SET_STATUS64"] = [errno.EIO]
    with pytest.raises(DriveError, match="Input/output error"):
        loop._configure_free_device(config(), readonly=False)
    assert kernel.names()[-1] == "CLR_FD"
    assert 1000 in kernel.closed


def test_set_status_is_retried_while_the_kernel_says_eagain(kernel: FakeLoops) -> None:
    loop.use_loop_configure = False
    kernel.answers["SET_STATUS64"] = [errno.EAGAIN, errno.EAGAIN]
    assert loop._configure_free_device(config(), readonly=False) == (0, 1000)
    assert kernel.names().count("SET_STATUS64") == 3
    assert "CLR_FD" not in kernel.names()


@pytest.mark.parametrize(
    ("readonly", "kept"),
    [
        (False, loop.LO_FLAGS_PARTSCAN),  # no autoclear
        (True, loop.LO_FLAGS_AUTOCLEAR | loop.LO_FLAGS_PARTSCAN),  # not read-only
    ],
)
def test_flags_the_kernel_did_not_take_are_refused(
    kernel: FakeLoops, readonly: bool, kept: int
) -> None:
    loop.use_loop_configure = False
    kernel.kept_flags = kept
    with pytest.raises(DriveError, match="did not take the loop flags"):
        loop._configure_free_device(config(readonly=readonly), readonly=readonly)
    assert kernel.names()[-1] == "CLR_FD"


def test_a_failing_fallback_does_not_mark_loop_configure_missing(kernel: FakeLoops) -> None:
    """EINVAL is also what a new kernel says to a config it refuses."""
    kernel.answers["CONFIGURE"] = [errno.EINVAL]
    kernel.answers["SET_FD"] = [errno.EINVAL]
    with pytest.raises(DriveError):
        loop._configure_free_device(config(), readonly=False)
    assert loop.use_loop_configure is True


def test_a_ctrl_c_between_the_two_ioctls_clears_the_device(kernel: FakeLoops) -> None:
    loop.use_loop_configure = False
    real = kernel.ioctl

    def interrupted(fd: int, request: int, arg: object = 0) -> object:
        if NAMES[request] == "SET_STATUS64":
            raise KeyboardInterrupt
        return real(fd, request, arg)

    fcntl.ioctl.side_effect = interrupted  # type: ignore[attr-defined]
    with pytest.raises(KeyboardInterrupt):
        loop._configure_free_device(config(), readonly=False)
    assert kernel.names()[-1] == "CLR_FD"
    assert 1000 in kernel.closed
