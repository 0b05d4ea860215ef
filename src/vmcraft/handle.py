"""VMCraft: the guestfs-style handle that callers hold.

The handle owns a guest root and the order in which resources are taken
and given back (one ``ExitStack``); the layers below it each own one
resource. Today a root comes from :meth:`VMCraft.from_root` (a tree the
caller mounted); the disk calls (``add_drive_opts``, ``launch``, ``mount``)
attach theirs to the same stack, so the command calls do not change.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import TracebackType
from typing import Self

from vmcraft.chroot.mountinfo import MountCheck
from vmcraft.chroot.pseudofs import PseudoFS, PseudoFSMounter, guest_root_path, resolve_targets
from vmcraft.chroot.run import CommandResult, run_in_root
from vmcraft.errors import CommandError, NotLaunchedError
from vmcraft.log import get_logger, ms_since

log = get_logger(__name__)


class VMCraft:
    """A handle on one guest; use it as a context manager.

    ``mount_check`` picks how the pseudo-filesystem mounter asks whether a
    target is already mounted (``mountpoint -q`` by default, or the
    in-process mountinfo reader); ``timeout`` is the default, in seconds,
    for every command (``None``: no limit).
    """

    def __init__(
        self,
        *,
        mount_check: MountCheck | str = MountCheck.MOUNTPOINT,
        timeout: float | None = None,
    ) -> None:
        self.mount_check = MountCheck(mount_check)
        self.timeout = timeout
        self._root: Path | None = None
        self._stack = ExitStack()
        self._held: list[PseudoFSMounter] = []

    @classmethod
    def from_root(
        cls,
        root: str | os.PathLike[str],
        *,
        mount_check: MountCheck | str = MountCheck.MOUNTPOINT,
        timeout: float | None = None,
    ) -> Self:
        """A handle on a guest root the caller has already mounted.

        The handle never unmounts the root itself: whoever mounted it owns it.
        """
        handle = cls(mount_check=mount_check, timeout=timeout)
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
        """Release everything the handle acquired, in reverse order."""
        try:
            self._stack.close()
        finally:
            self._root = None

    shutdown = close

    def __repr__(self) -> str:
        where = str(self._root) if self._root else "not launched"
        return f"<VMCraft root={where!r} mount_check={self.mount_check.value}>"

    @property
    def root(self) -> Path:
        """The host directory holding the guest's root filesystem."""
        if self._root is None:
            raise NotLaunchedError(
                "no guest root: call launch() and mount(), or use VMCraft.from_root()"
            )
        return self._root

    # -- commands ---------------------------------------------------------

    def run(
        self,
        cmd: Sequence[str],
        *,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
    ) -> CommandResult:
        """Run ``cmd`` in a plain chroot and return the full result, never raising on exit."""
        root = self.root
        return run_in_root(root, cmd, timeout=self.timeout if timeout is None else timeout, env=env)

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

    def pseudofs(self, extra: Sequence[str | PseudoFS] = ()) -> PseudoFSMounter:
        """A mounter for this guest, not yet entered."""
        return PseudoFSMounter(self.root, extra=extra, check=self.mount_check)

    @contextmanager
    def hold_mounts(self, extra: Sequence[str | PseudoFS] = ()) -> Iterator[PseudoFSMounter]:
        """Keep the pseudo-filesystems mounted across a batch of commands.

        Inside the block, :meth:`command_with_mounts` calls asking for no more
        than what is held run straight away: no check, no mount, no unmount,
        so the batch pays for the mounts once (the per-call ``mountpoint -q``
        check alone costs three process spawns).
        """
        with self.pseudofs(extra) as mounter:
            self._held.append(mounter)
            try:
                yield mounter
            finally:
                self._held.remove(mounter)

    def _holding(self, extra: Sequence[str | PseudoFS]) -> bool:
        if not self._held:
            return False
        wanted = set(resolve_targets(extra))
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
        """
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
