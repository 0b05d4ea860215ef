"""fix-boot: make a converted guest disk boot on KVM, and prove it from what was written.

The workflow, on a handle whose drives are attached (or on a mounted root):

1. inspect the guest, mount ``/``, then ``/usr``, ``/boot`` and the ESP from
   its fstab, resolved against the guest's own devices (read-only checks
   first: a filesystem that needs its journal replayed is not touched);
2. decide the family and the boot mode (``layout.py``);
3. run the steps of ``REPAIRS`` in order (``step.py``): each finds what
   would break on KVM, read-only, and is skipped when it finds nothing;
   otherwise it fixes through the run's journal and is checked by finding
   again and by what it produced (exit status 0 is not success);
4. when a step fails, everything the run changed is put back from the
   journal, byte for byte, and the report says what was restored.

A dry run returns the findings and the plan and changes nothing (the
drives are opened read-only).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vmcraft.disks.names import dm_name
from vmcraft.errors import (
    DirtyFilesystemError,
    GuestFileError,
    HostFeatureError,
    HostUnsupportedGuestError,
    NoSpaceError,
    VMCraftError,
    exit_code_for,
)
from vmcraft.fixers.bootloader.grub import BootloaderRepair, GrubInstallRepair
from vmcraft.fixers.drivers import DriversRepair
from vmcraft.fixers.initramfs import InitramfsRepair
from vmcraft.fixers.journal import Journal, Restored
from vmcraft.fixers.journal import undo as undo_journals
from vmcraft.fixers.layout import (
    BootLayout,
    UnsupportedGuestError,
    boot_mountpoints,
    detect_layout,
)
from vmcraft.fixers.lvm import LvmRepair
from vmcraft.fixers.names import NamesRepair
from vmcraft.fixers.network import NetworkRepair, NicPin, check_pins
from vmcraft.fixers.step import Device, Finding, Repair, RepairContext, Step
from vmcraft.fixers.uefi import UefiFallbackRepair
from vmcraft.handle import VMCraft
from vmcraft.inspect.fstab import FstabEntry, local_filesystems, parse_fstab
from vmcraft.inspect.osrelease import distro_name, parse_os_release
from vmcraft.log import get_logger
from vmcraft.report import StepReport
from vmcraft.sandbox.isolation import Isolation
from vmcraft.version import package_version

log = get_logger(__name__)

__all__ = [
    "REPAIRS",
    "BootFixer",
    "FixBootOptions",
    "FixBootReport",
    "MountedFS",
    "PlannedCommand",
    "Step",
    "check",
    "fix_boot",
    "undo",
]

# os-prober would scan every disk it can see; the guest's commands get this.
GUEST_ENV = {"GRUB_DISABLE_OS_PROBER": "true", "DEBIAN_FRONTEND": "noninteractive"}

Progress = Callable[[str, str, float | None], None]
"""``progress(phase, state, elapsed_s)``: state is ``start``, ``done`` or ``failed``."""


@dataclass(frozen=True)
class FixBootOptions:
    update_grub: bool | None = None
    """None: when it is needed; True: always; False: never."""
    regen_initramfs: bool | None = None
    """None: when it is needed; True: always; False: never."""
    reinstall_grub: bool = False
    dry_run: bool = False
    timeout: float | None = 1800.0
    """Per command, in seconds: dracut on a slow guest takes minutes."""
    skip: frozenset[Step] = frozenset()
    """Steps not to run, by name."""
    isolation: Isolation | None = None
    """Where guest commands run; None: the sandbox on disk images (docs/sandbox.md)."""
    nics: tuple[NicPin, ...] = ()
    """``--nic NAME=MAC``: the NIC with MAC on KVM keeps NAME (the network step)."""

    def __post_init__(self) -> None:
        # A name or an address given twice stops the run before the image is opened.
        check_pins(self.nics)

    def forced(self, step: Step) -> bool | None:
        """True: run the step even with nothing found; False: never; None: when needed."""
        if step in self.skip:
            return False
        return {Step.INITRAMFS: self.regen_initramfs, Step.BOOTLOADER: self.update_grub}.get(step)


@dataclass(frozen=True)
class PlannedCommand:
    step: Step
    cmd: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step.value, "cmd": list(self.cmd)}


@dataclass(frozen=True)
class MountedFS:
    """One guest filesystem fix-boot mounted, as the report shows it."""

    device: str
    mountpoint: str
    fstype: str
    driver: str
    """``kernel``, or ``mtools`` for a FAT ESP on a host without vfat."""
    readonly: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FixBootReport:
    """Everything fix-boot did, in the seed's report shape and more."""

    version: str
    image: str | None
    dry_run: bool
    root: str | None = None
    distro: str | None = None
    family: str | None = None
    product: str | None = None
    boot_mode: str | None = None
    kernels: list[str] = field(default_factory=list)
    mounted: list[MountedFS] = field(default_factory=list)
    plan: list[PlannedCommand] = field(default_factory=list)
    steps: dict[Step, StepReport] = field(default_factory=dict)
    """The steps that ran, in the order they ran."""
    findings: list[Finding] = field(default_factory=list)
    """What the steps found before changing anything (all a dry run does)."""
    restored: list[Restored] = field(default_factory=list)
    """Files put back after a step failed (or by --undo)."""
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    """Why the run stopped before its steps were done (no OS found, a mount failed...)."""
    error_type: str | None = None

    @property
    def initramfs(self) -> StepReport | None:
        return self.steps.get(Step.INITRAMFS)

    @initramfs.setter
    def initramfs(self, step: StepReport) -> None:
        self.steps[Step.INITRAMFS] = step

    @property
    def bootloader(self) -> StepReport | None:
        return self.steps.get(Step.BOOTLOADER)

    @bootloader.setter
    def bootloader(self, step: StepReport) -> None:
        self.steps[Step.BOOTLOADER] = step

    @property
    def grub_install(self) -> StepReport | None:
        return self.steps.get(Step.GRUB_INSTALL)

    @grub_install.setter
    def grub_install(self, step: StepReport) -> None:
        self.steps[Step.GRUB_INSTALL] = step

    @property
    def success(self) -> bool:
        if self.error is not None:
            return False
        if self.dry_run:
            return True
        return all(step.success for step in self.steps.values())

    @property
    def changed(self) -> bool:
        """Did this run leave anything in the guest different from how it found it?"""
        return (
            any(
                (s.attempts or s.rewrites or s.removals) and s.skipped is None
                for s in self.steps.values()
            )
            and not self.restored
        )

    @property
    def exit_code(self) -> int:
        """The CLI's exit status for this report (see vmcraft.errors.exit_code_for)."""
        if self.error is not None:
            return self._error_exit
        return 0 if self.success else 1

    _error_exit: int = field(default=0, repr=False)

    host_feature_missing: bool = field(default=False, repr=False, compare=False)
    """The error came from something this host lacks (a :class:`HostFeatureError`):
    the CLI then points at ``vmcraft doctor``. Not in the JSON report."""

    def fail(self, error: BaseException) -> None:
        """Record why the run stopped: the message, its type and the exit code it maps to."""
        self.error = str(error) or type(error).__name__
        self.error_type = type(error).__name__
        self._error_exit = exit_code_for(error)
        self.host_feature_missing = isinstance(error, HostFeatureError)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "version": self.version,
            "image": self.image,
            "dry_run": self.dry_run,
            "success": self.success,
            "guest": {
                "root": self.root,
                "distro": self.distro,
                "family": self.family,
                "product": self.product,
                "boot_mode": self.boot_mode,
                "kernels": list(self.kernels),
            },
            "mounted": [m.to_dict() for m in self.mounted],
            "plan": [p.to_dict() for p in self.plan],
            "findings": [f.to_dict() for f in self.findings],
        }
        for name, step in self.steps.items():
            data[name.value] = step.to_dict()
        data["restored"] = [r.to_dict() for r in self.restored]
        data["notes"] = list(self.notes)
        data["analysis"] = {"timings": dict(self.timings)}
        data["error"] = self.error
        data["error_type"] = self.error_type
        data["exit_code"] = self.exit_code
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def __repr__(self) -> str:
        steps = ", ".join(
            f"{n.value}={'ok' if s.success else 'FAILED'}" for n, s in self.steps.items()
        )
        return (
            f"<FixBootReport {self.distro} {self.boot_mode} root={self.root} "
            f"{'dry-run ' if self.dry_run else ''}success={self.success} {steps}>"
        )


