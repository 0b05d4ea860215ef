"""``vmcraft doctor`` on this very host, as root: its answers against the host's own.

Each verdict is checked against what the code that uses the feature would
find (the loop control device, /dev/fuse, ``lvm.device_mapper_available``,
/proc/filesystems, ``nbd.nbd_available``), so the test holds on any host;
on the CI machine that means loop and FUSE present, vfat, nbd and
device-mapper missing. The probes must leave nothing: no mount, loop device
(not even an unattached node: /dev/loop-control is never asked for a free
one), process, or change of this process's namespaces.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import time

import psutil
import pytest

from vmcraft.disks import lvm, nbd
from vmcraft.doctor import Feature, Severity, check_host
from vmcraft.mount.guest import kernel_supports

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("leak_check")]


def _namespaces() -> dict[str, str]:
    return {ns: os.readlink(f"/proc/self/ns/{ns}") for ns in ("mnt", "user", "pid", "net")}


def test_doctor_agrees_with_the_host_and_leaves_nothing() -> None:
    nodes = sorted(glob.glob("/dev/loop[0-9]*"))
    namespaces = _namespaces()
    children = {p.pid for p in psutil.Process().children(recursive=True)}

    report = check_host()

    assert sorted(glob.glob("/dev/loop[0-9]*")) == nodes, "a probe created a loop device"
    assert _namespaces() == namespaces
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= children
    found = {p.name: p.available for p in report.probes}
    assert found[Feature.ROOT]
    assert found[Feature.LOOP] is os.access("/dev/loop-control", os.R_OK | os.W_OK)
    assert found[Feature.FUSE] is os.path.exists("/dev/fuse")
    assert found[Feature.DEVICE_MAPPER] is lvm.device_mapper_available()
    assert found[Feature.VFAT] is kernel_supports("vfat")
    assert found[Feature.NBD] is (nbd.nbd_available() and shutil.which("qemu-nbd") is not None)
    assert found[Feature.BUBBLEWRAP] is (shutil.which("bwrap") is not None)
    assert report.usable
    assert report.exit_code == 0
    assert [p.name for p in report.probes] == list(Feature)
    for probe in report.probes:
        assert probe.detail
        assert probe.fallback


def test_the_trials_really_ran() -> None:
    report = check_host()

    sandbox = report.probe(Feature.BUBBLEWRAP)
    idmap = report.probe(Feature.IDMAPPED_MOUNTS)
    if shutil.which("bwrap") is not None:
        assert sandbox.available, sandbox.detail
        assert "the sandbox starts" in sandbox.detail
    assert "private mount namespace" in idmap.method
    assert idmap.available, idmap.detail
    assert report.probe(Feature.ROOT).severity is Severity.REQUIRED


def test_doctor_is_fast() -> None:
    check_host()  # warm: the first run pays for imports and the page cache
    start = time.perf_counter()
    report = check_host()
    took = time.perf_counter() - start

    assert took < 1.0, f"doctor's probes took {took:.2f} s"
    assert report.elapsed_ms < 1000


def test_cli_doctor_json() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "vmcraft", "doctor", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["usable"] is True
    assert data["exit_code"] == 0
    assert [p["name"] for p in data["probes"]] == [f.value for f in Feature]
    assert set(data["probes"][0]) == {
        "name",
        "available",
        "severity",
        "detail",
        "fallback",
        "method",
    }


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs util-linux's setpriv")
def test_cli_doctor_as_another_user_exits_4() -> None:
    done = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            sys.executable,
            "-m",
            "vmcraft",
            "doctor",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
    )

    if "Permission denied" in done.stderr:
        pytest.skip(f"uid 65534 cannot read this interpreter: {done.stderr.strip()}")
    assert done.returncode == 4, done.stderr
    assert "root                 MISSING  required  running as uid 65534" in done.stdout
    assert done.stdout.rstrip().endswith("vmcraft cannot work on this host: it needs root")
