"""``vmcraft doctor``'s probe logic, verdict and output, with the host patched out.

Each probe is driven into its missing branch (no program on PATH, no device
node, a kernel too old, a trial the kernel refuses) and must then say so and
give the fallback the code really takes. The verdict (``usable``, the exit
status) and the JSON shape are what scripts rely on. The CLI's pointer at
doctor after a host-feature error is tested here too: it is chosen by the
error's type, so every type that carries it and some that must not are listed.
"""

from __future__ import annotations

import errno
import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from pytest_mock import MockerFixture

from vmcraft import cli, doctor
from vmcraft.disks import loop, qsd
from vmcraft.doctor import checks
from vmcraft.doctor.report import Feature, HostReport, Probe, Severity
from vmcraft.errors import (
    CommandError,
    DriveError,
    ExitCode,
    HostDeviceError,
    HostFeatureError,
    HostToolMissingError,
    HostUnsupportedGuestError,
    ImageFormatError,
    MountError,
    NotRootError,
    SandboxUnavailableError,
    UnsupportedGuestError,
    VMCraftError,
    exit_code_for,
)
from vmcraft.fixers.fixboot import FixBootReport
from vmcraft.version import package_version

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def as_root(mocker: MockerFixture) -> None:
    mocker.patch("vmcraft.doctor.checks.os.geteuid", return_value=0)


def completed(
    returncode: int, stdout: str = "", stderr: str = ""
) -> subprocess.CompletedProcess[str]:
    return subprocess.CompletedProcess(["x"], returncode, stdout, stderr)


# -- programs missing from PATH ---------------------------------------------


@pytest.mark.parametrize(
    ("probe", "feature", "severity", "package", "fallback"),
    [
        (checks.probe_qemu_img, Feature.QEMU_IMG, Severity.REQUIRED, "qemu-utils", "qemu-img info"),
        (checks.probe_blkid, Feature.BLKID, Severity.REQUIRED, "util-linux", "blkid"),
        (checks.probe_partx, Feature.PARTX, Severity.DEGRADED, "util-linux", "BLKRRPART"),
        (
            checks.probe_qemu_storage_daemon,
            Feature.QEMU_STORAGE_DAEMON,
            Severity.DEGRADED,
            "qemu-system-common",
            "raw images need none",
        ),
        (checks.probe_lvm, Feature.LVM, Severity.DEGRADED, "lvm2", "LVM physical volumes"),
        (
            checks.probe_cryptsetup,
            Feature.CRYPTSETUP,
            Severity.OPTIONAL,
            "cryptsetup-bin",
            "cryptsetup_open",
        ),
        (checks.probe_mtools, Feature.MTOOLS, Severity.DEGRADED, "mtools", "no vfat"),
        (
            checks.probe_bubblewrap,
            Feature.BUBBLEWRAP,
            Severity.DEGRADED,
            "bubblewrap",
            "--isolation host",
        ),
        (checks.probe_e2fsprogs, Feature.E2FSPROGS, Severity.OPTIONAL, "e2fsprogs", "e2fsck call"),
        (
            checks.probe_systemd_nspawn,
            Feature.SYSTEMD_NSPAWN,
            Severity.OPTIONAL,
            "systemd-container",
            "not used by vmcraft",
        ),
        (
            checks.probe_qemu_system,
            Feature.QEMU_SYSTEM,
            Severity.OPTIONAL,
            "qemu-system-x86",
            "never boots a guest",
        ),
        (
            checks.probe_debootstrap,
            Feature.DEBOOTSTRAP,
            Severity.OPTIONAL,
            "debootstrap",
            "cannot be built",
        ),
    ],
)
def test_a_missing_program_is_reported_with_its_package_and_fallback(
    mocker: MockerFixture,
    *,
    probe: Callable[[], Probe],
    feature: Feature,
    severity: Severity,
    package: str,
    fallback: str,
) -> None:
    mocker.patch("vmcraft.doctor.checks._which", return_value=None)
    run = mocker.patch("vmcraft.doctor.checks.run_tool")

    found = probe()

    assert (found.name, found.available, found.severity) == (feature, False, severity)
    assert f"(Debian package {package})" in found.detail
    assert fallback in found.fallback
    run.assert_not_called()


