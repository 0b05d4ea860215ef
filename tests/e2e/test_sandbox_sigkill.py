"""SIGKILL of vmcraft in the middle of a sandboxed guest command: the sandbox is gone with it.

A child python process opens a handle on a copy of the demo guest, launches,
mounts and runs a long command in the sandbox (``sleep 300``, or a setsid
daemon first and then the sleep); the test SIGKILLs that process, never the
sandbox, and looks from outside. Nothing of the sandbox may be left within a
few seconds: no process of the guest command (by the token in its
environment, by the pid it had), no bwrap, no process in the sandbox's
namespaces (so its mount namespace, and the /proc, /dev, /sys and /run
mounted in it, are gone with them); and no mount of the sandbox ever shows
in the handle's namespace.

What the handle itself made stays, by design (cleanup by code cannot run in
a SIGKILLed process): its state directory under /run/vmcraft, the guest's
filesystems mounted there, the loop device and the qemu-storage-daemon
export. ``vmcraft cleanup`` removes them, after which nothing at all is left.

And without any SIGKILL: what a command left in its sandbox must be gone
when the command returns, not a moment later.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from tests.conftest import CopyImage
from tests.leaks import snapshot
from vmcraft import VMCraft
from vmcraft.chroot import reaper
from vmcraft.mount.mountinfo import mount_points

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("leak_check")]

TOKEN_ENV = "VMCRAFT_SIGKILL_TOKEN"  # noqa: S105 - a variable name
NAMESPACES = ("mnt", "pid", "net", "ipc", "uts")
GONE_WITHIN = 5.0

VICTIM = """
import json, sys
from pathlib import Path
from vmcraft import VMCraft

image, state_file, command = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3])
g = VMCraft()
g.add_drive_opts(image, readonly=False)
g.launch()
g.mount("/dev/sda2", "/")
state_file.write_text(json.dumps({"root": str(g.root), "isolation": str(g.isolation)}))
g.command_with_mounts(command, timeout=600)
print("the command ended: it should have been killed first", flush=True)
"""

COMMANDS = {
    "sleep": "touch /var/tmp/sigkill-ready; exec sleep 300",
    "daemon": (
        "(setsid sleep 1000 </dev/null >/dev/null 2>&1 &); "
        "touch /var/tmp/sigkill-ready; exec sleep 300"
    ),
}


@dataclass(frozen=True)
class Seen:
    pid: int
    created: float
    name: str
    namespaces: dict[str, str]
    root: str

    def alive(self) -> bool:
        try:
            proc = psutil.Process(self.pid)
            return proc.create_time() == self.created and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False


def namespaces(pid: int) -> dict[str, str]:
    found = {}
    for ns in NAMESPACES:
        try:
            found[ns] = os.readlink(f"/proc/{pid}/ns/{ns}")
        except OSError:
            continue
    return found


def seen(proc: psutil.Process) -> Seen | None:
    try:
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        try:
            root = os.readlink(f"/proc/{proc.pid}/root")
        except OSError:
            root = "?"
        return Seen(proc.pid, proc.create_time(), proc.name(), namespaces(proc.pid), root)
    except psutil.NoSuchProcess:
        return None


def with_token(token: str) -> list[Seen]:
    """Running processes whose environment carries the guest command's token."""
    found = []
    for proc in psutil.process_iter():
        try:
            carries = proc.environ().get(TOKEN_ENV) == token
        except psutil.Error:
            continue
        if carries and (info := seen(proc)) is not None:
            found.append(info)
    return found


def in_namespaces(spaces: set[str]) -> list[Seen]:
    """Running processes in any of the given namespaces (``mnt:[4026...]`` and such)."""
    found = []
    for proc in psutil.process_iter():
        ns = set(namespaces(proc.pid).values())
        if ns & spaces and (info := seen(proc)) is not None:
            found.append(info)
    return found


def bwraps_naming(path: str) -> list[Seen]:
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        named = proc.info["name"] == "bwrap" and path in " ".join(proc.info["cmdline"] or [])
        if named and (info := seen(proc)) is not None:
            found.append(info)
    return found


