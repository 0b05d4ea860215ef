"""The vmcraft command line on the real Debian guest: fix-boot, inspect, run, cleanup."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import psutil
import pytest

from tests.conftest import CopyImage, vmcraft_cli
from tests.fixtures.guestdisk import DebianDisk
from tests.leaks import snapshot
from vmcraft import VMCraft

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("leak_check")]

SCHEMA = json.loads((Path(__file__).parents[2] / "docs" / "report-schema.json").read_text())


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def guest_state(image: Path) -> tuple[dict[str, str], dict[str, tuple[int, int, int]]]:
    """The disk layout (devices and their ids) and every file's (mode, size, mtime)."""
    with VMCraft() as g:
        g.add_drive_opts(image)
        g.launch()
        layout = {
            dev: f"{g.vfs_type(dev)} {g.vfs_uuid(dev)} {g.vfs_label(dev)}"
            for dev in [*g.list_devices(), *g.list_partitions()]
        }
        g.mount("/dev/sda2", "/")
        files = {}
        for top, dirs, names in os.walk(g.root):
            for name in [*names, *dirs]:
                path = Path(top) / name
                st = path.lstat()
                if not path.is_dir() or path.is_symlink():
                    rel = os.fspath(path.relative_to(g.root))
                    files[rel] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return layout, files


# What fix-boot may change on this guest, and nothing else.
ALLOWED_CHANGES = (
    "boot/grub/grub.cfg",
    "boot/initrd.img-",
    "var/lib/initramfs-tools/",
    "var/lib/vmcraft/",  # the journal that --undo restores from
)


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_fix_boot_regenerates_and_changes_nothing_else(
    fmt: str, image_copy: CopyImage, debian: DebianDisk, tmp_path: Path
) -> None:
    image = image_copy(fmt)
    layout_before, files_before = guest_state(image)
    report_file = tmp_path / "report.json"

    done = vmcraft_cli("fix-boot", str(image), "--json", "--report", str(report_file))

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report == json.loads(report_file.read_text())
    jsonschema.validate(report, SCHEMA)
    assert report["success"] is True
    assert report["guest"]["distro"] == "debian"
    assert report["guest"]["boot_mode"] == "bios"
    assert [p["cmd"][0] for p in report["plan"]] == ["update-initramfs", "update-grub"]
    assert report["initramfs"]["success"]
    assert report["bootloader"]["success"]
    assert report["analysis"]["timings"]["regen_initramfs_and_bootloader"] > 0

    layout_after, files_after = guest_state(image)
    assert layout_after == layout_before
    changed = {
        path
        for path in files_before.keys() | files_after.keys()
        if files_before.get(path) != files_after.get(path)
    }
    assert f"boot/initrd.img-{debian.kernel}" in changed
    assert "boot/grub/grub.cfg" in changed
    assert {p for p in changed if not p.startswith(ALLOWED_CHANGES)} == set()


