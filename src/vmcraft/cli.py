"""The ``vmcraft`` command line: fix-boot, check, inspect, run, cleanup, demo, doctor.

Exit codes (also in ``vmcraft --help``):

  0  success
  1  the repair (or the guest command) failed; the report says why
  2  usage error
  3  bad input: a missing, unreadable or unsupported image, an unknown device
  4  not running as root
  5  unsupported guest: no Linux found, or a distribution fix-boot does not know
  6  host problem: a missing tool, no loop device, a mount that failed
  130 interrupted (Ctrl-C); everything attached was released first

``vmcraft run`` exits with the guest command's own status when it fails;
``vmcraft doctor`` exits 4 or 6 when vmcraft cannot work on this host at all.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

import structlog

from vmcraft import cleanup as cleanup_mod
from vmcraft.demo.run import run_demo
from vmcraft.doctor import check_host
from vmcraft.errors import (
    ExitCode,
    HostFeatureError,
    NicPinError,
    UsageError,
    VMCraftError,
    exit_code_for,
)
from vmcraft.fixers.batch import BatchResult, fix_boot_many
from vmcraft.fixers.fixboot import (
    FixBootOptions,
    FixBootReport,
    Step,
    fix_boot,
    undo,
)
from vmcraft.fixers.fixboot import (
    check as check_image,
)
from vmcraft.fixers.layout import UnsupportedGuestError
from vmcraft.fixers.network import NicPin, check_pins
from vmcraft.guestfs.conformance import conformance_table
from vmcraft.handle import VMCraft
from vmcraft.sandbox.isolation import Isolation
from vmcraft.signals import terminate_as_interrupt
from vmcraft.version import package_version

EXIT_OK, EXIT_FAILED, EXIT_USAGE = ExitCode.OK, ExitCode.FAILED, ExitCode.USAGE
EXIT_INPUT, EXIT_ROOT, EXIT_GUEST, EXIT_HOST = (
    ExitCode.INPUT,
    ExitCode.ROOT,
    ExitCode.GUEST,
    ExitCode.HOST,
)
EXIT_INTERRUPTED = ExitCode.INTERRUPTED

__all__ = ["exit_code_for", "main"]

DOCTOR_HINT = "vmcraft: run `vmcraft doctor` to see what this host offers"
"""Printed after an error that a missing host tool, device or kernel feature caused."""


# -- output ------------------------------------------------------------------


class Progress:
    """Phase progress on stderr: a live elapsed-time line on a terminal."""

    def __init__(self, stream: TextIO, *, enabled: bool) -> None:
        self.stream = stream
        self.enabled = enabled
        self.live = enabled and stream.isatty()
        self._ticker: threading.Thread | None = None
        self._stop = threading.Event()

    def __call__(self, phase: str, state: str, elapsed: float | None) -> None:
        if not self.enabled:
            return
        if state == "start":
            self._start_ticker(phase)
            if not self.live:
                self.stream.write(f"vmcraft: {phase} ...\n")
        else:
            self._stop_ticker()
            mark = "done" if state == "done" else "FAILED"
            self.stream.write(
                f"\r\033[Kvmcraft: {phase} {mark} ({elapsed or 0:.1f} s)\n"
                if self.live
                else f"vmcraft: {phase} {mark} ({elapsed or 0:.1f} s)\n"
            )
        self.stream.flush()

    def _start_ticker(self, phase: str) -> None:
        if not self.live:
            return
        self._stop.clear()
        start = time.monotonic()

        def tick() -> None:
            while not self._stop.wait(0.5):
                self.stream.write(f"\r\033[Kvmcraft: {phase} ... {time.monotonic() - start:.0f} s")
                self.stream.flush()

        self._ticker = threading.Thread(target=tick, daemon=True)
        self._ticker.start()

    def _stop_ticker(self) -> None:
        if self._ticker is not None:
            self._stop.set()
            self._ticker.join()
            self._ticker = None


def render_report(report: FixBootReport) -> str:
    """The report for a person at a terminal."""
    lines = [
        f"guest       {report.product or '?'} ({report.distro}, {report.boot_mode}), "
        f"root {report.root}",
    ]
    for m in report.mounted:
        lines.append(f"mounted     {m.device} on {m.mountpoint} ({m.fstype})")
    if report.dry_run:
        lines.append("plan        (dry run: nothing was changed)")
        lines += [f"  {p.step:<12} {' '.join(p.cmd)}" for p in report.plan]
    for name, step in report.steps.items():
        took = report.timings.get(name)
        state = "ok" if step.success else "FAILED"
        cmd = " ".join(step.attempts[-1].cmd) if step.attempts else ""
        lines.append(f"{name:<11} {state:<6} {took or 0:>6.1f} s  {cmd}")
        for check in step.checks:
            mark = "+" if check.ok else "-"
            detail = f" ({check.detail})" if check.detail else ""
            lines.append(f"              {mark} {check.name}{detail}")
        for rewrite in step.rewrites:
            lines.append(f"              {rewrite.path}: {rewrite.before!r} -> {rewrite.after!r}")
        if step.skipped:
            lines.append(f"              skipped: {step.skipped}")
        if not step.success:
            lines.append(f"              reason: {step.reason}")
    lines += [f"restored    {r.path} ({r.action})" for r in report.restored]
    lines += [f"note        {n}" for n in report.notes]
    if report.error:
        lines.append(f"error       {report.error}")
    lines.append(
        f"result      {'success' if report.success else 'FAILED'} "
        f"in {report.timings.get('total', 0):.1f} s"
    )
    return "\n".join(lines)


def configure_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * min(verbose, 2)
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="%H:%M:%S"),
            structlog.dev.ConsoleRenderer(colors=False),
        ],
    )


def emit(data: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


# -- commands ----------------------------------------------------------------


def _options(args: argparse.Namespace) -> FixBootOptions:
    # Each step runs when it finds something to fix; these flags force one.
    return FixBootOptions(
        update_grub=True if args.update_grub else None,
        regen_initramfs=True if args.regen_initramfs else None,
        reinstall_grub=args.reinstall_grub,
        dry_run=args.dry_run,
        timeout=args.timeout,
        skip=frozenset(Step(name) for name in args.skip),
        isolation=Isolation(args.isolation),
        nics=tuple(args.nic),
    )


class _NicAction(argparse.Action):
    """``--nic NAME=MAC``, repeatable: each pin checked as it is read (a usage error, exit 2)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        pins = list(getattr(namespace, self.dest, None) or [])
        try:
            pins.append(NicPin.parse(str(values)))
            check_pins(pins)
        except NicPinError as exc:
            raise argparse.ArgumentError(self, str(exc)) from None
        setattr(namespace, self.dest, pins)