def wait_for(check: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def vmcraft_cleanup(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmcraft", "cleanup", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


@pytest.mark.parametrize("command", list(COMMANDS))
def test_sigkill_mid_command_leaves_nothing_of_the_sandbox(
    command: str, image_copy: CopyImage, tmp_path: Path
) -> None:
    image = image_copy("qcow2")
    before = snapshot()
    points_before = set(mount_points())
    my_namespaces = set(namespaces(os.getpid()).values())
    token = secrets.token_hex(8)
    state_file = tmp_path / "state.json"
    guest_cmd = ["sh", "-c", f"export {TOKEN_ENV}={token}; {COMMANDS[command]}"]
    log = (tmp_path / "victim.log").open("w")
    victim = subprocess.Popen(
        [
            sys.executable,
            "-c",
            VICTIM,
            os.fspath(image),
            os.fspath(state_file),
            json.dumps(guest_cmd),
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: state_file.exists() and state_file.stat().st_size, 60, "the launch")
        state = json.loads(state_file.read_text())
        assert state["isolation"] == "sandbox"
        root = Path(state["root"])
        statedir = root.parent
        wait_for((root / "var/tmp/sigkill-ready").exists, 60, "the guest command")
        # sh exec'd into sleep 300; the daemon is one sleep 1000 more.
        sleeps = {"sleep": 1, "daemon": 2}[command]
        wait_for(
            lambda: sum(p.name == "sleep" for p in with_token(token)) == sleeps,
            10,
            "the guest's sleeps",
        )
        guest = with_token(token)
        bwrap = bwraps_naming(os.fspath(root))
        assert bwrap, "no bwrap runs the command"
        sandbox_ns = {value for p in guest for value in p.namespaces.values()} - my_namespaces
        kinds = {value.split(":")[0] for value in sandbox_ns}
        assert kinds == set(NAMESPACES), f"the guest shares namespaces with the test: {kinds}"
        # Seen from here, a sandboxed process's root is not a path under the guest's mount.
        roots = {p.root for p in guest}

        victim.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        assert victim.wait(30) == -signal.SIGKILL

        def sandbox_gone() -> bool:
            return not (
                any(p.alive() for p in guest + bwrap)
                or with_token(token)
                or in_namespaces(sandbox_ns)
                or bwraps_naming(os.fspath(root))
            )

        wait_for(sandbox_gone, GONE_WITHIN, "the sandbox to go with vmcraft")
        gone_after = time.monotonic() - killed_at
        assert reaper.processes_rooted_in(statedir) == []
        print(
            f"\n[{command}] guest processes {[(p.pid, p.name) for p in guest]}, bwrap "
            f"{[p.pid for p in bwrap]}, roots seen from the host {roots}: all gone "
            f"{gone_after:.2f} s after the SIGKILL"
        )

        # What the handle made stays until cleanup: its own, in this namespace.
        left = snapshot()
        prefix = os.fspath(statedir) + "/"
        new_mounts = sorted(set(mount_points()) - points_before)
        print(f"[{command}] left by the killed handle: {statedir} with mounts {new_mounts}")
        print(f"[{command}] loop devices {left['loop devices']}, daemons {left['image daemons']}")
        assert new_mounts, "the handle's guest mounts were expected to stay until cleanup"
        assert all(m.startswith(prefix) for m in new_mounts), new_mounts
        guest_prefix = os.fspath(root) + "/"
        inside = [
            "/" + m.removeprefix(guest_prefix) for m in new_mounts if m.startswith(guest_prefix)
        ]
        pseudo = [m for m in inside if m.split("/")[1:2] in (["proc"], ["dev"], ["sys"], ["run"])]
        assert pseudo == [], "a sandbox mount shows in the handle's namespace"
        assert statedir.name in left["state directories"]  # type: ignore[operator]

        listed = vmcraft_cleanup("--dry-run", "--json")
        leftovers = json.loads(listed.stdout)["leftovers"]
        mine = [x for x in leftovers if x["directory"] == os.fspath(statedir)]
        assert len(mine) == 1, leftovers
        assert mine[0]["processes"] == []
        done = vmcraft_cleanup("--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["failed"] == []
        assert snapshot() == before
        assert not statedir.exists()
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()
        log.close()
        vmcraft_cleanup()


TRIES = 20


def hung_up(fd: int) -> bool:
    """No writer left on the FIFO (after one had opened it)."""
    poller = select.poll()
    poller.register(fd, 0)
    return any(events & select.POLLHUP for _, events in poller.poll(0))


def test_a_daemon_is_gone_when_its_command_returns(image_copy: CopyImage) -> None:
    """The daemon holds the write end of a FIFO whose read end the test has: no POLLHUP at
    the command's return means a process of the sandbox is still alive then."""
    image = image_copy("raw")
    daemon = (
        "(setsid sh -c 'exec 3>/var/tmp/tripwire; touch /var/tmp/opened; exec sleep 1000' "
        "</dev/null >/dev/null 2>&1 &); "
        "while [ ! -e /var/tmp/opened ]; do sleep 0.01; done"
    )
    alive_at_return = 0
    with VMCraft() as g:
        g.add_drive_opts(image, readonly=False)
        g.launch()
        g.mount("/dev/sda2", "/")
        fifo, opened = g.root / "var/tmp/tripwire", g.root / "var/tmp/opened"
        for _ in range(TRIES):
            opened.unlink(missing_ok=True)
            os.mkfifo(fifo)
            reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
            try:
                g.command(["sh", "-c", daemon])
                if not hung_up(reader):
                    alive_at_return += 1
                wait_for(functools.partial(hung_up, reader), 5, "the daemon's end")
            finally:
                os.close(reader)
                fifo.unlink()
    print(f"\na daemon of the sandbox was alive at its command's return {alive_at_return}/{TRIES}")
    assert alive_at_return == 0
