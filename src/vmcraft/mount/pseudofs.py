"""PseudoFSMounter: /proc, /dev and /sys inside the guest root, and gone after.

Boot tools in a bare chroot fail ("cannot find a device for /", "cannot
open /proc/self/mountinfo") or, worse, exit 0 having produced something
incomplete. The mounter gives them the host's /proc, /dev and /sys for the
length of a ``with`` block:

* a target that is already a mount point is left alone and never unmounted,
  which also makes mounters on the same root nest for free: hold one across
  a batch of commands and the inner ones mount nothing;
* targets are opened inside the root without following symlinks and the
  mount is made through that fd (see :mod:`vmcraft.mount.safepath`);
* each new mount is made private at once, so unmounting it cannot
  propagate to the host's own mounts;
* on exit, processes still rooted in the guest are ended, then the mounts
  come down in reverse order, retried with back-off while busy, lazily as
  the last resort; and an error there never hides the block's own error.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from vmcraft.chroot import reaper
from vmcraft.errors import GuestRootError, MountError, UnmountError, UnsafePathError
from vmcraft.host import require_privileges
from vmcraft.log import get_logger, ms_since
from vmcraft.mount import syscalls
from vmcraft.mount.mountinfo import MountCheck, MountProbe, make_probe, mount_ids
from vmcraft.mount.safepath import guest_components, open_guest_dir
from vmcraft.mount.unmount import umount_if_mounted, unmount
from vmcraft.signals import deferred_signals

log = get_logger(__name__)


@dataclass(frozen=True)
class PseudoFS:
    """One filesystem to provide inside the guest root."""

    target: str
    """Where, relative to the guest root (``proc``, ``dev/pts``)."""
    source: str
    """A host path to bind, or the source name for a fresh mount."""
    fstype: str | None = None
    """``None`` for a bind mount, else the type of a fresh mount."""
    flags: int = 0
    data: str | None = None
    populate: Callable[[int], None] | None = field(default=None, compare=False, repr=False)
    """Fills a fresh mount, given an fd on its root (see ``devtree.py``)."""

    @property
    def is_bind(self) -> bool:
        return self.fstype is None


PROC = PseudoFS("proc", "/proc")
DEV = PseudoFS("dev", "/dev")
SYS = PseudoFS("sys", "/sys")
DEV_PTS = PseudoFS("dev/pts", "/dev/pts")
# The host's /run holds the host's sockets (systemd, dbus, udev): the guest
# gets an empty private tmpfs instead, as mkosi and arch-chroot's users do.
RUN = PseudoFS("run", "tmpfs", "tmpfs", syscalls.MS_NOSUID | syscalls.MS_NODEV, "mode=0755")
# efivarfs lets grub-install/bootctl in the guest rewrite the *host's* NVRAM.
# It is only mounted when a caller names it.
EFIVARS = PseudoFS(
    "sys/firmware/efi/efivars",
    "efivarfs",
    "efivarfs",
    syscalls.MS_NOSUID | syscalls.MS_NODEV | syscalls.MS_NOEXEC,
)

DEFAULT_TARGETS: tuple[PseudoFS, ...] = (PROC, DEV, SYS)
EXTRA_TARGETS: dict[str, PseudoFS] = {fs.target: fs for fs in (DEV_PTS, RUN, EFIVARS)}
EXTRA_TARGETS["efivarfs"] = EFIVARS
_BY_NAME: dict[str, PseudoFS] = {fs.target: fs for fs in DEFAULT_TARGETS} | EXTRA_TARGETS


def resolve_targets(
    extra: Iterable[str | PseudoFS], dev: PseudoFS | None = None
) -> tuple[PseudoFS, ...]:
    """The default three (``dev`` replacing the bind of /dev), then each extra in order."""
    chosen = [PROC, dev or DEV, SYS]
    for item in extra:
        if isinstance(item, PseudoFS):
            fs = item
        else:
            key = item.strip("/")
            if key not in _BY_NAME:
                known = ", ".join(sorted(_BY_NAME))
                raise ValueError(f"unknown pseudo-filesystem {item!r} (known: {known})")
            fs = _BY_NAME[key]
        guest_components(fs.target)
        if fs.target not in {c.target for c in chosen}:
            chosen.append(fs)
    return tuple(chosen)


def guest_root_path(root: str | os.PathLike[str]) -> Path:
    """Canonical host path of a guest root, refusing ones that cannot be."""
    path = Path(os.path.realpath(root))
    if not path.is_dir():
        raise GuestRootError(f"guest root {os.fspath(root)!r} is not a directory")
    if path == Path("/"):
        raise GuestRootError("the guest root resolves to the host's own root directory")
    return path


@dataclass
class _Mounted:
    fs: PseudoFS
    path: Path
    mount_id: int | None = None
    """Known once the mount is made private; the sweep checks by it."""


class PseudoFSMounter:
    """Context manager providing /proc, /dev, /sys (and extras) in a guest root.

    ``timings`` holds the duration in ms of each phase (``mount proc``,
    ``mount dev``, ``mount sys``, ..., ``unmount``); ``mounted`` and
    ``skipped`` name what this mounter did and what it found already there.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        extra: Sequence[str | PseudoFS] = (),
        check: MountCheck | str = MountCheck.MOUNTPOINT,
        grace: float = 2.0,
        dev: PseudoFS | None = None,
    ) -> None:
        self.root = guest_root_path(root)
        self.targets = resolve_targets(extra, dev)
        self.check = MountCheck(check)
        self.grace = grace
        self.timings: dict[str, float] = {}
        self.mounted: list[str] = []
        self.skipped: list[str] = []
        self._stack: ExitStack | None = None
        self._ours: list[_Mounted] = []

    def __repr__(self) -> str:
        state = "held" if self._stack is not None else "idle"
        return (
            f"<PseudoFSMounter {str(self.root)!r} {state} "
            f"mounted={self.mounted} skipped={self.skipped}>"
        )

    def __enter__(self) -> PseudoFSMounter:
        if self._stack is not None:
            raise RuntimeError("PseudoFSMounter is not reentrant; nest a new one instead")
        require_privileges("bind-mounting /proc, /dev and /sys")
        probe = make_probe(self.check)
        self.timings = {}
        self.mounted = []
        self.skipped = []
        self._ours = []
        with ExitStack() as stack:
            # Runs after every unmount: a guest process may have stacked a
            # mount on one of ours, and umount only takes the top one.
            stack.callback(self._sweep)
            root_fd = os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                # Ctrl-C between a mount(2) and its push on the stack would
                # leak that mount: hold signals until the batch is on it.
                with deferred_signals():
                    for fs in self.targets:
                        self._mount_one(stack, probe, root_fd, fs)
            finally:
                os.close(root_fd)
            # Registered last, so it runs first on exit: nothing may still
            # run in the guest while its mounts come down. A mounter that
            # mounted nothing (nested in another) leaves that to the outer one.
            if self.mounted:
                stack.callback(self._reap)
            self._stack = stack.pop_all()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is None:
            return
        start = time.perf_counter()
        try:
            with deferred_signals():
                stack.close()
        except Exception as cleanup_error:
            if exc is None:
                raise
            # The block's own error is what the caller needs to see; the
            # cleanup failure rides along on it.
            log.error("pseudofs.cleanup_failed", root=str(self.root), error=str(cleanup_error))
            exc.add_note(f"vmcraft: cleanup after this error also failed: {cleanup_error}")
        finally:
            self.timings["unmount"] = ms_since(start)

    def _mount_one(self, stack: ExitStack, probe: MountProbe, root_fd: int, fs: PseudoFS) -> None:
        start = time.perf_counter()
        path = self.root / fs.target
        fd = open_guest_dir(root_fd, fs.target, create=fs.is_bind or fs.fstype == "tmpfs")
        try:
            # Canonical by construction: the root went through realpath and
            # every component below it was just checked to be a directory.
            if probe.is_mounted(path, canonical=True):
                self.skipped.append(fs.target)
                log.debug("pseudofs.already_mounted", target=str(path))
                return
            try:
                private = self._attach(fs, fd)
            except OSError as exc:
                raise MountError(f"cannot mount {fs.source} on {path}: {exc.strerror}") from exc
            # On the stack before anything else can fail: from here on,
            # whatever goes wrong unwinds this mount too.
            mounted = _Mounted(fs, path)
            self._ours.append(mounted)
            stack.callback(self._unmount, mounted)
            mounted.mount_id = self._make_private(root_fd, fs, path, already=private)
            probe.note_mounted(path)
            self.mounted.append(fs.target)
        finally:
            os.close(fd)
            self.timings[f"mount {fs.target}"] = ms_since(start)
            log.debug(
                "pseudofs.mount", target=str(path), duration_ms=self.timings[f"mount {fs.target}"]
            )

    @staticmethod
    def _attach(fs: PseudoFS, fd: int) -> bool:
        """Mount ``fs`` on the checked directory ``fd``.

        A bind goes through the new mount API where the kernel has it: the
        clone is private before it is attached, so it is never, even for a
        moment, in the peer group of the host's /dev. Elsewhere, mount(2)
        and MS_PRIVATE straight after (_make_private). True: private already.
        """
        if fs.is_bind:
            try:
                syscalls.bind_private(fs.source, fd)
                return True
            except OSError as exc:
                if exc.errno not in (errno.ENOSYS, errno.EPERM, errno.EINVAL):
                    raise
        flags = fs.flags | (syscalls.MS_BIND if fs.is_bind else 0)
        syscalls.mount(fs.source, f"/proc/self/fd/{fd}", fs.fstype, flags, fs.data)
        return False

    def _make_private(self, root_fd: int, fs: PseudoFS, path: Path, *, already: bool) -> int:
        """Take the fresh mount out of any peer group; return its mount id.

        A bind of a shared host /dev joins the host's peer group: whatever
        is later mounted or unmounted under one would happen under the other.
        """
        # Reopen: the fd used for mounting still points under the new mount.
        try:
            fd = open_guest_dir(root_fd, fs.target)
        except UnsafePathError as exc:
            raise MountError(f"cannot reopen {path} after mounting: {exc}") from exc
        try:
            try:
                if not already:
                    syscalls.mount(None, f"/proc/self/fd/{fd}", None, syscalls.MS_PRIVATE)
                mount_id = syscalls.mount_id_of_fd(fd)
            except OSError as exc:
                raise MountError(f"cannot make {path} private: {exc.strerror}") from exc
            if fs.populate is not None:
                try:
                    fs.populate(fd)
                except OSError as exc:
                    raise MountError(f"cannot fill {path}: {exc}") from exc
            return mount_id
        finally:
            os.close(fd)

    def _reap(self) -> None:
        reaper.reap(self.root, grace=self.grace)

    def _unmount(self, mounted: _Mounted) -> None:
        start = time.perf_counter()
        lazy = unmount(mounted.path)
        log.debug(
            "pseudofs.unmount", target=str(mounted.path), lazy=lazy, duration_ms=ms_since(start)
        )

    def _sweep(self) -> None:
        """Make sure none of our mounts outlived its unmount.

        If a guest process stacked a mount on one of ours, the unmount took
        the top one; detach lazily until ours is gone too.
        """
        ours, self._ours = self._ours, []
        if not ours:
            return
        for _ in range(16):
            present = mount_ids()
            left = [m for m in ours if m.mount_id is not None and m.mount_id in present]
            if not left:
                return
            for mounted in reversed(left):
                log.warning("pseudofs.stacked_mount", target=str(mounted.path))
                umount_if_mounted(os.fspath(mounted.path), syscalls.MNT_DETACH)
        raise UnmountError(f"mounts still present under {self.root}: {[str(m.path) for m in left]}")


__all__ = [
    "DEFAULT_TARGETS",
    "DEV",
    "DEV_PTS",
    "EFIVARS",
    "EXTRA_TARGETS",
    "PROC",
    "RUN",
    "SYS",
    "PseudoFS",
    "PseudoFSMounter",
]