class BootFixer:
    """Drives the fix-boot workflow on an open handle, step by step if you like."""

    def __init__(
        self,
        g: VMCraft,
        options: FixBootOptions | None = None,
        *,
        progress: Progress | None = None,
        image: str | None = None,
        report: FixBootReport | None = None,
    ) -> None:
        self.g = g
        self.options = options or FixBootOptions()
        self.progress = progress or (lambda phase, state, elapsed: None)
        self.report = report or FixBootReport(
            version=package_version(), image=image, dry_run=self.options.dry_run
        )
        self.layout: BootLayout | None = None
        self._fstab: list[FstabEntry] = []
        self._repairs: list[Repair] | None = None
        self._mount_plan: list[tuple[str, str]] = []

    # -- phases -------------------------------------------------------------

    def _phase(self, name: str, key: str, work: Callable[[], None]) -> None:
        self.progress(name, "start", None)
        start = time.perf_counter()
        try:
            work()
        except BaseException:
            self.progress(name, "failed", time.perf_counter() - start)
            raise
        finally:
            self.report.timings[key] = round(time.perf_counter() - start, 3)
        self.progress(name, "done", self.report.timings[key])

    def prepare_mounts(self) -> None:
        """Find the guest and mount what the boot tools need (/, /usr, /boot, the ESP)."""
        if self.g.has_drives:
            self._phase("inspect", "inspect", self._inspect)
            self._phase("mount", "mount", self._mount)
        else:
            self._read_mounted_root()

    def prepare(self) -> BootLayout:
        """Find the guest, mount what the boot tools need, and read its layout."""
        self.prepare_mounts()
        fstab_mounts = {e.mountpoint: e.spec for e in local_filesystems(self._fstab)}
        for entry in self.report.mounted:
            fstab_mounts.setdefault(entry.mountpoint, entry.device)
        layout = detect_layout(self.g, self.report.distro or "unknown", fstab_mounts)
        self.layout = layout
        self.report.family = layout.family
        self.report.boot_mode = layout.boot_mode
        self.report.kernels = list(layout.kernels)
        self.report.notes.extend(layout.notes)
        self.report.plan = self.plan()
        if self.options.reinstall_grub and not any(
            p.step is Step.GRUB_INSTALL for p in self.report.plan
        ):
            self.report.notes.append("grub-install skipped: /boot is not on a partition of a drive")
        return layout

    def _inspect(self) -> None:
        roots = self.g.inspect_os()
        if not roots:
            raise UnsupportedGuestError("no Linux operating system found on the drives")
        if len(roots) > 1:
            self.report.notes.append(f"several roots found ({', '.join(roots)}); using {roots[0]}")
        info = self.g.inspect(roots[0])
        self.report.root = info.root
        self.report.distro = info.distro
        self.report.product = info.product_name
        self._fstab = info.fstab
        self._mount_plan = boot_mountpoints(info.mountpoints)

    def _mount(self) -> None:
        for mountpoint, device in self._mount_plan:
            if self.options.dry_run:
                self.g.mount_ro(device, mountpoint)
            else:
                if self.g.needs_journal_replay(device):
                    raise DirtyFilesystemError(
                        f"{device} ({mountpoint}) has a journal to replay: it was not shut "
                        "down cleanly. vmcraft changes nothing on it; boot the VM once on "
                        "its old platform and shut it down, or run e2fsck on a copy first"
                    )
                self.g.mount(device, mountpoint)
            entry = next(m for m in self.g.guest_mounts() if m.mountpoint == mountpoint)
            self.report.mounted.append(
                MountedFS(device, mountpoint, entry.fstype, entry.driver, entry.readonly)
            )

    def _read_mounted_root(self) -> None:
        release = parse_os_release(
            self._text("/etc/os-release") or self._text("/usr/lib/os-release") or ""
        )
        self.report.root = str(self.g.root)
        self.report.distro = distro_name(release)
        self.report.product = release.get("PRETTY_NAME", "")
        self._fstab = parse_fstab(self._text("/etc/fstab") or "")

    def _text(self, path: str) -> str | None:
        try:
            return self.g.read_file(path).decode(errors="replace")
        except GuestFileError:
            return None

    def repairs(self) -> list[Repair]:
        """The steps of this run, in order (see ``REPAIRS``)."""
        if self._repairs is None:
            self._repairs = default_repairs(self.options.nics)
            if self.options.reinstall_grub:
                command = self._grub_install_cmd(self.layout_or_fail())
                at = next(
                    (i for i, r in enumerate(self._repairs) if r.step is Step.UEFI),
                    len(self._repairs),
                )
                self._repairs.insert(at, GrubInstallRepair(command))
        return self._repairs

    def context(self, journal: Journal | None) -> RepairContext:
        return RepairContext(
            g=self.g,
            layout=self.layout_or_fail(),
            fstab=self._fstab,
            devices=self._devices(),
            journal=journal,
            env=dict(GUEST_ENV),
            timeout=self.options.timeout,
            lvm_names=self._lvm_names(),
        )

    def _devices(self) -> dict[str, Device]:
        if not self.g.has_drives:
            return {}
        devices = {}
        for name in self.g.list_filesystems():
            ids = self.g.blkid(name)
            devices[name] = Device(
                name,
                uuid=ids.get("UUID"),
                partuuid=ids.get("PART_ENTRY_UUID") or ids.get("PARTUUID"),
                fstype=ids.get("TYPE"),
                label=ids.get("LABEL"),
            )
        return devices

    def _wanted(self, repair: Repair, found: list[Finding]) -> bool:
        forced = self.options.forced(repair.step)
        return forced if forced is not None else any(f.fixable for f in found)

    def plan(self, *, consequences: bool = True) -> list[PlannedCommand]:
        """Every guest command the run would execute, in order (findings in the report).

        ``consequences=False`` lists only what is wrong with the guest now,
        not what a step must redo because an earlier one would change its
        inputs (``vmcraft check``).
        """
        ctx = self.context(None)
        planned: list[PlannedCommand] = []
        self.report.findings = []
        for repair in self.repairs():
            if self.options.forced(repair.step) is False:
                continue
            found = repair.find(ctx)
            self.report.findings.extend(found)
            if not self._wanted(repair, found):
                continue
            if consequences:
                # A later step sees what an earlier one would change.
                ctx.changed_before.add(repair.step)
            planned += [PlannedCommand(repair.step, cmd) for cmd in repair.plan(ctx, found)]
        return planned

    def layout_or_fail(self) -> BootLayout:
        if self.layout is None:
            raise VMCraftError("call prepare() first")
        return self.layout

    def _grub_install_cmd(self, layout: BootLayout) -> tuple[str, ...] | None:
        if layout.boot_mode == "uefi":
            mounted = next(
                (m for m in self.report.mounted if m.mountpoint in ("/boot/efi", "/efi")), None
            )
            if mounted is not None and mounted.driver == "mtools":
                # grub-install refuses an EFI directory that is not on FAT
                # ("failed to get canonical path of 'tmpfs'"), and the staged
                # ESP is a tmpfs: say so before anything changes.
                raise HostUnsupportedGuestError(
                    "--reinstall-grub on a UEFI guest needs a host kernel with the vfat "
                    "driver; this one has none, so the ESP is staged with mtools, where "
                    "grub-install cannot run. Without --reinstall-grub, fix-boot gives the "
                    "guest the fallback loader \\EFI\\BOOT\\BOOT<ARCH>.EFI instead"
                )
            esp = mounted.mountpoint if mounted is not None else "/boot/efi"
            # Never the host's NVRAM: no efivarfs is mounted, and --no-nvram.
            return (
                layout.grub_install_tool,
                f"--target={layout.grub_target}",
                f"--efi-directory={esp}",
                "--no-nvram",
            )
        disk = self._boot_disk()
        if disk is None:
            return None
        return (layout.grub_install_tool, f"--target={layout.grub_target}", disk)

    def _boot_disk(self) -> str | None:
        by_point = {m.mountpoint: m.device for m in self.report.mounted}
        device = by_point.get("/boot") or by_point.get("/")
        if device is None or not device.startswith("/dev/sd"):
            return None
        return device.rstrip("0123456789")

    # -- the run ------------------------------------------------------------

    def run(self) -> FixBootReport:
        """prepare(), then every step that finds something, checked; returns the report."""
        total = time.perf_counter()
        try:
            if self.layout is None:
                self.prepare()
            if not self.options.dry_run:
                self._preflight()
                batch = time.perf_counter()
                journal = Journal(self.g)
                with self.g.hold_mounts():
                    self._run_steps(self.context(journal))
                self.report.timings["regen_initramfs_and_bootloader"] = round(
                    time.perf_counter() - batch, 3
                )
                if not self.report.changed and not self.report.restored:
                    self.report.notes.append("nothing to change: the guest is already repaired")
        finally:
            self.report.timings["total"] = round(time.perf_counter() - total, 3)
        log.info("fix_boot.done", success=self.report.success, timings=self.report.timings)
        return self.report

    def _preflight(self) -> None:
        """Read-only checks that must pass before anything changes: room for new images.

        The initramfs step writes each new image beside the old one and the
        journal keeps a copy of every old image on the root filesystem.
        """
        drivers = next((r for r in self.repairs() if isinstance(r, DriversRepair)), None)
        if drivers is not None and Step.DRIVERS not in self.options.skip:
            why = drivers.unfixable(self.context(None))
            if why is not None:
                raise UnsupportedGuestError(f"this guest cannot boot on KVM's virtio: {why}")
        if not any(p.step is Step.INITRAMFS for p in self.report.plan):
            return
        layout = self.layout_or_fail()
        sizes = []
        for kernel in layout.kernels:
            try:
                sizes.append(self.g.stat(layout.initrd_path(kernel))["size"])
            except GuestFileError:
                sizes.append(64 << 20)  # a missing image: assume a large one
        margin = 16 << 20
        need = {"/boot": max(sizes, default=0) * 2 + margin, "/": sum(sizes) + margin}
        where = "/boot" if self.g.is_dir("/boot") else "/"
        free = {
            point: self.g.statvfs(point)["bavail"] * self.g.statvfs(point)["frsize"]
            for point in {where, "/"}
        }
        same_fs = self.g.statvfs(where)["fsid"] == self.g.statvfs("/")["fsid"]
        if same_fs:
            need = {"/": need["/boot"] + need["/"]}
        for point, needed in need.items():
            have = free.get(point, free["/"])
            if have < needed:
                raise NoSpaceError(
                    f"{point} has {have >> 20} MiB free; the new initramfs images and the "
                    f"copies kept for --undo need {needed >> 20} MiB. Nothing was changed"
                )

    def _run_steps(self, ctx: RepairContext) -> None:
        journal = ctx.journal
        assert journal is not None  # noqa: S101 - run() made one
        try:
            for repair in self.repairs():
                step = self._run_step(repair, ctx)
                if not step.success:
                    self._roll_back(journal, step)
                    return
            journal.finish()
        except BaseException:
            # An error or Ctrl-C in the middle of a step: put the guest back.
            last = next(reversed(self.report.steps.values()), StepReport())
            self._roll_back(journal, last)
            raise

    def _roll_back(self, journal: Journal, failed: StepReport) -> None:
        restored = journal.rollback()
        self.report.restored.extend(restored)
        failed.restores.extend(r.path for r in restored)
        if restored:
            log.warning("fix_boot.rolled_back", files=[r.path for r in restored])

    def _run_step(self, repair: Repair, ctx: RepairContext) -> StepReport:
        step = StepReport()
        self.report.steps[repair.step] = step
        forced = self.options.forced(repair.step)
        if forced is False:
            step.skipped = "skipped as asked"
            return step
        found = repair.find(ctx)
        for finding in found:
            if not finding.fixable:
                where = f" in {finding.path}" if finding.path else ""
                self.report.notes.append(f"left as it is{where}: {finding.what} ({finding.detail})")
        if not self._wanted(repair, found):
            if isinstance(repair, GrubInstallRepair):
                del self.report.steps[repair.step]
            else:
                step.skipped = "nothing to fix"
            return step
        started = time.time()

        def work() -> None:
            repair.fix(ctx, found, step)
            if not step.attempts or step.attempts[-1].ok:
                step.checks.extend(repair.check(ctx, started))
            if not step.success:
                raise _StepFailed(step.reason or "failed")

        try:
            self._phase(repair.step.phase, repair.step.value, work)
        except _StepFailed as failed:
            log.warning("fix_boot.step_failed", step=repair.step.value, reason=str(failed))
        except VMCraftError as exc:
            step.failure = f"{repair.step.value}: {exc}"
            log.warning("fix_boot.step_failed", step=repair.step.value, reason=str(exc))
        if step.attempts or step.rewrites or step.removals:
            ctx.changed_before.add(repair.step)
        return step

    def _lvm_names(self) -> set[str]:
        names: set[str] = set()
        for m in self.report.mounted:
            device = m.device
            if device.count("/") == 3 and not device.startswith("/dev/sd"):
                vg, lv = device.removeprefix("/dev/").split("/", 1)
                names |= {device, f"/dev/mapper/{dm_name(vg, lv)}"}
        return names