def cmd_fix_boot(args: argparse.Namespace) -> int:
    images: list[str] = args.image
    if len(images) > 1 or args.jobs is not None or args.report_dir is not None:
        return _fix_boot_many(args, images)
    args.image = images[0]
    progress = Progress(sys.stderr, enabled=not args.json)
    if args.undo:
        report = undo(args.image, format=args.format, progress=progress, report_path=args.report)
        if args.json:
            emit(report.to_dict())
        else:
            print(render_report(report))
        return report.exit_code
    report = fix_boot(
        args.image,
        format=args.format,
        options=_options(args),
        progress=progress,
        report_path=args.report,
        # With --json the report is the answer, errors included; otherwise
        # the error is printed by main() like every other subcommand's.
        raise_error=not args.json,
    )
    if args.json:
        emit(report.to_dict())
        if report.error:
            print(f"vmcraft fix-boot: {report.error}", file=sys.stderr)
            if report.host_feature_missing:
                print(DOCTOR_HINT, file=sys.stderr)
    else:
        print(render_report(report))
    return report.exit_code


def _fix_boot_many(args: argparse.Namespace, images: list[str]) -> int:
    """Many images: JSON Lines with --json, else a line per image and a summary table."""
    if args.undo:
        raise UsageError("--undo takes one image")
    if args.report is not None:
        raise UsageError("--report takes one image; use --report-dir with several")

    def done(result: BatchResult) -> None:
        if args.json:
            sys.stdout.write(json.dumps(result.to_dict()) + "\n")
            sys.stdout.flush()
        else:
            state = "ok" if result.success else "FAILED"
            why = f": {result.error}" if result.error and not result.success else ""
            print(f"{state:<7} {result.image} ({result.seconds:.1f} s){why}", file=sys.stderr)

    results = fix_boot_many(
        images,
        format=args.format,
        options=_options(args),
        jobs=args.jobs,
        report_dir=args.report_dir,
        on_done=done,
    )
    if not args.json:
        print(render_batch(results))
    failed = [r.exit_code for r in results if not r.success]
    return max(*failed, EXIT_FAILED) if failed else EXIT_OK


