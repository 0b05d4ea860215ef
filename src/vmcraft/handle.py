"""VMCraft: the guestfs-style handle that callers hold.

The handle owns a guest root and the order in which resources are taken
and given back (one ``ExitStack``); the layers below it each own one
resource. A root comes either from :meth:`VMCraft.from_root` (a tree the
caller mounted) or from disk images, libguestfs-style::

    with VMCraft() as g:
        g.add_drive_opts("disk.qcow2", readonly=False)
        g.launch()
        g.mount("/dev/sda2", "/")
        g.command_with_mounts(["grub-mkconfig", "-o", "/boot/grub/grub.cfg"])

``launch`` attaches the drives (state directory, then per drive the
qemu-storage-daemon export and the loop device); ``shutdown`` and leaving
the ``with`` block release them in reverse: processes in the guest, guest
mounts, loop devices, daemons, the state directory.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Self

from vmcraft.chroot import reaper
from vmcraft.chroot.run import CommandResult, run_in_root
from vmcraft.disks.attach import AttachedDisks, DriveSpec
from vmcraft.disks.images import vet_image
from vmcraft.disks.statedir import state_directory
from vmcraft.errors import (
    AlreadyLaunchedError,
    CommandError,
    DriveError,
    NotLaunchedError,
    SandboxUnavailableError,
)
from vmcraft.guest.files import GuestFiles
from vmcraft.guestfs.base import DIFFERS, EXTENSION, IMPLEMENTED, Conformance
from vmcraft.guestfs.devices import DeviceCalls
from vmcraft.guestfs.files import FileCalls
from vmcraft.guestfs.inspection import InspectionCalls
from vmcraft.guestfs.mounts import MountCalls
from vmcraft.host import require_privileges
from vmcraft.inspect.inspector import OSInfo
from vmcraft.log import get_logger, ms_since
from vmcraft.mount.devtree import dev_tree
from vmcraft.mount.guest import GuestMount, GuestMounts
from vmcraft.mount.mountinfo import MountCheck
from vmcraft.mount.pseudofs import PseudoFS, PseudoFSMounter, guest_root_path, resolve_targets
from vmcraft.sandbox.bwrap import Sandbox
from vmcraft.sandbox.isolation import Isolation
from vmcraft.signals import deferred_signals
from vmcraft.version import package_version

log = get_logger(__name__)

DEFAULT_TIMEOUT = 3600.0
"""Seconds a guest command may run unless the caller says otherwise."""


class VMCraft(DeviceCalls, InspectionCalls, MountCalls, FileCalls):
    """A handle on one guest; use it as a context manager.

    ``mount_check`` picks how the pseudo-filesystem mounter asks whether a
    target is already mounted (``mountpoint -q`` by default, or the
    in-process mountinfo reader); ``timeout`` is the default, in seconds,
    for every command in the guest: an hour, so that no call can hold a
    script or a notebook forever (``None``: no limit).
    """

    CALLS: ClassVar[Conformance] = {
        "add_drive_opts": (IMPLEMENTED, "read-only by default, as the seed's library"),
        "launch": (IMPLEMENTED, "loop devices / qemu-storage-daemon instead of an appliance"),
        "close": (IMPLEMENTED, ""),
        "sync": (IMPLEMENTED, ""),
        "set_trace": (DIFFERS, "accepted; calls are logged as structlog events instead"),
        "get_trace": (IMPLEMENTED, ""),
        "version": (IMPLEMENTED, "vmcraft's own version numbers, extra='vmcraft'"),
        "get_backend_settings": (IMPLEMENTED, "always [] (no appliance to configure)"),
        "command": (IMPLEMENTED, ""),
        "command_quiet": (EXTENSION, "command, failures logged at debug level"),
        "command_with_mounts": (EXTENSION, "command with /proc, /dev, /sys provided"),
    }

    def __init__(
        self,
        *,
        mount_check: MountCheck | str = MountCheck.MOUNTPOINT,
        timeout: float | None = DEFAULT_TIMEOUT,
        isolation: Isolation | str | None = None,
    ) -> None:
        self.mount_check = MountCheck(mount_check)
        self.timeout = timeout
        self._isolation = Isolation(isolation) if isolation is not None else None
        self._root: Path | None = None
        self._stack = ExitStack()
        self._held: list[PseudoFSMounter] = []
        self._drives: list[DriveSpec] = []
        self._disks: AttachedDisks | None = None
        self._mounts: GuestMounts | None = None
        self._inspected: dict[str, OSInfo] | None = None
        self._trace = 0

    @classmethod
    def from_root(
        cls,
        root: str | os.PathLike[str],
        *,
        mount_check: MountCheck | str = MountCheck.MOUNTPOINT,
        timeout: float | None = DEFAULT_TIMEOUT,
        isolation: Isolation | str = Isolation.HOST,
    ) -> Self:
        """A handle on a guest root the caller has already mounted.

        The handle never unmounts the root itself: whoever mounted it owns it.
        Its commands run in the enhanced chroot unless ``isolation="sandbox"``.
        """
        handle = cls(mount_check=mount_check, timeout=timeout, isolation=isolation)
        handle._root = guest_root_path(root)
        return handle

    # -- lifetime -------------------------------------------------------

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Release everything the handle acquired, in reverse order.

        Ctrl-C is held back until everything is released: half a shutdown
        leaves mounts and devices on the host.
        """
        try:
            with deferred_signals():
                try:
                    self.umount_local()
                finally:
                    self._stack.close()
        finally:
            self._root = None
            self._disks = None
            self._mounts = None
            self._inspected = None
            self._drives = []
            self._stack = ExitStack()

    shutdown = close

    def __repr__(self) -> str:
        if self._disks is not None:
            drives = ", ".join(
                f"{name}={d.path.name}{' ro' if d.readonly else ''}"
                for name, d in zip(self._disks.table.list_devices(), self._drives, strict=True)
            )
            mounts = ", ".join(f"{m.device} on {m.mountpoint}" for m in self._mounts_or_empty())
            return f"<VMCraft launched drives=[{drives}] mounts=[{mounts}]>"
        if self._drives:
            return f"<VMCraft not launched, drives={[str(d.path) for d in self._drives]}>"
        where = str(self._root) if self._root else "not launched"
        return f"<VMCraft root={where!r} mount_check={self.mount_check.value}>"

    def _mounts_or_empty(self) -> list[GuestMount]:
        return self._mounts.mounts if self._mounts is not None else []

    @property
    def root(self) -> Path:
        """The host directory holding the guest's root filesystem."""
        if self._root is not None:
            return self._root
        if self._mounts is not None:
            if any(m.mountpoint == "/" for m in self._mounts.mounts):
                return self._mounts.root
            raise NotLaunchedError("nothing is mounted at the guest's /: call mount() first")
        raise NotLaunchedError(
            "no guest root: call launch() and mount(), or use VMCraft.from_root()"
        )

    # -- drives -----------------------------------------------------------

    def add_drive_opts(
        self,
        filename: str | os.PathLike[str],
        readonly: bool = True,
        format: str | None = None,
        **_ignored: object,
    ) -> None:
        """Add a disk image; read-only unless ``readonly=False`` (as in the seed).

        The image is checked now (exists, readable, a format qemu reads, no
        backing file), so a bad path fails here, before anything is attached.
        """
        if self._disks is not None:
            raise AlreadyLaunchedError("add_drive_opts: drives must be added before launch()")
        path = Path(os.path.abspath(filename))
        info = vet_image(path, format, writable=not readonly)
        self._drives.append(DriveSpec(path, info.format, readonly))

    def add_drive(self, filename: str | os.PathLike[str], **kwargs: object) -> None:
        self.add_drive_opts(filename, **kwargs)  # type: ignore[arg-type]

    def add_drive_ro(self, filename: str | os.PathLike[str]) -> None:
        self.add_drive_opts(filename, readonly=True)

    def launch(self) -> None:
        """Attach every added drive to the host and make its devices visible."""
        if self._disks is not None:
            raise AlreadyLaunchedError("launch: the handle is already launched")
        if self._root is not None:
            raise AlreadyLaunchedError("launch: this handle was made from a mounted root")
        if not self._drives:
            raise DriveError("launch: no drives added (call add_drive_opts first)")
        require_privileges("launching (loop devices, mounts)")
        start = time.perf_counter()
        with ExitStack() as stack:
            workdir = stack.enter_context(state_directory())
            (workdir / "root").mkdir(mode=0o755)
            disks = stack.enter_context(AttachedDisks(self._drives, workdir))
            mounts = GuestMounts(workdir / "root")
            # Runs first on shutdown: nothing may run in the guest while
            # its filesystems come down.
            stack.callback(mounts.umount_all)
            stack.callback(reaper.reap, workdir)
            self._stack = stack.pop_all()
        self._disks, self._mounts = disks, mounts
        log.info("launch", drives=len(self._drives), duration_ms=ms_since(start))

    @property
    def has_drives(self) -> bool:
        """True once launched on disk images (False for ``from_root`` handles)."""
        return self._disks is not None

    def _attached(self) -> AttachedDisks:
        if self._disks is None:
            raise NotLaunchedError("call launch() first")
        return self._disks

    # -- the parts the call mixins reach ------------------------------------

    def _guest_mounts(self) -> GuestMounts:
        if self._mounts is None:
            raise NotLaunchedError("call launch() first")
        return self._mounts

    def _files(self) -> GuestFiles:
        return GuestFiles(self.root)

    def _holding_root(self) -> bool:
        return bool(self._held) and any(m.mountpoint == "/" for m in self._mounts_or_empty())

    # -- handle calls -----------------------------------------------------

    def sync(self) -> None:
        os.sync()

    def set_trace(self, trace: int | bool) -> None:
        self._trace = int(trace)

    def get_trace(self) -> int:
        return self._trace

    def version(self) -> dict[str, int | str]:
        numbers = [int(x) for x in re.findall(r"\d+", package_version())[:3]]
        major, minor, release = [*numbers, 0, 0, 0][:3]
        return {"major": major, "minor": minor, "release": release, "extra": "vmcraft"}

    def get_backend_settings(self) -> list[str]:
        return []

    # -- commands ---------------------------------------------------------

    @property
    def isolation(self) -> Isolation:
        """Where guest commands run: the sandbox (disk images) or the enhanced chroot."""
        if self._isolation is not None:
            return self._isolation
        return Isolation.SANDBOX if self._disks is not None else Isolation.HOST

    def _sandbox(self) -> Sandbox:
        devices = self._disks.block_devices() if self._disks is not None else ()
        return Sandbox(os.fspath(self.root), devices)

    def run(
        self,
        cmd: Sequence[str],
        *,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
    ) -> CommandResult:
        """Run ``cmd`` in the guest and return the full result, never raising on exit.

        In the sandbox the command has /proc, /dev and /sys of its own; in
        the enhanced chroot only what is mounted around it.
        """
        root = self.root
        limit = self.timeout if timeout is None else timeout
        if self.isolation is Isolation.SANDBOX:
            return run_in_root(root, cmd, timeout=limit, env=env, sandbox=self._sandbox())
        return run_in_root(root, cmd, timeout=limit, env=env)

    def command(
        self,
        cmd: Sequence[str],
        *,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
    ) -> str:
        """Run ``cmd`` in ``chroot ROOT`` and return its stdout.

        Raises :class:`CommandError` (a ``RuntimeError``) on a non-zero exit.
        """
        return self._checked(self.run(cmd, timeout=timeout, env=env), quiet=False)

    def command_quiet(
        self,
        cmd: Sequence[str],
        *,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
    ) -> str:
        """:meth:`command`, for commands expected to fail sometimes.

        A failure still raises; it is only logged at debug level.
        """
        return self._checked(self.run(cmd, timeout=timeout, env=env), quiet=True)

    def _dev(self) -> PseudoFS | None:
        # Guests on attached disks get their own /dev (see mount/devtree.py).
        return dev_tree(self._disks.block_devices()) if self._disks is not None else None

    def pseudofs(self, extra: Sequence[str | PseudoFS] = ()) -> PseudoFSMounter:
        """A mounter for this guest, not yet entered."""
        return PseudoFSMounter(self.root, extra=extra, check=self.mount_check, dev=self._dev())

    @contextmanager
    def hold_mounts(self, extra: Sequence[str | PseudoFS] = ()) -> Iterator[PseudoFSMounter | None]:
        """Keep the pseudo-filesystems mounted across a batch of commands.

        Inside the block, :meth:`command_with_mounts` calls asking for no more
        than what is held run straight away: no check, no mount, no unmount,
        so the batch pays for the mounts once (the per-call ``mountpoint -q``
        check alone costs three process spawns).

        In the sandbox there is nothing to hold: every command gets its own
        /proc, /dev and /sys, made and dropped by the kernel with it (None).
        """
        if self.isolation is Isolation.SANDBOX:
            yield None
            return
        with self.pseudofs(extra) as mounter:
            self._held.append(mounter)
            try:
                yield mounter
            finally:
                self._held.remove(mounter)

    def _holding(self, extra: Sequence[str | PseudoFS]) -> bool:
        if not self._held:
            return False
        wanted = set(resolve_targets(extra, self._dev()))
        return any(wanted <= set(m.targets) for m in self._held)

    def command_with_mounts(
        self,
        cmd: Sequence[str],
        quiet: bool = False,
        *,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        extra: Sequence[str | PseudoFS] = (),
    ) -> str:
        """Run ``cmd`` in the guest with /proc, /dev and /sys bind-mounted.

        The mounts are made (unless already there) before the command and
        taken down after it, whatever happens. Returns stdout; raises
        :class:`CommandError` on a non-zero exit, logged at debug level
        only when ``quiet``.

        In the sandbox (the default on disk images) the command always has
        them: /proc, /dev and /sys of its own, with the guest's devices only.
        """
        if self.isolation is Isolation.SANDBOX:
            self._sandbox_extra(extra)
            return self._checked(self.run(cmd, timeout=timeout, env=env), quiet=quiet)
        if self._holding(extra):
            return self._checked(self.run(cmd, timeout=timeout, env=env), quiet=quiet)
        mounter = self.pseudofs(extra)
        start = time.perf_counter()
        result: CommandResult | None = None
        try:
            with mounter:
                result = self.run(cmd, timeout=timeout, env=env)
        finally:
            log.info(
                "command_with_mounts.timings",
                argv=list(cmd),
                mounted=mounter.mounted,
                already_mounted=mounter.skipped,
                **{key.replace(" ", "_") + "_ms": value for key, value in mounter.timings.items()},
                command_ms=result.duration_ms if result else None,
                total_ms=ms_since(start),
            )
        return self._checked(result, quiet=quiet)

    @staticmethod
    def _sandbox_extra(extra: Sequence[str | PseudoFS]) -> None:
        """The sandbox has a tmpfs /run of its own; the host's efivarfs it never gets."""
        for item in extra:
            name = item if isinstance(item, str) else item.target
            if name != "run":
                raise SandboxUnavailableError(
                    f"{name!r} cannot be given to a sandboxed command; "
                    "use VMCraft(isolation='host') for it"
                )

    def _checked(self, result: CommandResult, *, quiet: bool) -> str:
        if result.ok:
            log.debug("command", argv=result.argv, duration_ms=result.duration_ms)
            return result.stdout
        error = CommandError(result.argv, result.returncode, result.stdout, result.stderr)
        if quiet:
            log.debug("command.failed", argv=result.argv, error=str(error))
        else:
            log.warning("command.failed", argv=result.argv, error=str(error))
        raise error