def default_repairs(nics: tuple[NicPin, ...] = ()) -> list[Repair]:
    """fix-boot's steps in the order they run (fresh per run: steps cache what they read).

    The network step comes before the initramfs, which copies its files;
    grub-install, when asked, comes before the UEFI fallback loader, which
    copies the loader grub-install writes.
    """
    drivers = DriversRepair()
    return [
        NamesRepair(),
        drivers,
        LvmRepair(),
        NetworkRepair(nics),
        InitramfsRepair(drivers),
        BootloaderRepair(),
        UefiFallbackRepair(),
    ]


REPAIRS = tuple(step.step for step in default_repairs())
"""The names of fix-boot's steps, in order."""


class _StepFailed(Exception):
    pass


def fix_boot(
    image: str | os.PathLike[str],
    *,
    format: str | None = None,
    options: FixBootOptions | None = None,
    progress: Progress | None = None,
    report_path: str | os.PathLike[str] | None = None,
    raise_error: bool = True,
) -> FixBootReport:
    """Repair the boot of a disk image; see :class:`BootFixer` for what it does.

    The report is written to ``report_path`` however the run ends: a run
    that stops early (no OS found, a mount that failed, Ctrl-C) is exactly
    when its report is needed, with the error and the exit code that fits
    it. The error is then raised, unless ``raise_error`` is false, in which
    case the report carries it alone (Ctrl-C is always raised).
    """
    options = options or FixBootOptions()
    start = time.perf_counter()
    report = FixBootReport(
        version=package_version(), image=os.fspath(image), dry_run=options.dry_run
    )
    try:
        with VMCraft(timeout=options.timeout, isolation=options.isolation) as g:
            g.add_drive_opts(image, readonly=options.dry_run, format=format)
            g.launch()
            BootFixer(g, options, progress=progress, report=report).run()
    except VMCraftError as exc:
        report.fail(exc)
        if raise_error:
            raise
    except BaseException as exc:
        report.fail(exc)
        raise
    finally:
        report.timings.setdefault("total", round(time.perf_counter() - start, 3))
        if report_path is not None:
            Path(report_path).write_text(report.to_json() + "\n")
    return report


