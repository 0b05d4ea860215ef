"""Checking that an initramfs step produced a fresh, complete image per kernel.

update-initramfs exits 0 without /proc and /sys and leaves fsck out of the
image; dracut exits 0 and silently drops the guest's modules-load.d list.
So the step is judged by its images: one per installed kernel, written by
this run, not empty, and (where the guest's tool can list it) holding fsck.
"""

from __future__ import annotations

from vmcraft.errors import GuestFileError, VMCraftError
from vmcraft.fixers.attempts import run_guest_command
from vmcraft.fixers.drivers import DriversRepair
from vmcraft.fixers.step import Finding, RepairContext, Step
from vmcraft.report import Check, StepReport

# Tools, inside the guest, that list an initramfs, by family.
LISTERS = {"debian": "lsinitramfs", "redhat": "lsinitrd", "suse": "lsinitrd"}


def check_images(images: dict[str, tuple[int, float] | None], started: float) -> list[Check]:
    """``images``: kernel -> (size, mtime) of its initramfs, or None when missing."""
    checks = []
    for kernel, info in sorted(images.items()):
        if info is None:
            checks.append(Check(f"initramfs for {kernel}", False, "missing"))
            continue
        size, mtime = info
        fresh = mtime >= started - 2  # filesystems with coarse timestamps
        checks.append(
            Check(
                f"initramfs for {kernel} is fresh",
                size > 0 and fresh,
                f"{size} bytes" if fresh else "not rewritten by this run",
            )
        )
    if not images:
        checks.append(Check("initramfs for every kernel", False, "no kernel found in /boot"))
    return checks


def check_fsck(kernel: str, listing: list[str]) -> Check:
    has = any(
        path.rstrip().endswith(
            ("bin/fsck", "bin/e2fsck", "bin/fsck.ext4", "bin/fsck.xfs", "bin/xfs_repair")
        )
        for path in listing
    )
    return Check(f"initramfs for {kernel} holds fsck", has, "" if has else "fsck missing")


class InitramfsRepair:
    """Rebuild every kernel's initramfs with the guest's own tool.

    Needed when an image is missing, lacks a driver the guest needs on KVM
    or on its old platform, lacks fsck, or holds a copy of a file an earlier
    step changed (the driver list, fstab and crypttab names, resume); checked
    by listing the images, never by the exit status.

    The rebuild keeps the guest's own MODULES=dep / hostonly setting: the
    drivers step has put the drivers both platforms need in the guest's
    configuration, which both honour, so the image holds them plus what the
    conversion host's view adds (harmless), at the size and speed the
    guest's next kernel update will have. dracut is run with --no-hostonly
    --no-hostonly-cmdline: in a chroot its host-only mode would store a
    command line and pick modules from the conversion host's view.
    """

    step = Step.INITRAMFS

    # Steps whose files an initramfs copies.
    COPIED_FROM = frozenset({Step.NAMES, Step.DRIVERS, Step.LVM, Step.NETWORK})

    def __init__(self, drivers: DriversRepair | None = None) -> None:
        self.drivers = drivers or DriversRepair()

    def _command(self, ctx: RepairContext) -> tuple[str, ...]:
        # initramfs-tools: the guest's own MODULES setting (no override file);
        # dracut: --no-hostonly --no-hostonly-cmdline, as docs/fix-boot.md says.
        return self.drivers.rebuild_command(ctx, generic=True)

    def find(self, ctx: RepairContext) -> list[Finding]:
        found = []
        changed = sorted(ctx.changed_before & self.COPIED_FROM)
        if changed:
            found.append(
                Finding(
                    self.step,
                    "the initramfs holds copies of files this run changed",
                    detail=", ".join(s.value for s in changed),
                )
            )
        for kernel in ctx.layout.kernels:
            path = ctx.layout.initrd_path(kernel)
            if not ctx.g.is_file(path, followsymlinks=True):
                found.append(Finding(self.step, f"no initramfs for {kernel}", path))
                continue
            try:
                listing = self.drivers.list_image(ctx, kernel)
            except VMCraftError as exc:
                found.append(
                    Finding(self.step, f"initramfs for {kernel} cannot be listed", path, str(exc))
                )
                continue
            if self._wants_fsck(ctx):
                fsck = check_fsck(kernel, listing)
                if not fsck.ok:
                    found.append(Finding(self.step, fsck.name.replace("holds", "lacks"), path))
            if self.drivers.drivers(ctx).has_virtio(kernel):
                missing = self.drivers.missing_in_image(ctx, kernel, listing)
                if missing:
                    what = f"initramfs for {kernel} lacks {', '.join(missing)}"
                    found.append(Finding(self.step, what, path))
        return found

    @staticmethod
    def _wants_fsck(ctx: RepairContext) -> bool:
        # Only initramfs-tools images are known to drop fsck silently.
        root_entry = next((e for e in ctx.fstab if e.mountpoint == "/"), None)
        wants = root_entry is not None and root_entry.fstype.startswith(("ext", "xfs"))
        return (
            wants
            and ctx.layout.family == "debian"
            and ctx.g.is_file("/usr/sbin/mkinitramfs", followsymlinks=True)
        )

    def plan(self, ctx: RepairContext, findings: list[Finding]) -> list[tuple[str, ...]]:
        return [self._command(ctx)]

    def fix(self, ctx: RepairContext, findings: list[Finding], report: StepReport) -> None:
        journal = ctx.require_journal(self.step)
        for kernel in ctx.layout.kernels:
            journal.keep(ctx.layout.initrd_path(kernel), self.step.value)
        report.attempts.append(
            run_guest_command(
                ctx.g, self._command(ctx), mounts=True, env=ctx.env, timeout=ctx.timeout
            )
        )

    def check(self, ctx: RepairContext, started: float) -> list[Check]:
        layout = ctx.layout
        images: dict[str, tuple[int, float] | None] = {}
        for kernel in layout.kernels:
            try:
                st = ctx.g.stat(layout.initrd_path(kernel))
                images[kernel] = (st["size"], float(st["mtime"]))
            except GuestFileError:
                images[kernel] = None
        checks = check_images(images, started)
        if self._wants_fsck(ctx):
            for kernel in layout.kernels:
                if images.get(kernel) is None:
                    continue
                try:
                    listing = self.drivers.list_image(ctx, kernel)
                except VMCraftError as exc:
                    checks.append(Check(f"initramfs for {kernel} can be listed", False, str(exc)))
                    continue
                checks.append(check_fsck(kernel, listing))
        return checks + self.drivers.check_images(ctx)