def test_a_present_program_is_asked_its_version(mocker: MockerFixture) -> None:
    mocker.patch("vmcraft.doctor.checks._which", return_value="/usr/bin/qemu-img")
    run = mocker.patch(
        "vmcraft.doctor.checks.run_tool", return_value=completed(0, "qemu-img version 7.2.22\n")
    )

    found = checks.probe_qemu_img()

    assert found.available
    assert found.detail == "qemu-img version 7.2.22"
    assert run.call_args.args[0] == ["/usr/bin/qemu-img", "--version"]


# -- devices and kernel features ------------------------------------------------


def test_no_loop_control_leaves_vmcraft_nothing(mocker: MockerFixture, as_root: None) -> None:
    mocker.patch("vmcraft.doctor.checks.os.path.exists", return_value=False)
    mocker.patch("vmcraft.doctor.checks._misc_devices", return_value=set())

    found = checks.probe_loop()

    assert (found.available, found.severity) == (False, Severity.REQUIRED)
    assert "the loop driver is not loaded" in found.detail
    assert found.fallback.startswith("no image can be attached")


def test_a_loop_control_that_does_not_open_is_missing(mocker: MockerFixture, as_root: None) -> None:
    mocker.patch("vmcraft.doctor.checks.os.path.exists", return_value=True)
    mocker.patch("vmcraft.doctor.checks._open_device", return_value="No such device")

    found = checks.probe_loop()

    assert not found.available
    assert found.detail == "/dev/loop-control does not open: No such device"


def test_loop_is_judged_by_its_node_when_not_root(mocker: MockerFixture) -> None:
    mocker.patch("vmcraft.doctor.checks.os.geteuid", return_value=1000)
    mocker.patch("vmcraft.doctor.checks.os.path.exists", return_value=True)
    mocker.patch("vmcraft.doctor.checks._misc_devices", return_value={"loop-control"})
    opened = mocker.patch("vmcraft.doctor.checks._open_device")

    found = checks.probe_loop()

    assert found.available
    assert "not opened" in found.detail
    opened.assert_not_called()


def test_old_kernels_set_loop_devices_up_in_two_ioctls(mocker: MockerFixture) -> None:
    mocker.patch("vmcraft.doctor.checks.kernel_version", return_value=(5, 4))

    found = checks.probe_loop_configure()

    assert not found.available
    assert "LOOP_SET_FD then LOOP_SET_STATUS64" in found.fallback
    assert found.method.startswith("kernel version")


def test_no_fuse_sends_other_formats_to_nbd_or_refuses_them(mocker: MockerFixture) -> None:
    mocker.patch("vmcraft.doctor.checks.os.path.exists", return_value=False)

    found = checks.probe_fuse()

    assert (found.available, found.severity) == (False, Severity.DEGRADED)
    assert "qemu-nbd when /dev/fuse does not exist and /dev/nbd0 does" in found.fallback
    assert "refused otherwise" in found.fallback


def test_a_fuse_node_that_does_not_open_is_missing(mocker: MockerFixture, as_root: None) -> None:
    mocker.patch("vmcraft.doctor.checks.os.path.exists", return_value=True)
    mocker.patch("vmcraft.doctor.checks._open_device", return_value="No such device")

    found = checks.probe_fuse()

    assert not found.available
    assert "qemu-nbd is not tried while the node exists" in found.detail