def render_batch(results: list[BatchResult]) -> str:
    """The summary: one row per image, in the order given."""
    width = max(len(r.image) for r in results)
    lines = [f"{'image':<{width}}  result   seconds  what"]
    for r in results:
        what = r.error or ("nothing to change" if r.report and not _changed(r.report) else "")
        state = "ok" if r.success else "FAILED"
        lines.append(f"{r.image:<{width}}  {state:<7}  {r.seconds:7.1f}  {what}")
    ok = sum(r.success for r in results)
    lines.append(f"{ok} of {len(results)} images repaired")
    return "\n".join(lines)


def _changed(report: dict[str, Any]) -> bool:
    return bool(report.get("plan"))


def render_findings(report: FixBootReport) -> str:
    lines = [
        f"guest       {report.product or '?'} ({report.distro}, {report.boot_mode}), "
        f"root {report.root}",
    ]
    if not report.findings:
        lines.append("ok          nothing found that would break this guest on KVM")
    for finding in report.findings:
        where = f" [{finding.path}]" if finding.path else ""
        detail = f": {finding.detail}" if finding.detail else ""
        lines.append(f"{finding.step.value:<11} {finding.what}{where}{detail}")
    return "\n".join(lines)


def cmd_check(args: argparse.Namespace) -> int:
    report = check_image(args.image, format=args.format)
    if args.json:
        data = report.to_dict()
        emit({key: data[key] for key in ("version", "image", "guest", "findings", "plan")})
    else:
        print(render_findings(report))
    return EXIT_FAILED if report.findings else EXIT_OK


def cmd_inspect(args: argparse.Namespace) -> int:
    with VMCraft() as g:
        g.add_drive_opts(args.image, readonly=True, format=args.format)
        g.launch()
        roots = g.inspect_os()
        data: dict[str, Any] = {
            "image": args.image,
            "devices": g.list_devices(),
            "filesystems": g.list_filesystems(),
            "lvm": {"method": g.lvm_method, "unreachable": g.unreachable_lvs},
            "operating_systems": [],
        }
        for root in roots:
            info = g.inspect(root)
            data["operating_systems"].append(
                {
                    "root": root,
                    "type": info.type,
                    "distro": info.distro,
                    "product_name": info.product_name,
                    "major_version": info.major_version,
                    "minor_version": info.minor_version,
                    "mountpoints": info.mountpoints,
                }
            )
    if args.json:
        emit(data)
    else:
        for name, fstype in data["filesystems"].items():
            print(f"{name:<20} {fstype}")
        for os_ in data["operating_systems"]:
            print(
                f"\n{os_['root']}: {os_['product_name']} ({os_['distro']} "
                f"{os_['major_version']}.{os_['minor_version']})"
            )
            for point, device in sorted(os_["mountpoints"].items()):
                print(f"  {point:<18} {device}")
        if not roots:
            print("\nno operating system found")
    return EXIT_OK if roots else EXIT_GUEST


def cmd_run(args: argparse.Namespace) -> int:
    command = args.command
    if not command:
        raise SystemExit("vmcraft run: no command given (vmcraft run IMAGE -- CMD ...)")
    with VMCraft(timeout=args.timeout, isolation=args.isolation) as g:
        g.add_drive_opts(args.image, readonly=not args.rw, format=args.format)
        g.launch()
        roots = g.inspect_os()
        if not roots:
            raise UnsupportedGuestError("no Linux operating system found on the image")
        for point, device in sorted(g.inspect_get_mountpoints(roots[0]).items()):
            try:
                g.mount(device, point)
            except VMCraftError as exc:
                print(f"vmcraft: not mounting {device} on {point}: {exc}", file=sys.stderr)
        if args.with_mounts:
            with g.hold_mounts():
                result = g.run(command)
        else:
            result = g.run(command)
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    return result.returncode


