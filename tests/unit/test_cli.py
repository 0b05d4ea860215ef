"""The ``vmcraft`` command line, in process: parsing, exit codes, output.

``vmcraft.cli.main`` is called with an argv list; what needs root (the
repair itself, finding leftovers) is patched out, so nothing is attached,
mounted or run. A missing image and a non-root caller are real: the image
checks and the privilege check run before anything is attached.
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest.mock import MagicMock

import pytest
import structlog
from pytest_mock import MockerFixture

from vmcraft import cli
from vmcraft.cleanup import Leftover
from vmcraft.errors import (
    CommandError,
    GuestRootError,
    HostToolMissingError,
    ImageFormatError,
    ImageNotFoundError,
    MountError,
    NotRootError,
    UnknownDeviceError,
    VMCraftError,
)
from vmcraft.fixers.fixboot import (
    FixBootOptions,
    FixBootReport,
    MountedFS,
    PlannedCommand,
    Step,
)
from vmcraft.fixers.layout import UnsupportedGuestError
from vmcraft.report import Attempt, Check, StepReport
from vmcraft.version import package_version

ProgressFn = Callable[[str, str, float | None], None]


@pytest.fixture
def image(tmp_path: Path) -> Path:
    """A real, small raw image: 1 MiB of zeros."""
    path = tmp_path / "disk.raw"
    with path.open("wb") as f:
        f.truncate(1024 * 1024)
    return path


def ok_report(*, dry_run: bool = False, image: str = "/images/guest.qcow2") -> FixBootReport:
    report = FixBootReport(
        version=package_version(),
        image=image,
        dry_run=dry_run,
        root="/dev/sda1",
        distro="debian",
        family="debian",
        product="Debian GNU/Linux 12 (bookworm)",
        boot_mode="bios",
        kernels=["6.1.0-13-amd64"],
        mounted=[MountedFS("/dev/sda1", "/", "ext4", "kernel", False)],
        plan=[
            PlannedCommand(Step.INITRAMFS, ("update-initramfs", "-u", "-k", "all")),
            PlannedCommand(Step.BOOTLOADER, ("update-grub",)),
        ],
        timings={"initramfs": 1.0, "bootloader": 0.5, "total": 2.0},
    )
    if not dry_run:
        report.initramfs = StepReport(
            attempts=[Attempt(["update-initramfs", "-u", "-k", "all"], True, "")],
            checks=[Check("initramfs for 6.1.0-13-amd64 is fresh", True, "31000000 bytes")],
        )
        report.bootloader = StepReport(
            attempts=[Attempt(["update-grub"], True, "done")],
            checks=[Check("root named by a stable name", True, "UUID=abc")],
        )
    return report


def failed_report() -> FixBootReport:
    report = ok_report()
    report.bootloader = StepReport(
        attempts=[Attempt(["update-grub"], True, "Generating grub configuration file ...\ndone")],
        checks=[
            Check("grub.cfg is not empty", True),
            Check("root is not a host-only device", False, "root=/dev/loop0p2"),
        ],
    )
    return report


def patch_fix_boot(
    mocker: MockerFixture,
    report: FixBootReport | None = None,
    *,
    error: BaseException | None = None,
) -> MagicMock:
    """Replace the repair; it reports one phase through the progress callback first."""

    def fake(image: str, *, progress: ProgressFn, **_: Any) -> FixBootReport:
        progress("initramfs", "start", None)
        if error is not None:
            progress("initramfs", "failed", 0.2)
            raise error
        progress("initramfs", "done", 1.0)
        assert report is not None
        return report

    mock: MagicMock = mocker.patch("vmcraft.cli.fix_boot", side_effect=fake)
    return mock


# -- help and parsing ---------------------------------------------------------


def test_top_level_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["--help"])

    assert exited.value.code == 0
    out = capsys.readouterr().out
    for word in ("fix-boot", "inspect", "run", "cleanup", "demo", "--version", "--verbose"):
        assert word in out
    assert "130" in out, "the exit codes are in the help"
    assert "not running as root" in out


@pytest.mark.parametrize(
    ("subcommand", "options"),
    [
        (
            "fix-boot",
            (
                "--update-grub",
                "--regen-initramfs",
                "--reinstall-grub",
                "--report",
                "--dry-run",
                "--json",
                "--timeout",
                "--format",
            ),
        ),
        ("inspect", ("--format", "--json")),
        ("run", ("--with-mounts", "--rw", "--timeout", "--format")),
        ("cleanup", ("--dry-run", "--json")),
        ("demo", ("--image", "--json", "/var/lib/vmcraft/demo.qcow2")),
    ],
)
def test_subcommand_help(
    capsys: pytest.CaptureFixture[str], subcommand: str, options: tuple[str, ...]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main([subcommand, "--help"])

    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert f"vmcraft {subcommand}" in out
    for option in options:
        assert option in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["--version"])

    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"vmcraft {package_version()}"


@pytest.mark.parametrize("argv", [["frobnicate"], [], ["fix-boot"], ["fix-boot", "x", "--nope"]])
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)

    assert exited.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "usage: vmcraft" in captured.err


def test_unknown_subcommand_names_the_choices(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["frobnicate"])

    assert "invalid choice: 'frobnicate'" in capsys.readouterr().err


# -- errors and exit codes ------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["fix-boot"], id="fix-boot"),
        pytest.param(["fix-boot", "--dry-run"], id="fix-boot-dry-run"),
        pytest.param(["inspect"], id="inspect"),
        pytest.param(["run", "--", "true"], id="run"),
    ],
)
def test_missing_image_is_bad_input(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str]
) -> None:
    missing = tmp_path / "missing.qcow2"
    subcommand = argv[0]

    code = cli.main([subcommand, str(missing), *argv[1:]])

    assert code == cli.EXIT_INPUT == 3
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"vmcraft {subcommand}: image {str(missing)!r} does not exist\n"


def test_a_directory_is_not_an_image(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code = cli.main(["inspect", str(tmp_path)])

    assert code == 3
    assert "is not a file or block device" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img to vet the image")
@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["fix-boot"], id="fix-boot"),
        pytest.param(["inspect"], id="inspect"),
        pytest.param(["run", "--", "true"], id="run"),
    ],
)
def test_not_root_exits_4(
    capsys: pytest.CaptureFixture[str], mocker: MockerFixture, image: Path, argv: list[str]
) -> None:
    mocker.patch("vmcraft.host.os.geteuid", return_value=1000)
    subcommand = argv[0]

    code = cli.main([subcommand, str(image), *argv[1:]])

    assert code == cli.EXIT_ROOT == 4
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"vmcraft {subcommand}: ")
    assert "needs root" in lines[0]
    assert "uid 1000" in lines[0]


@pytest.mark.parametrize(
    ("error", "code"),
    [
        pytest.param(UnsupportedGuestError("'archlinux' guests are not supported"), 5, id="guest"),
        pytest.param(HostToolMissingError("qemu-img", "qemu-utils"), 6, id="host-tool"),
        pytest.param(NotRootError("launching needs root"), 4, id="root"),
        pytest.param(ImageFormatError("'x' has a backing file"), 3, id="format"),
        pytest.param(MountError("mount failed"), 6, id="mount"),
        pytest.param(CommandError(["dracut"], 1, "", "dracut: failed"), 1, id="command"),
    ],
)
def test_fix_boot_errors_map_to_exit_codes(
    capsys: pytest.CaptureFixture[str],
    mocker: MockerFixture,
    error: VMCraftError,
    code: int,
) -> None:
    patch_fix_boot(mocker, error=error)

    assert cli.main(["fix-boot", "guest.qcow2"]) == code

    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"vmcraft fix-boot: {error}\n" in captured.err


def test_host_tool_missing_names_the_package(
    capsys: pytest.CaptureFixture[str], mocker: MockerFixture
) -> None:
    patch_fix_boot(mocker, error=HostToolMissingError("qemu-storage-daemon", "qemu-system-common"))

    assert cli.main(["fix-boot", "guest.qcow2"]) == cli.EXIT_HOST == 6
    assert "(Debian package qemu-system-common)" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (NotRootError("x"), 4),
        (UnsupportedGuestError("x"), 5),
        (ImageNotFoundError("x"), 3),
        (ImageFormatError("x"), 3),
        (UnknownDeviceError("x"), 3),
        (GuestRootError("x"), 3),
        (HostToolMissingError("qemu-img"), 6),
        (CommandError(["false"], 1, "", ""), 1),
        (MountError("x"), 6),
        (VMCraftError("x"), 6),
    ],
)
def test_exit_code_for(error: VMCraftError, code: int) -> None:
    assert cli.exit_code_for(error) == code


def test_interrupt_exits_130(capsys: pytest.CaptureFixture[str], mocker: MockerFixture) -> None:
    patch_fix_boot(mocker, error=KeyboardInterrupt())

    with pytest.raises(SystemExit) as exited:
        cli.main(["fix-boot", "guest.qcow2"])

    assert exited.value.code == cli.EXIT_INTERRUPTED == 130
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "vmcraft: interrupted" in captured.err
    assert "vmcraft: initramfs FAILED (0.2 s)" in captured.err


# -- fix-boot output ------------------------------------------------------------


def test_fix_boot_success(capsys: pytest.CaptureFixture[str], mocker: MockerFixture) -> None:
    patch_fix_boot(mocker, ok_report())

    assert cli.main(["fix-boot", "guest.qcow2"]) == cli.EXIT_OK

    captured = capsys.readouterr()
    assert "guest       Debian GNU/Linux 12 (bookworm) (debian, bios), root /dev/sda1" in (
        captured.out
    )
    assert "mounted     /dev/sda1 on / (ext4)" in captured.out
    assert "result      success in 2.0 s" in captured.out
    assert "FAILED" not in captured.out
    # Progress goes to stderr, never into the report on stdout.
    assert captured.err == "vmcraft: initramfs ...\nvmcraft: initramfs done (1.0 s)\n"
    assert "vmcraft:" not in captured.out


def test_fix_boot_failed_step_exits_1_with_the_reason(
    capsys: pytest.CaptureFixture[str], mocker: MockerFixture
) -> None:
    patch_fix_boot(mocker, failed_report())

    assert cli.main(["fix-boot", "guest.qcow2"]) == cli.EXIT_FAILED == 1

    out = capsys.readouterr().out
    assert "FAILED" in out
    assert "reason: root is not a host-only device: root=/dev/loop0p2" in out
    assert "result      FAILED" in out


def test_render_report_failed_step() -> None:
    text = cli.render_report(failed_report())
    lines = text.splitlines()

    bootloader = next(ln for ln in lines if ln.startswith("bootloader"))
    assert "FAILED" in bootloader
    assert bootloader.endswith("update-grub")
    assert "              + grub.cfg is not empty" in lines
    assert "              - root is not a host-only device (root=/dev/loop0p2)" in lines
    assert "              reason: root is not a host-only device: root=/dev/loop0p2" in lines
    initramfs = next(ln for ln in lines if ln.startswith("initramfs"))
    assert " ok " in initramfs
    assert lines[-1] == "result      FAILED in 2.0 s"


def test_render_report_failed_command_shows_its_last_line() -> None:
    report = ok_report()
    report.initramfs = StepReport(
        attempts=[
            Attempt(
                ["update-initramfs", "-u", "-k", "all"],
                False,
                "update-initramfs: Generating /boot/initrd.img-6.1.0-13-amd64\n"
                "E: /usr/share/initramfs-tools/hooks/fsck failed with return 1.",
            )
        ]
    )

    text = cli.render_report(report)

    assert (
        "reason: update-initramfs -u -k all: E: /usr/share/initramfs-tools/hooks/fsck "
        "failed with return 1."
    ) in text


def test_render_report_dry_run_lists_the_plan() -> None:
    report = ok_report(dry_run=True)
    report.notes.append("grub-install skipped: /boot is not on a partition of a drive")

    text = cli.render_report(report)

    assert "plan        (dry run: nothing was changed)" in text
    assert "  initramfs    update-initramfs -u -k all" in text
    assert "  bootloader   update-grub" in text
    assert "note        grub-install skipped: /boot is not on a partition of a drive" in text
    assert text.splitlines()[-1] == "result      success in 2.0 s"


def test_render_report_error() -> None:
    report = ok_report(dry_run=True)
    report.error = "mount /dev/sda1: wrong fs type"

    text = cli.render_report(report)

    assert "error       mount /dev/sda1: wrong fs type" in text
    assert "result      FAILED" in text


@pytest.mark.parametrize(
    ("report", "code"), [(ok_report(), 0), (failed_report(), 1), (ok_report(dry_run=True), 0)]
)
def test_json_prints_one_document_and_no_progress(
    capsys: pytest.CaptureFixture[str], mocker: MockerFixture, report: FixBootReport, code: int
) -> None:
    patch_fix_boot(mocker, report)

    assert cli.main(["fix-boot", "guest.qcow2", "--json"]) == code

    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert data == report.to_dict()
    assert data["success"] is (code == 0)
    assert "vmcraft:" not in captured.out
    assert captured.err == "", "--json turns progress off"


def test_report_and_format_are_passed_on(mocker: MockerFixture, tmp_path: Path) -> None:
    mock = patch_fix_boot(mocker, ok_report())
    report_path = tmp_path / "report.json"

    cli.main(["fix-boot", "guest.vmdk", "--format", "vmdk", "--report", str(report_path), "--json"])

    mock.assert_called_once()
    (image,) = mock.call_args.args
    assert image == "guest.vmdk"
    assert mock.call_args.kwargs["format"] == "vmdk"
    assert mock.call_args.kwargs["report_path"] == report_path
    assert isinstance(mock.call_args.kwargs["progress"], cli.Progress)
    assert not mock.call_args.kwargs["progress"].enabled


# -- fix-boot options -------------------------------------------------------------


def options_for(mocker: MockerFixture, *flags: str) -> FixBootOptions:
    mock = patch_fix_boot(mocker, ok_report())
    cli.main(["fix-boot", "guest.qcow2", "--json", *flags])
    options = mock.call_args.kwargs["options"]
    assert isinstance(options, FixBootOptions)
    return options


@pytest.mark.parametrize(
    ("flags", "update_grub", "regen_initramfs", "reinstall_grub"),
    [
        # None: the step runs when it finds something to fix; True: always.
        pytest.param((), None, None, False, id="no-flags"),
        pytest.param(("--update-grub",), True, None, False, id="update-grub"),
        pytest.param(("--regen-initramfs",), None, True, False, id="regen-initramfs"),
        pytest.param(("--update-grub", "--regen-initramfs"), True, True, False, id="both"),
        pytest.param(("--reinstall-grub",), None, None, True, id="reinstall-only"),
        pytest.param(("--update-grub", "--reinstall-grub"), True, None, True, id="grub-both"),
    ],
)
def test_options_mapping(
    mocker: MockerFixture,
    flags: tuple[str, ...],
    update_grub: bool,
    regen_initramfs: bool,
    reinstall_grub: bool,
) -> None:
    options = options_for(mocker, *flags)

    assert options.update_grub is update_grub
    assert options.regen_initramfs is regen_initramfs
    assert options.reinstall_grub is reinstall_grub
    assert options.dry_run is False
    assert options.timeout == 1800


def test_dry_run_and_timeout_options(mocker: MockerFixture) -> None:
    options = options_for(mocker, "--dry-run", "--timeout", "60")

    assert options.dry_run is True
    assert options.timeout == 60.0


# -- run ------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["run", "guest.qcow2"], ["run", "guest.qcow2", "--"]])
def test_run_without_a_command(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)

    assert exited.value.code == "vmcraft run: no command given (vmcraft run IMAGE -- CMD ...)"
    assert capsys.readouterr().out == ""


# -- cleanup --------------------------------------------------------------------


def test_cleanup_nothing_left(capsys: pytest.CaptureFixture[str], mocker: MockerFixture) -> None:
    find = mocker.patch("vmcraft.cleanup.find_leftovers", return_value=[])
    clean = mocker.patch("vmcraft.cleanup.clean")

    assert cli.main(["cleanup"]) == 0

    assert capsys.readouterr().out == "nothing left behind by vmcraft\n"
    find.assert_called_once_with()
    clean.assert_not_called()


def test_cleanup_nothing_left_json(
    capsys: pytest.CaptureFixture[str], mocker: MockerFixture
) -> None:
    mocker.patch("vmcraft.cleanup.find_leftovers", return_value=[])

    assert cli.main(["cleanup", "--json"]) == 0

    assert json.loads(capsys.readouterr().out) == {
        "dry_run": False,
        "leftovers": [],
        "failed": [],
    }


def leftover() -> Leftover:
    return Leftover(
        directory=Path("/run/vmcraft/4242-abcd"),
        pid=4242,
        mounts=["/run/vmcraft/4242-abcd/root", "/run/vmcraft/4242-abcd/root/boot"],
        daemons=[4250],
        loops=["/dev/loop7"],
    )


def test_cleanup_dry_run_lists_without_removing(
    capsys: pytest.CaptureFixture[str], mocker: MockerFixture
) -> None:
    mocker.patch("vmcraft.cleanup.find_leftovers", return_value=[leftover()])
    clean = mocker.patch("vmcraft.cleanup.clean")

    assert cli.main(["cleanup", "--dry-run"]) == 0

    assert capsys.readouterr().out == (
        "would remove /run/vmcraft/4242-abcd (pid 4242 gone): 2 mounts, 1 daemons, 1 loop devices\n"
    )
    clean.assert_not_called()


def test_cleanup_removes_and_reports_failures(
    capsys: pytest.CaptureFixture[str], mocker: MockerFixture
) -> None:
    found = leftover()
    mocker.patch("vmcraft.cleanup.find_leftovers", return_value=[found])
    clean = mocker.patch("vmcraft.cleanup.clean", side_effect=MountError("target is busy"))

    assert cli.main(["cleanup"]) == 1

    clean.assert_called_once_with(found)
    captured = capsys.readouterr()
    assert captured.out.startswith("removed /run/vmcraft/4242-abcd (pid 4242 gone)")
    assert captured.err == "FAILED /run/vmcraft/4242-abcd: target is busy\n"


def test_cleanup_json_with_a_leftover(
    capsys: pytest.CaptureFixture[str], mocker: MockerFixture
) -> None:
    mocker.patch("vmcraft.cleanup.find_leftovers", return_value=[leftover()])
    mocker.patch("vmcraft.cleanup.clean")

    assert cli.main(["cleanup", "--json"]) == 0

    data = json.loads(capsys.readouterr().out)
    assert data["dry_run"] is False
    assert data["failed"] == []
    assert data["leftovers"] == [leftover().to_dict()]


# -- Progress -------------------------------------------------------------------


def test_progress_on_a_pipe_writes_whole_lines() -> None:
    stream = io.StringIO()
    progress = cli.Progress(stream, enabled=True)

    progress("initramfs", "start", None)
    progress("initramfs", "done", 1.0)
    progress("bootloader", "start", None)
    progress("bootloader", "failed", 12.34)

    assert not progress.live
    assert stream.getvalue().splitlines() == [
        "vmcraft: initramfs ...",
        "vmcraft: initramfs done (1.0 s)",
        "vmcraft: bootloader ...",
        "vmcraft: bootloader FAILED (12.3 s)",
    ]


def test_progress_disabled_writes_nothing() -> None:
    stream = io.StringIO()
    progress = cli.Progress(stream, enabled=False)

    progress("initramfs", "start", None)
    progress("initramfs", "done", 1.0)

    assert stream.getvalue() == ""
    assert not progress.live


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_terminal_rewrites_its_line() -> None:
    stream = FakeTerminal()
    progress = cli.Progress(stream, enabled=True)
    assert progress.live

    progress("initramfs", "start", None)
    progress("initramfs", "done", 1.0)

    assert stream.getvalue().endswith("\r\033[Kvmcraft: initramfs done (1.0 s)\n")
    assert "vmcraft: initramfs ...\n" not in stream.getvalue()
    assert progress._ticker is None


@pytest.mark.parametrize(
    ("verbose", "shown"),
    [(0, {"warning"}), (1, {"warning", "info"}), (2, {"warning", "info", "debug"})],
)
def test_configure_logging_levels(
    capsys: pytest.CaptureFixture[str], verbose: int, shown: set[str]
) -> None:
    cli.configure_logging(verbose)
    log = structlog.get_logger("vmcraft.test")

    log.debug("probe-debug")
    log.info("probe-info")
    log.warning("probe-warning")

    err = capsys.readouterr().err
    assert {level for level in ("debug", "info", "warning") if f"probe-{level}" in err} == shown