def check(image: str | os.PathLike[str], *, format: str | None = None) -> FixBootReport:
    """What would break the guest on KVM, read-only: every step's findings, nothing changed.

    ``report.findings`` is empty for a guest that needs no repair.
    """
    report = FixBootReport(version=package_version(), image=os.fspath(image), dry_run=True)
    with VMCraft() as g:
        g.add_drive_opts(image, readonly=True, format=format)
        g.launch()
        fixer = BootFixer(g, FixBootOptions(dry_run=True), report=report)
        fixer.prepare()
        report.plan = fixer.plan(consequences=False)
    return report


def undo(
    image: str | os.PathLike[str],
    *,
    format: str | None = None,
    progress: Progress | None = None,
    report_path: str | os.PathLike[str] | None = None,
) -> FixBootReport:
    """Put back every file earlier fix-boot runs changed, from their journals in the guest."""
    report = FixBootReport(version=package_version(), image=os.fspath(image), dry_run=False)
    try:
        with VMCraft() as g:
            g.add_drive_opts(image, readonly=False, format=format)
            g.launch()
            fixer = BootFixer(g, FixBootOptions(), progress=progress, report=report)
            fixer.prepare_mounts()
            report.restored = undo_journals(g)
            if not report.restored:
                report.notes.append("nothing to undo: no fix-boot journal in this guest")
    except BaseException as exc:
        report.fail(exc)
        raise
    finally:
        if report_path is not None:
            Path(report_path).write_text(report.to_json() + "\n")
    return report