def cmd_cleanup(args: argparse.Namespace) -> int:
    leftovers = cleanup_mod.find_leftovers()
    failed = []
    if not args.dry_run:
        for leftover in leftovers:
            try:
                cleanup_mod.clean(leftover)
            except VMCraftError as exc:
                failed.append(f"{leftover.directory}: {exc}")
    if args.json:
        emit(
            {
                "dry_run": args.dry_run,
                "leftovers": [lo.to_dict() for lo in leftovers],
                "failed": failed,
            }
        )
    elif not leftovers:
        print("nothing left behind by vmcraft")
    else:
        verb = "would remove" if args.dry_run else "removed"
        for lo in leftovers:
            print(
                f"{verb} {lo.directory} (pid {lo.pid} gone): {len(lo.mounts)} mounts, "
                f"{len(lo.daemons)} daemons, {len(lo.loops)} loop devices"
            )
        for line in failed:
            print(f"FAILED {line}", file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK


def cmd_conformance(args: argparse.Namespace) -> int:
    sys.stdout.write(conformance_table())
    return EXIT_OK


def cmd_doctor(args: argparse.Namespace) -> int:
    report = check_host()
    if args.json:
        emit(report.to_dict())
    else:
        print(report.to_text())
    return report.exit_code


def cmd_demo(args: argparse.Namespace) -> int:
    return run_demo(
        args, progress=Progress(sys.stderr, enabled=not args.json), render=render_report, emit=emit
    )


# -- parser ------------------------------------------------------------------


def add_doctor_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``vmcraft doctor``: outside build_parser, which holds every other command's."""
    doctor = sub.add_parser(
        "doctor",
        help="what this host offers vmcraft, and what vmcraft does without the rest",
        description="Probe this host (root, loop, FUSE, qemu-storage-daemon, nbd, "
        "device-mapper, vfat, the sandbox, namespaces, test tools) without changing it; "
        "exits 4 (not root) or 6 (a required feature missing) when vmcraft cannot work here.",
    )
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")
    doctor.set_defaults(func=cmd_doctor)


def isolation_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--isolation",
        choices=[i.value for i in Isolation],
        default=Isolation.SANDBOX.value,
        help="where guest commands run: a sandbox (default) or the enhanced chroot "
        "with the host's /proc, /dev, /sys (docs/sandbox.md)",
    )