def test_dry_run_returns_the_plan_and_changes_nothing(image_copy: CopyImage) -> None:
    image = image_copy("qcow2")
    digest = sha256(image)
    done = vmcraft_cli("fix-boot", str(image), "--dry-run", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    jsonschema.validate(report, SCHEMA)
    assert report["dry_run"] is True
    assert [p["cmd"] for p in report["plan"]] == [
        ["update-initramfs", "-u", "-k", "all"],
        ["update-grub"],
    ]
    assert "initramfs" not in report
    assert sha256(image) == digest


def test_inspect_json(debian: DebianDisk) -> None:
    done = vmcraft_cli("inspect", str(debian.vmdk), "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    (guest,) = data["operating_systems"]
    assert guest["root"] == "/dev/sda2"
    assert guest["distro"] == "debian"
    assert guest["major_version"] == 12
    assert guest["mountpoints"] == {"/": "/dev/sda2"}
    assert data["filesystems"] == {"/dev/sda1": "unknown", "/dev/sda2": "ext4"}


def test_run_with_and_without_mounts(debian: DebianDisk) -> None:
    image = str(debian.qcow2)  # read-only: the cached image itself
    hostname = vmcraft_cli("run", image, "--", "cat", "/etc/hostname")
    assert (hostname.returncode, hostname.stdout) == (0, "vmcraft-demo\n")
    probe = ["test", "-e", "/proc/self/mountinfo"]
    # The sandbox (the default) always has a /proc of its own ...
    assert vmcraft_cli("run", image, "--", *probe).returncode == 0
    # ... the enhanced chroot only what is mounted around the command.
    host = ("run", image, "--isolation", "host")
    assert vmcraft_cli(*host, "--with-mounts", "--", *probe).returncode == 0
    assert vmcraft_cli(*host, "--", *probe).returncode == 1
    touch = vmcraft_cli("run", image, "--", "touch", "/x")
    assert touch.returncode != 0
    assert "Read-only file system" in touch.stderr


def test_bad_input_gets_a_clear_message_and_exit_code(tmp_path: Path) -> None:
    missing = vmcraft_cli("fix-boot", str(tmp_path / "nope.qcow2"))
    assert missing.returncode == 3
    assert "does not exist" in missing.stderr
    assert missing.stdout == ""

    blank = tmp_path / "blank.raw"
    subprocess.run(["truncate", "-s", "64M", str(blank)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(blank)], check=True)
    unsupported = vmcraft_cli("fix-boot", str(blank))
    assert unsupported.returncode == 5
    assert "no Linux operating system found" in unsupported.stderr


def test_cleanup_removes_what_a_killed_process_left(image_copy: CopyImage) -> None:
    image = image_copy("qcow2")
    before = snapshot()
    script = f"""
import os, signal
from vmcraft import VMCraft
g = VMCraft()
g.add_drive_opts({str(image)!r}, readonly=False)
g.launch()
g.mount("/dev/sda2", "/")
held = g.hold_mounts()
held.__enter__()
print("attached", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""
    victim = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    try:
        assert victim.returncode == -signal.SIGKILL
        assert victim.stdout == "attached\n"
        left = snapshot()
        assert left != before, "the killed process should have left something"

        listed = vmcraft_cli("cleanup", "--dry-run", "--json")
        (leftover,) = json.loads(listed.stdout)["leftovers"]
        assert leftover["mounts"]
        assert leftover["daemons"]
        assert snapshot() == left  # a dry run removes nothing

        done = vmcraft_cli("cleanup", "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["failed"] == []
        assert snapshot() == before
        assert vmcraft_cli("cleanup").stdout == "nothing left behind by vmcraft\n"
    finally:
        vmcraft_cli("cleanup")  # never leave the victim's daemon and loop device behind


def test_ctrl_c_at_the_terminal_leaves_nothing_and_a_sound_image(image_copy: CopyImage) -> None:
    """SIGINT to the whole foreground process group, as a terminal sends it."""
    image = image_copy("qcow2")
    before = snapshot()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vmcraft",
            "run",
            str(image),
            "--rw",
            "--with-mounts",
            "--",
            "sh",
            "-c",
            "echo written > /root/marker; sleep 60",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, like a terminal's foreground job
    )
    assert proc.stdout is not None
    try:
        # vmcraft run prints the guest's output at the end: wait for the guest's sleep.
        deadline = 60.0
        while deadline > 0 and not any(
            p.name() == "sleep" for p in psutil.Process(proc.pid).children(recursive=True)
        ):
            time.sleep(0.1)
            deadline -= 0.1
        os.killpg(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr
    assert snapshot() == before
    check = subprocess.run(
        ["qemu-img", "check", str(image)], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    with VMCraft() as g:
        g.add_drive_opts(image)
        g.launch()
        g.mount("/dev/sda2", "/")
        assert g.cat("/root/marker") == "written\n"