def test_no_nbd_module_is_optional_while_fuse_works(mocker: MockerFixture) -> None:
    mocker.patch("vmcraft.doctor.checks.os.path.exists", return_value=False)
    mocker.patch("vmcraft.doctor.checks.os.path.isdir", return_value=False)

    found = checks.probe_nbd()

    assert (found.available, found.severity) == (False, Severity.OPTIONAL)
    assert found.detail == "no nbd module (vmcraft does not load modules)"
    assert "qemu-storage-daemon's FUSE export" in found.fallback


def test_no_device_mapper_reaches_linear_lvs_by_loop(mocker: MockerFixture, as_root: None) -> None:
    mocker.patch("vmcraft.doctor.checks._misc_devices", return_value={"loop-control"})
    mocker.patch("vmcraft.doctor.checks.os.path.exists", return_value=True)
    mocker.patch("vmcraft.doctor.checks._open_device", return_value="No such device")

    found = checks.probe_device_mapper()

    assert not found.available
    assert "no device-mapper in /proc/misc" in found.detail
    assert "a linear LV is reached by a loop device" in found.fallback
    assert "unreachable" in found.fallback


def test_no_vfat_stages_the_esp_with_mtools(mocker: MockerFixture) -> None:
    mocker.patch("vmcraft.doctor.checks._filesystems", return_value={"ext4", "tmpfs"})

    found = checks.probe_vfat()

    assert not found.available
    assert "staged in a private tmpfs with mtools" in found.fallback
    assert "--reinstall-grub" in found.fallback


def test_the_sandbox_filter_knows_x86_64_only(mocker: MockerFixture) -> None:
    mocker.patch("vmcraft.doctor.checks.platform.machine", return_value="aarch64")

    found = checks.probe_seccomp()

    assert not found.available
    assert "SandboxUnavailableError" in found.fallback


def test_no_seccomp_in_the_kernel(mocker: MockerFixture) -> None:
    mocker.patch("vmcraft.doctor.checks.platform.machine", return_value="x86_64")
    mocker.patch("vmcraft.doctor.checks._read", return_value="Name:\tpython\nPid:\t1\n")

    found = checks.probe_seccomp()

    assert not found.available
    assert "CONFIG_SECCOMP" in found.detail
    assert "bwrap --seccomp fails" in found.fallback


def test_user_namespaces_off(mocker: MockerFixture) -> None:
    mocker.patch("vmcraft.doctor.checks._read", side_effect=["0\n", None])

    found = checks.probe_user_namespaces()

    assert (found.available, found.severity) == (False, Severity.OPTIONAL)
    assert found.detail == "max_user_namespaces 0"
    assert "not used by vmcraft" in found.fallback


# -- trials -------------------------------------------------------------------


def test_idmapped_mounts_by_kernel_version_before_5_12(
    mocker: MockerFixture, as_root: None
) -> None:
    mocker.patch("vmcraft.doctor.checks.kernel_version", return_value=(5, 10))
    run = mocker.patch("vmcraft.doctor.checks.run_tool")

    found = checks.probe_idmapped_mounts()

    assert not found.available
    assert found.method == "kernel version"
    run.assert_not_called()


def test_idmapped_mounts_not_tried_where_tmpfs_cannot_take_them(
    mocker: MockerFixture, as_root: None
) -> None:
    mocker.patch("vmcraft.doctor.checks.kernel_version", return_value=(6, 1))
    run = mocker.patch("vmcraft.doctor.checks.run_tool")

    found = checks.probe_idmapped_mounts()

    assert found.available
    assert "not tried: tmpfs takes idmappings from 6.3" in found.detail
    run.assert_not_called()


def test_an_idmap_the_kernel_refuses(mocker: MockerFixture, as_root: None) -> None:
    mocker.patch("vmcraft.doctor.checks.kernel_version", return_value=(6, 8))
    run = mocker.patch(
        "vmcraft.doctor.checks.run_tool",
        return_value=completed(1, "mount_setattr(MOUNT_ATTR_IDMAP): Operation not permitted\n"),
    )

    found = checks.probe_idmapped_mounts()

    assert not found.available
    assert found.detail.endswith(
        "refused: mount_setattr(MOUNT_ATTR_IDMAP): Operation not permitted"
    )
    assert "private mount namespace" in found.method
    argv = run.call_args.args[0]
    assert argv[1:3] == ["-I", "-S"]
    assert argv[3] == str(checks.IDMAP_TRIAL)


