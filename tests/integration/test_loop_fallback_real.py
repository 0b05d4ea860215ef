"""Loop devices set up without LOOP_CONFIGURE (kernels before 5.8), on this kernel.

LOOP_CONFIGURE is made to answer EINVAL, as an old kernel does; vmcraft must
then attach through LOOP_SET_FD + LOOP_SET_STATUS64 with the same result:
partitions scanned, read-only honoured, autoclear set, nothing left after.
"""

from __future__ import annotations

import errno
import fcntl
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import launched
from tests.leaks import loop_devices
from vmcraft.disks import loop

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("leak_check")]


REAL_IOCTL = fcntl.ioctl


@pytest.fixture
def old_kernel(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """LOOP_CONFIGURE answers EINVAL, as before Linux 5.8; returns the loop fds it was tried on.

    Every other ioctl reaches the kernel.
    """
    tried: list[int] = []

    def ioctl(fd: int, request: int, *args: Any) -> Any:
        if request == loop.LOOP_CONFIGURE:
            tried.append(fd)
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        return REAL_IOCTL(fd, request, *args)

    monkeypatch.setattr(loop, "use_loop_configure", True, raising=False)
    monkeypatch.setattr(fcntl, "ioctl", ioctl)
    return tried


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    """A GPT image: a 4 MiB and an 8 MiB partition, the second an ext4 filesystem."""
    image = tmp_path / "disk.raw"
    subprocess.run(["truncate", "-s", "16M", os.fspath(image)], check=True)
    subprocess.run(
        ["sfdisk", "-q", os.fspath(image)],
        input="label: gpt\nstart=2048, size=4MiB\nsize=8MiB\n",
        text=True,
        check=True,
    )
    part = tmp_path / "part.img"
    subprocess.run(["truncate", "-s", "8M", os.fspath(part)], check=True)
    tree = tmp_path / "tree" / "etc"
    tree.mkdir(parents=True)
    (tree / "hostname").write_text("old-kernel\n")
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-d", os.fspath(tree.parent), os.fspath(part)], check=True
    )
    subprocess.run(
        ["dd", f"if={part}", f"of={image}", "bs=512", f"seek={2048 + 8192}", "conv=notrunc"],
        check=True,
        capture_output=True,
    )
    return image


def sysfs(device: loop.LoopDevice, name: str) -> str:
    return (Path("/sys/block") / device.name / name).read_text().strip()


def write_error(node: Path) -> int:
    """The errno of writing sector 100 (unused on the disk and in partition 1), 0 if it worked."""
    try:
        fd = os.open(node, os.O_RDWR)
        try:
            os.pwrite(fd, b"w" * 512, 512 * 100)
        finally:
            os.close(fd)
    except OSError as exc:
        return exc.errno or -1
    return 0


def attached_to(path: Path) -> list[str]:
    """losetup -a's lines for ``path``."""
    done = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=True)
    return [line for line in done.stdout.splitlines() if os.fspath(path) in line]


@pytest.mark.parametrize("readonly", [False, True])
def test_attach_through_the_fallback(old_kernel: list[int], disk: Path, readonly: bool) -> None:
    device = loop.attach(disk, readonly=readonly)
    try:
        assert old_kernel, "LOOP_CONFIGURE was not tried"
        assert loop.use_loop_configure is False  # learnt for the rest of the process
        assert sysfs(device, "loop/backing_file") == os.fspath(disk)
        assert sysfs(device, "loop/autoclear") == "1"
        assert sysfs(device, "loop/partscan") == "1"
        assert sysfs(device, "ro") == ("1" if readonly else "0")
        nodes = device.partitions()
        assert [n.name for n in nodes] == [f"{device.name}p1", f"{device.name}p2"]
        assert all(n.exists() for n in nodes)
        assert int(sysfs(device, "size")) == 16 * 2048  # sectors
        for node in (device.path, nodes[0]):
            err = write_error(node)
            if readonly:
                assert err in (errno.EROFS, errno.EACCES, errno.EPERM), (node, err)
            else:
                assert err == 0, (node, os.strerror(err))
        assert attached_to(disk)
    finally:
        device.detach()
    assert attached_to(disk) == []


def test_offset_and_size_through_the_fallback(old_kernel: list[int], disk: Path) -> None:
    """The LV-on-loop case: a window of the file, no partition scan."""
    device = loop.attach(
        disk, readonly=True, offset=(2048 + 8192) * 512, size=8 << 20, partitions=False
    )
    try:
        assert sysfs(device, "loop/offset") == str((2048 + 8192) * 512)
        assert sysfs(device, "loop/sizelimit") == str(8 << 20)
        assert sysfs(device, "loop/autoclear") == "1"
        assert sysfs(device, "loop/partscan") == "0"
        done = subprocess.run(
            ["blkid", "-p", "-o", "value", "-s", "TYPE", os.fspath(device.path)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.stdout.strip() == "ext4"
    finally:
        device.detach()
    assert attached_to(disk) == []


def test_a_handle_through_the_fallback(old_kernel: list[int], disk: Path) -> None:
    with launched(disk, readonly=True) as g:
        assert g.list_partitions() == ["/dev/sda1", "/dev/sda2"]
        g.mount("/dev/sda2", "/")
        assert g.read_file("/etc/hostname") == b"old-kernel\n"
        mine = [name for name, backing in loop_devices() if backing == os.fspath(disk)]
        assert mine, "the handle's loop device"
        for name in mine:
            assert Path(f"/sys/block/{name}/loop/autoclear").read_text().strip() == "1"
            assert Path(f"/sys/block/{name}/ro").read_text().strip() == "1"
    assert attached_to(disk) == []


def test_killed_while_attached_leaves_no_device(old_kernel: list[int], disk: Path) -> None:
    """Autoclear, for real: a process that dies holding the device lets it go."""
    script = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from vmcraft.disks import loop\n"
        "loop.use_loop_configure = False\n"
        f"d = loop.attach(Path({os.fspath(disk)!r}), readonly=True)\n"
        "print(d.name, flush=True)\n"
        "os._exit(0)\n"  # no detach(): only the fd's close
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    name = done.stdout.strip()
    assert name.startswith("loop")
    assert loop._wait_until(lambda: not loop._is_attached(name), 5.0)
    assert attached_to(disk) == []
