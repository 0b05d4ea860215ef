"""A hostile guest against the sandbox: nothing it tries reaches the host, and the guest boots.

The corpus (tests/fixtures/hostile.py) sits where the repair and a kernel
or package install run guest code: grub.d, an initramfs-tools hook, kernel
postinst.d and a package's maintainer scripts. In the sandbox, the default
for disk images, none of its attempts may succeed, while fix-boot still
repairs the guest and the guest reaches its login prompt under qemu. In the
host mode (the card's enhanced chroot) the same corpus documents what a
guest's script could do: the set is asserted, so a change is noticed.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.boot import boot
from tests.conftest import CopyImage
from tests.fixtures import hostile
from tests.fixtures.guestdisk import DebianDisk
from vmcraft import VMCraft
from vmcraft.fixers.fixboot import BootFixer, FixBootOptions, fix_boot
from vmcraft.sandbox.isolation import Isolation

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("leak_check")]

BOOT_TIMEOUT = 240
OUTCOMES = {
    "login": r"login:",
    "initramfs shell": r"ALERT! .* does not exist|\(initramfs\)",
    "grub prompt": r"grub> |grub rescue>",
    "kernel panic": r"Kernel panic",
}

# Through the host's /proc and /sys, which command_with_mounts binds in (fix-boot, run-parts).
_THROUGH_PROC = {
    "procpid-root-read",
    "procpid-root-write",
    "see-host-process",
    "core-pattern-open",
    "proc-irq-open",
    "sysfs-open",
}
# Wherever the command runs as the host's root in a chroot: a plain command() (dpkg) too.
_AS_HOST_ROOT = {
    "kill-host-process",
    "ptrace-host-process",
    "loopback-connect",
    "host-interfaces",
    "mknod-host-disk",
    "daemon",
    "chroot-escape",
    "capabilities",
    "user-namespace",
    "add-key",
    "reboot",
    "mount-tmpfs",
    "open-by-handle",
}
HOST_ESCAPES: dict[str, set[str]] = {
    "grub.d": _AS_HOST_ROOT | _THROUGH_PROC,
    "initramfs-hook": _AS_HOST_ROOT | _THROUGH_PROC,
    "kernel-postinst": _AS_HOST_ROOT | _THROUGH_PROC,
    "dpkg-postinst": set(_AS_HOST_ROOT),
    "dpkg-postrm": set(_AS_HOST_ROOT),
}
"""What the host mode let each place do here, as observed (the table this test prints).

Not escaping on this host, for reasons of the host, not of the host mode:
proc1-root-read (EACCES: PID 1 is not root's to look into here),
sysrq-trigger-open and kcore-open (ENOENT: this kernel has neither),
init-module (ENOSYS: no module support), read-host-disk (the node is made,
the open refused by the machine's device policy), user-namespace-tool (the
guest's unshare is refused to a chrooted caller; the probe climbs out first).
"""


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    for tool in ("gcc", "dpkg-deb"):
        if shutil.which(tool) is None:
            pytest.skip(f"the corpus needs {tool} on the host (gcc -static builds the probe)")
    return hostile.build_probe(tmp_path_factory.mktemp("hostile-probe"))


def _watching(bait: hostile.HostBait) -> Callable[[str, str, float | None], None]:
    """A fix-boot progress callback: after every phase, while the handle still holds the
    guest, look for the corpus's daemons (the handle's close would reap them)."""

    def progress(phase: str, state: str, elapsed: float | None) -> None:
        if state == "done":
            bait.watch_daemons()

    return progress


def _install(image: Path, probe: Path, tmp_path: Path, bait: hostile.HostBait) -> None:
    with VMCraft() as g:
        g.add_drive_opts(image, readonly=False)
        g.launch()
        g.mount("/dev/sda2", "/")
        hostile.install(g, probe, hostile.build_deb(tmp_path), bait)


def _after_the_repair(g: VMCraft, kernel: str, bait: hostile.HostBait) -> None:
    """A kernel install's postinst.d, then the package's install and purge, each watched."""
    hostile.run_kernel_postinst(g, kernel)
    bait.watch_daemons()
    g.command(["dpkg", "-i", hostile.GUEST_DEB])
    bait.watch_daemons()
    g.command(["dpkg", "--purge", hostile.PACKAGE])
    bait.watch_daemons()


def _check_ran_everywhere(outcomes: dict[tuple[str, str], hostile.Outcome]) -> None:
    failed = hostile.errors(outcomes)
    assert failed == [], "attempts that did not run or said nothing"


def test_no_attempt_escapes_the_sandbox_and_the_guest_boots(
    image_copy: CopyImage, debian: DebianDisk, probe: Path, tmp_path: Path
) -> None:
    image = image_copy("qcow2")
    with hostile.host_bait(tmp_path / "host") as bait:
        _install(image, probe, tmp_path, bait)

        report = fix_boot(image, progress=_watching(bait))
        assert report.success, report.to_json()
        assert [p.cmd[0] for p in report.plan] == ["update-initramfs", "update-grub"]

        with VMCraft() as g:
            g.add_drive_opts(image, readonly=False)
            g.launch()
            g.mount("/dev/sda2", "/")
            assert g.isolation is Isolation.SANDBOX
            _after_the_repair(g, debian.kernel, bait)
            outcomes = hostile.collect(g, bait)
        bait.watch_daemons()
        assert bait.sleep.poll() is None, "the test's sleep was harmed"

    print("\n" + hostile.table(outcomes, "sandbox (the default on disk images)"))
    print(hostile.details(outcomes))
    print("daemons seen just after their command returned:", sorted(bait.brief))
    _check_ran_everywhere(outcomes)
    escaped = {o.place + ": " + o.line for o in outcomes.values() if o.escaped}
    assert escaped == set()
    assert bait.daemons == {}
    assert list(bait.written.iterdir()) == []
    assert bait.listener.received == []

    after = boot(image, "qcow2", OUTCOMES, timeout=BOOT_TIMEOUT)
    assert after.outcome == "login", after.tail()


def test_host_mode_lets_the_corpus_out_as_documented(
    image_copy: CopyImage, debian: DebianDisk, probe: Path, tmp_path: Path
) -> None:
    image = image_copy("qcow2")
    with hostile.host_bait(tmp_path / "host") as bait:
        with VMCraft(isolation="host") as g:
            g.add_drive_opts(image, readonly=False)
            g.launch()
            assert g.isolation is Isolation.HOST
            fixer = BootFixer(g, FixBootOptions(), progress=_watching(bait))
            fixer.prepare()  # mounts the guest: the corpus goes in before the repair
            hostile.install(g, probe, hostile.build_deb(tmp_path), bait)
            report = fixer.run()
            assert report.success, report.to_json()
            _after_the_repair(g, debian.kernel, bait)
            outcomes = hostile.collect(g, bait)
        # After the handle's close, which reaps what stayed rooted in the guest.
        survivors = {d.place for d in bait.watch_daemons()}
        assert bait.sleep.poll() is None, "the test's sleep was harmed"

    print("\n" + hostile.table(outcomes, "host mode (VMCraft(isolation='host'))"))
    print(hostile.details(outcomes))
    print("daemons alive after the handle closed:", sorted(survivors))
    _check_ran_everywhere(outcomes)
    assert hostile.escapes(outcomes) == HOST_ESCAPES
    assert {p.name for p in bait.written.iterdir()} == {
        p for p, found in HOST_ESCAPES.items() if "procpid-root-write" in found
    }