def _fix_boot_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fix = sub.add_parser(
        "fix-boot",
        help="make converted guest disks boot on KVM",
        description="Make converted guest disks boot on KVM: each step finds what "
        "would break, repairs it with the guest's own tools, and checks the result. "
        "Several images are repaired side by side, one process each (--jobs).",
    )
    fix.add_argument("image", nargs="+", help="disk image(s) (raw, qcow2, vmdk, vhdx, vpc...)")
    fix.add_argument("--format", help="image format (default: ask qemu-img)")
    fix.add_argument(
        "--jobs",
        "-j",
        type=int,
        default=None,
        help="images repaired at once (default: one per core)",
    )
    fix.add_argument(
        "--report-dir",
        type=Path,
        help="write each image's JSON report here, as IMAGE-NAME.json",
    )
    fix.add_argument("--update-grub", action="store_true", help="regenerate grub.cfg")
    fix.add_argument("--regen-initramfs", action="store_true", help="regenerate the initramfs")
    fix.add_argument(
        "--reinstall-grub",
        action="store_true",
        help="also reinstall GRUB on the guest's own disk (BIOS), --no-nvram (UEFI)",
    )
    fix.add_argument("--report", type=Path, help="write the JSON report here")
    fix.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    fix.add_argument("--json", action="store_true", help="print the report as JSON")
    fix.add_argument("--timeout", type=float, default=1800, help="seconds per command")
    fix.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=[step.value for step in Step],
        metavar="STEP",
        help=f"do not run this step (repeatable): {', '.join(s.value for s in Step)}",
    )
    fix.add_argument(
        "--nic",
        action=_NicAction,
        default=[],
        metavar="NAME=MAC",
        help="the NIC that has MAC on KVM keeps the name NAME, which the guest's network "
        "configuration uses (repeatable; a systemd .link file or a udev rule)",
    )
    fix.add_argument(
        "--undo",
        action="store_true",
        help="put back every file earlier fix-boot runs changed, from their journal",
    )
    isolation_arg(fix)
    fix.set_defaults(func=cmd_fix_boot)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vmcraft",
        description="Repair offline VM disks with the guest's own boot tools.",
        epilog=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"vmcraft {package_version()}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log events")
    sub = parser.add_subparsers(dest="subcommand", required=True, metavar="COMMAND")

    def image_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("image", help="disk image (raw, qcow2, vmdk, vhdx, vpc...)")
        p.add_argument("--format", help="image format (default: ask qemu-img)")

    _fix_boot_parser(sub)

    chk = sub.add_parser(
        "check",
        help="what would break this guest on KVM (read-only)",
        description="List what fix-boot would repair, changing nothing; "
        "exits 1 when something would break.",
    )
    image_args(chk)
    chk.add_argument("--json", action="store_true")
    chk.set_defaults(func=cmd_check)

    insp = sub.add_parser(
        "inspect",
        help="what operating system is on an image",
        description="Inspect an image read-only.",
    )
    image_args(insp)
    insp.add_argument("--json", action="store_true")
    insp.set_defaults(func=cmd_inspect)

    run = sub.add_parser(
        "run",
        help="run a command in the guest",
        description="Run a command in the guest, read-only unless --rw.",
    )
    image_args(run)
    run.add_argument(
        "--with-mounts",
        action="store_true",
        help="provide /proc, /dev, /sys (--isolation host; the sandbox always has them)",
    )
    isolation_arg(run)
    run.add_argument("--rw", action="store_true", help="open the image writable")
    run.add_argument("--timeout", type=float, default=600, help="seconds")
    run.add_argument("command", nargs="*", help="-- CMD [ARG...]")
    run.set_defaults(func=cmd_run)

    clean = sub.add_parser(
        "cleanup",
        help="remove what a killed vmcraft left behind",
        description="Find mounts, loop devices and daemons of vmcraft "
        "processes that are gone, and remove them; touches nothing else.",
    )
    clean.add_argument("--dry-run", action="store_true", help="only list them")
    clean.add_argument("--json", action="store_true")
    clean.set_defaults(func=cmd_cleanup)

    demo = sub.add_parser(
        "demo",
        help="fix-boot on the demo Debian guest",
        description="Build (once, about a minute) or reuse the demo Debian "
        "guest, break its boot as a converted VMware guest's is broken, "
        "and repair it with fix-boot.",
    )
    demo.add_argument(
        "--image",
        type=Path,
        default=Path("/var/lib/vmcraft/demo.qcow2"),
        help="where to put the demo image (default: %(default)s)",
    )
    demo.add_argument("--json", action="store_true")
    demo.set_defaults(func=cmd_demo)

    add_doctor_parser(sub)

    conf = sub.add_parser("conformance", help="the libguestfs conformance table (Markdown)")
    conf.set_defaults(func=cmd_conformance)
    return parser


@contextmanager
def _interrupt_as_exit() -> Iterator[None]:
    try:
        yield
    except KeyboardInterrupt:
        print("\nvmcraft: interrupted; everything attached was released", file=sys.stderr)
        raise SystemExit(EXIT_INTERRUPTED) from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    words = list(sys.argv[1:] if argv is None else argv)
    # Everything after "--" is the guest command, options included.
    guest_command: list[str] = []
    if "--" in words:
        cut = words.index("--")
        words, guest_command = words[:cut], words[cut + 1 :]
    args = parser.parse_args(words)
    if guest_command:
        if args.subcommand != "run":
            parser.error("'--' is only for 'vmcraft run IMAGE -- CMD ...'")
        args.command = [*args.command, *guest_command]
    configure_logging(args.verbose)
    # `kill PID` ends a run as Ctrl-C does: guest tree ended, changes put back, disks released.
    terminate_as_interrupt()
    func: Callable[[argparse.Namespace], int] = args.func
    with _interrupt_as_exit():
        try:
            return func(args)
        except VMCraftError as exc:
            print(f"vmcraft {args.subcommand}: {exc}", file=sys.stderr)
            if isinstance(exc, HostFeatureError):
                print(DOCTOR_HINT, file=sys.stderr)
            return exit_code_for(exc)


def console_main() -> None:
    sys.exit(main())
