"""fix-boot: make a converted guest disk boot, and prove it from what was written.

The workflow, on a handle whose drives are attached (or on a mounted root):

1. inspect the guest, mount ``/``, then ``/usr``, ``/boot`` and the ESP from
   its fstab, resolved against the guest's own devices;
2. decide the family and the boot mode (``layout.py``);
3. with the pseudo-filesystems held once for the whole batch, regenerate the
   initramfs (first: grub-mkconfig only adds initrd lines for images that
   exist), then the GRUB config, then optionally reinstall GRUB on BIOS
   guests onto the guest's own disk;
4. check what each step produced; exit status 0 is not success.

A dry run returns the plan, every command in order, and changes nothing
(the drives are opened read-only).
"""

from __future__ import annotations

import enum
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vmcraft.disks.names import dm_name
from vmcraft.errors import GuestFileError, VMCraftError, exit_code_for
from vmcraft.fixers.attempts import run_guest_command
from vmcraft.fixers.bootloader.grub import check_bls_entries, check_grub_cfg
from vmcraft.fixers.initramfs import LISTERS, check_fsck, check_images
from vmcraft.fixers.layout import (
    BootLayout,
    UnsupportedGuestError,
    boot_mountpoints,
    detect_layout,
)
from vmcraft.handle import VMCraft
from vmcraft.inspect.fstab import FstabEntry, local_filesystems, parse_fstab
from vmcraft.inspect.osrelease import distro_name, parse_os_release
from vmcraft.log import get_logger
from vmcraft.report import Check, StepReport
from vmcraft.version import package_version

log = get_logger(__name__)

# os-prober would scan every disk it can see; the guest's commands get this.
GUEST_ENV = {"GRUB_DISABLE_OS_PROBER": "true", "DEBIAN_FRONTEND": "noninteractive"}

Progress = Callable[[str, str, float | None], None]
"""``progress(phase, state, elapsed_s)``: state is ``start``, ``done`` or ``failed``."""


@dataclass(frozen=True)
class FixBootOptions:
    update_grub: bool = True
    regen_initramfs: bool = True
    reinstall_grub: bool = False
    dry_run: bool = False
    timeout: float | None = 1800.0
    """Per command, in seconds: dracut on a slow guest takes minutes."""