def test_a_sandbox_that_does_not_start(mocker: MockerFixture, as_root: None) -> None:
    mocker.patch("vmcraft.doctor.checks._which", return_value="/usr/bin/bwrap")
    mocker.patch("vmcraft.sandbox.bwrap.host_tool", return_value="/usr/bin/bwrap")
    run = mocker.patch(
        "vmcraft.doctor.checks.run_tool",
        side_effect=[
            completed(0, "bubblewrap 0.8.0\n"),
            completed(1, "", "bwrap: Creating new namespace failed: Operation not permitted\n"),
        ],
    )

    found = checks.probe_bubblewrap()

    assert not found.available
    assert found.detail == (
        "bubblewrap 0.8.0; the sandbox does not start: "
        "bwrap: Creating new namespace failed: Operation not permitted"
    )
    assert "--isolation host" in found.fallback
    trial = run.call_args.args[0]
    assert trial[trial.index("--ro-bind") + 1 : trial.index("--ro-bind") + 3] == ["/", "/"]
    assert "--bind" not in trial, "the host's root is never bound writable"
    assert trial[-2:] == ["--", "true"]


def test_a_sandbox_without_its_filter(mocker: MockerFixture, as_root: None) -> None:
    mocker.patch("vmcraft.doctor.checks._which", return_value="/usr/bin/bwrap")
    mocker.patch("vmcraft.doctor.checks.run_tool", return_value=completed(0, "bubblewrap 0.8.0\n"))
    mocker.patch(
        "vmcraft.doctor.checks.seccomp.program_fd",
        side_effect=SandboxUnavailableError("knows x86_64 hosts only, not riscv64"),
    )

    found = checks.probe_bubblewrap()

    assert not found.available
    assert found.detail == "knows x86_64 hosts only, not riscv64"


# -- the report -----------------------------------------------------------------


def probe(name: Feature, available: bool, severity: Severity) -> Probe:
    return Probe(name, available, severity, f"{name} detail", f"{name} fallback", "test")


def report(*probes: Probe) -> HostReport:
    return HostReport(probes=probes, kernel="6.18.0", machine="x86_64", elapsed_ms=12.5)


ROOT_OK = probe(Feature.ROOT, True, Severity.REQUIRED)


@pytest.mark.parametrize(
    ("probes", "usable", "code"),
    [
        pytest.param((ROOT_OK, probe(Feature.LOOP, True, Severity.REQUIRED)), True, 0, id="all"),
        pytest.param(
            (ROOT_OK, probe(Feature.VFAT, False, Severity.DEGRADED)), True, 0, id="degraded"
        ),
        pytest.param(
            (ROOT_OK, probe(Feature.NBD, False, Severity.OPTIONAL)), True, 0, id="optional"
        ),
        pytest.param(
            (ROOT_OK, probe(Feature.LOOP, False, Severity.REQUIRED)), False, 6, id="no-loop"
        ),
        pytest.param(
            (
                probe(Feature.ROOT, False, Severity.REQUIRED),
                probe(Feature.LOOP, False, Severity.REQUIRED),
            ),
            False,
            4,
            id="not-root",
        ),
    ],
)
def test_usable_and_exit_code(probes: tuple[Probe, ...], usable: bool, code: int) -> None:
    found = report(*probes)

    assert found.usable is usable
    assert found.exit_code == code


def test_json_shape() -> None:
    data = report(ROOT_OK, probe(Feature.VFAT, False, Severity.DEGRADED)).to_dict()

    assert json.loads(json.dumps(data)) == data
    assert list(data) == [
        "schema",
        "usable",
        "exit_code",
        "kernel",
        "machine",
        "elapsed_ms",
        "probes",
    ]
    assert (data["schema"], data["usable"], data["exit_code"]) == (1, True, 0)
    assert data["probes"][1] == {
        "name": "vfat",
        "available": False,
        "severity": "degraded",
        "detail": "vfat detail",
        "fallback": "vfat fallback",
        "method": "test",
    }


def test_text_shows_the_fallback_of_what_is_missing_only() -> None:
    text = report(
        ROOT_OK,
        probe(Feature.VFAT, False, Severity.DEGRADED),
        probe(Feature.LOOP, False, Severity.REQUIRED),
    ).to_text()

    lines = text.splitlines()
    assert lines[0] == "vmcraft doctor: Linux 6.18.0 (x86_64), probed in 12 ms"
    assert re.search(r"^root +ok +required +root detail$", text, re.M)
    assert re.search(r"^vfat +missing +degraded", text, re.M)
    assert re.search(r"^loop +MISSING +required", text, re.M)
    assert "without it: vfat fallback" in text
    assert "root fallback" not in text
    assert lines[-1] == "vmcraft cannot work on this host: it needs loop"


def test_check_host_runs_every_probe_once_in_order(mocker: MockerFixture) -> None:
    made = [probe(feature, True, Severity.OPTIONAL) for feature in Feature]
    mocker.patch.object(checks, "PROBES", tuple((lambda p=p: p) for p in made))

    found = doctor.check_host()

    assert found.probes == tuple(made)
    assert found.elapsed_ms >= 0


def test_every_feature_has_exactly_one_probe() -> None:
    names = [fn.__name__ for fn in checks.PROBES]
    assert len(set(names)) == len(names) == len(Feature)


@pytest.mark.parametrize(
    ("release", "version"),
    [("6.18.44-fc-v1147", (6, 18)), ("5.10.0-28-amd64", (5, 10)), ("6.1", (6, 1)), ("4", (4, 0))],
)
def test_kernel_version(release: str, version: tuple[int, int]) -> None:
    assert checks.kernel_version(release) == version


def test_docs_list_every_feature_with_its_severity(mocker: MockerFixture) -> None:
    # Only files are read: every program "answers", nothing is run.
    mocker.patch("vmcraft.doctor.checks.run_tool", return_value=completed(0, "v 1\n"))
    severities = {p.name.value: p.severity.value for p in doctor.check_host().probes}

    text = (REPO / "docs" / "cli.md").read_text()
    rows = dict(re.findall(r"^\| `([\w-]+)` \| (required|degraded|optional) \|", text, re.M))
    assert rows == severities
    assert set(severities) == {feature.value for feature in Feature}


# -- the CLI ----------------------------------------------------------------------


def test_cli_doctor_json(mocker: MockerFixture, capsys: pytest.CaptureFixture[str]) -> None:
    mocker.patch(
        "vmcraft.cli.check_host",
        return_value=report(ROOT_OK, probe(Feature.LOOP, False, Severity.REQUIRED)),
    )

    assert cli.main(["doctor", "--json"]) == ExitCode.HOST

    data = json.loads(capsys.readouterr().out)
    assert data["usable"] is False
    assert [p["name"] for p in data["probes"]] == ["root", "loop"]


def test_cli_doctor_text(mocker: MockerFixture, capsys: pytest.CaptureFixture[str]) -> None:
    mocker.patch("vmcraft.cli.check_host", return_value=report(ROOT_OK))

    assert cli.main(["doctor"]) == 0

    assert capsys.readouterr().out.endswith("vmcraft can work on this host\n")