class Step(enum.StrEnum):
    """The steps of fix-boot, in the order they run."""

    INITRAMFS = "initramfs"
    BOOTLOADER = "bootloader"
    GRUB_INSTALL = "grub_install"

    @property
    def phase(self) -> str:
        """The name progress lines show (``grub-install``)."""
        return self.value.replace("_", "-")


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
    def exit_code(self) -> int:
        """The CLI's exit status for this report (see vmcraft.errors.exit_code_for)."""
        if self.error is not None:
            return self._error_exit
        return 0 if self.success else 1

    _error_exit: int = field(default=0, repr=False)

    def fail(self, error: BaseException) -> None:
        """Record why the run stopped: the message, its type and the exit code it maps to."""
        self.error = str(error) or type(error).__name__
        self.error_type = type(error).__name__
        self._error_exit = exit_code_for(error)

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
        }
        for name, step in self.steps.items():
            data[name.value] = step.to_dict()
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

    def prepare(self) -> BootLayout:
        """Find the guest, mount what the boot tools need, and read its layout."""
        if self.g.has_drives:
            self._phase("inspect", "inspect", self._inspect)
            self._phase("mount", "mount", self._mount)
        else:
            self._read_mounted_root()
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

    def plan(self) -> list[PlannedCommand]:
        """Every command the run would execute, in order."""
        layout = self.layout
        if layout is None:
            raise VMCraftError("call prepare() first")
        steps = []
        if self.options.regen_initramfs:
            steps.append(PlannedCommand(Step.INITRAMFS, layout.initramfs_cmd))
        if self.options.update_grub:
            steps.append(PlannedCommand(Step.BOOTLOADER, layout.bootloader_cmd))
        if self.options.reinstall_grub:
            install = self._grub_install_cmd(layout)
            if install is not None:
                steps.append(PlannedCommand(Step.GRUB_INSTALL, install))
        return steps

    def _grub_install_cmd(self, layout: BootLayout) -> tuple[str, ...] | None:
        if layout.boot_mode == "uefi":
            esp = next(
                (
                    m.mountpoint
                    for m in self.report.mounted
                    if m.mountpoint in ("/boot/efi", "/efi")
                ),
                "/boot/efi",
            )
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
        """prepare(), then every planned step with its checks; returns the report."""
        total = time.perf_counter()
        try:
            if self.layout is None:
                self.prepare()
            if not self.options.dry_run:
                batch = time.perf_counter()
                with self.g.hold_mounts():
                    for planned in self.report.plan:
                        self._run_step(planned)
                self.report.timings["regen_initramfs_and_bootloader"] = round(
                    time.perf_counter() - batch, 3
                )
        finally:
            self.report.timings["total"] = round(time.perf_counter() - total, 3)
        log.info("fix_boot.done", success=self.report.success, timings=self.report.timings)
        return self.report

    def _run_step(self, planned: PlannedCommand) -> None:
        assert self.layout is not None  # noqa: S101 - run() prepared it
        step = StepReport()
        self.report.steps[planned.step] = step
        started = time.time()

        def work() -> None:
            attempt = run_guest_command(
                self.g, planned.cmd, mounts=True, env=GUEST_ENV, timeout=self.options.timeout
            )
            step.attempts.append(attempt)
            if attempt.ok:
                step.checks.extend(VERIFIERS[planned.step](self, self.layout_or_fail(), started))
            if not step.success:
                raise _StepFailed(step.reason or "failed")

        try:
            self._phase(planned.step.phase, planned.step.value, work)
        except _StepFailed as failed:
            log.warning("fix_boot.step_failed", step=planned.step, reason=str(failed))

    def layout_or_fail(self) -> BootLayout:
        if self.layout is None:
            raise VMCraftError("call prepare() first")
        return self.layout

    def _lvm_names(self) -> set[str]:
        names: set[str] = set()
        for m in self.report.mounted:
            device = m.device
            if device.count("/") == 3 and not device.startswith("/dev/sd"):
                vg, lv = device.removeprefix("/dev/").split("/", 1)
                names |= {device, f"/dev/mapper/{dm_name(vg, lv)}"}
        return names

    def _verify_grub(self, layout: BootLayout, _started: float) -> list[Check]:
        text = self._text(layout.grub_cfg)
        if text is None:
            return [Check(f"{layout.grub_cfg} exists", False, "not written")]
        checks = check_grub_cfg(text, layout.kernels, lvm_names=self._lvm_names())
        if any(ln.strip().startswith("blscfg") for ln in text.splitlines()):
            entries = {}
            if self.g.is_dir("/boot/loader/entries"):
                for name in self.g.ls("/boot/loader/entries"):
                    entries[name] = self._text(f"/boot/loader/entries/{name}") or ""
            checks += check_bls_entries(entries, layout.kernels, lvm_names=self._lvm_names())
        return checks

    def _verify_initramfs(self, layout: BootLayout, started: float) -> list[Check]:
        images: dict[str, tuple[int, float] | None] = {}
        for kernel in layout.kernels:
            path = layout.initrd_path(kernel)
            try:
                st = self.g.stat(path)
                images[kernel] = (st["size"], float(st["mtime"]))
            except GuestFileError:
                images[kernel] = None
        checks = check_images(images, started)
        root_entry = next((e for e in self._fstab if e.mountpoint == "/"), None)
        wants_fsck = root_entry is not None and root_entry.fstype.startswith(("ext", "xfs"))
        lister = LISTERS.get(layout.family)
        if wants_fsck and layout.family == "debian" and lister:
            for kernel in layout.kernels:
                if images.get(kernel) is None:
                    continue
                try:
                    listing = self.g.command_with_mounts(
                        [lister, layout.initrd_path(kernel)], quiet=True, timeout=300
                    ).splitlines()
                except VMCraftError as exc:
                    checks.append(Check(f"initramfs for {kernel} can be listed", False, str(exc)))
                    continue
                checks.append(check_fsck(kernel, listing))
        return checks


Verifier = Callable[[BootFixer, BootLayout, float], list[Check]]


def _no_checks(_fixer: BootFixer, _layout: BootLayout, _started: float) -> list[Check]:
    # grub-install's own "Installation finished" is all there is to read
    # offline; the boot is what proves it.
    return []


VERIFIERS: dict[Step, Verifier] = {
    Step.INITRAMFS: BootFixer._verify_initramfs,
    Step.BOOTLOADER: BootFixer._verify_grub,
    Step.GRUB_INSTALL: _no_checks,
}
"""What each step's output is checked with once its command exited 0."""


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
        with VMCraft(timeout=options.timeout) as g:
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