HOST_FEATURE_ERRORS = [
    pytest.param(HostToolMissingError("bwrap", "bubblewrap"), 6, id="tool"),
    pytest.param(SandboxUnavailableError("the sandbox knows x86_64 only"), 6, id="sandbox"),
    pytest.param(HostDeviceError("cannot open /dev/loop-control: No such device"), 6, id="loop"),
    pytest.param(HostDeviceError("/dev/fuse is missing"), 6, id="fuse"),
    pytest.param(HostUnsupportedGuestError("--reinstall-grub ... needs vfat"), 5, id="vfat"),
]
OTHER_ERRORS = [
    pytest.param(NotRootError("launching needs root"), 4, id="root"),
    pytest.param(ImageFormatError("'x' has a backing file"), 3, id="format"),
    pytest.param(DriveError("launch: no drives added"), 6, id="drive"),
    pytest.param(MountError("mount failed"), 6, id="mount"),
    pytest.param(UnsupportedGuestError("'arch' guests are not supported"), 5, id="guest"),
    pytest.param(CommandError(["dracut"], 1, "", "dracut: failed"), 1, id="command"),
]


@pytest.mark.parametrize(("error", "code"), HOST_FEATURE_ERRORS)
def test_a_host_feature_error_points_at_doctor(
    mocker: MockerFixture, capsys: pytest.CaptureFixture[str], error: VMCraftError, code: int
) -> None:
    mocker.patch("vmcraft.cli.fix_boot", side_effect=error)

    assert cli.main(["fix-boot", "guest.qcow2"]) == code

    assert capsys.readouterr().err == (
        f"vmcraft fix-boot: {error}\nvmcraft: run `vmcraft doctor` to see what this host offers\n"
    )


@pytest.mark.parametrize(("error", "code"), OTHER_ERRORS)
def test_other_errors_do_not(
    mocker: MockerFixture, capsys: pytest.CaptureFixture[str], error: VMCraftError, code: int
) -> None:
    mocker.patch("vmcraft.cli.fix_boot", side_effect=error)

    assert cli.main(["fix-boot", "guest.qcow2"]) == code

    assert "vmcraft doctor" not in capsys.readouterr().err


@pytest.mark.parametrize(("error", "code"), [*HOST_FEATURE_ERRORS, *OTHER_ERRORS])
def test_the_marker_keeps_exit_codes(error: VMCraftError, code: int) -> None:
    assert exit_code_for(error) == code


def test_fix_boot_json_points_at_doctor_too(
    mocker: MockerFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    failed = FixBootReport(version=package_version(), image="guest.qcow2", dry_run=False)
    failed.fail(HostDeviceError("/dev/fuse is missing: cannot attach qcow2 images on this host"))
    mocker.patch("vmcraft.cli.fix_boot", return_value=failed)

    assert cli.main(["fix-boot", "guest.qcow2", "--json"]) == 6

    captured = capsys.readouterr()
    assert "host_feature_missing" not in json.loads(captured.out)
    assert captured.err.endswith("vmcraft: run `vmcraft doctor` to see what this host offers\n")


# -- the raise sites carry the marker ----------------------------------------------


def test_no_loop_control_is_a_host_feature_error(mocker: MockerFixture) -> None:
    mocker.patch(
        "vmcraft.disks.loop.os.open", side_effect=FileNotFoundError(errno.ENOENT, "No such file")
    )

    with pytest.raises(HostDeviceError, match="cannot open /dev/loop-control") as caught:
        loop._configure_free_device(loop._LoopConfig(), readonly=True)
    assert isinstance(caught.value, (DriveError, HostFeatureError))


def test_no_dev_fuse_is_a_host_feature_error(mocker: MockerFixture, tmp_path: Path) -> None:
    mocker.patch("vmcraft.disks.qsd.host_tool", return_value="/usr/bin/qemu-storage-daemon")
    mocker.patch("vmcraft.disks.qsd.os.path.exists", return_value=False)

    with pytest.raises(HostDeviceError, match="/dev/fuse is missing"):
        qsd.start_export(tmp_path / "a.qcow2", "qcow2", tmp_path / "a.raw", readonly=True)
