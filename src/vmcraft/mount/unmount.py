"""Taking a mount down: at once if possible, after back-off if busy, lazily at last.

Shared by the pseudo-filesystems and the guest's own filesystems. A busy
unmount is retried with exponential back-off (tenacity) for about 3 s; then
the mount is detached lazily (``MNT_DETACH``): it vanishes from the mount
table at once and the kernel frees it when its last user lets go. That is
logged as a warning, because a lazily detached guest filesystem is still
being written to by whoever held it.
"""

from __future__ import annotations

import errno
import os

import tenacity

from vmcraft.errors import UnmountError
from vmcraft.log import get_logger
from vmcraft.mount import syscalls

log = get_logger(__name__)

ATTEMPTS = 8
WAIT = tenacity.wait_exponential(multiplier=0.025, max=0.8)


def umount_if_mounted(target: str, flags: int = 0) -> None:
    """umount2 that never follows a final symlink and accepts "not mounted"."""
    try:
        syscalls.umount(target, flags | syscalls.UMOUNT_NOFOLLOW)
    except OSError as exc:
        if exc.errno != errno.EINVAL:  # EINVAL: not a mount point any more
            raise


def is_busy(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno == errno.EBUSY


def unmount(target: str | os.PathLike[str]) -> bool:
    """Unmount ``target``; returns True when it had to be detached lazily."""
    path = os.fspath(target)
    try:
        umount_if_mounted(path)
        return False
    except OSError as first:
        if not is_busy(first):
            raise UnmountError(f"cannot unmount {path}: {first.strerror}") from first
    try:
        for attempt in tenacity.Retrying(
            retry=tenacity.retry_if_exception(is_busy),
            wait=WAIT,
            stop=tenacity.stop_after_attempt(ATTEMPTS),
            reraise=True,
        ):
            with attempt:
                umount_if_mounted(path)
    except OSError as exc:
        if exc.errno != errno.EBUSY:
            raise UnmountError(f"cannot unmount {path}: {exc.strerror}") from exc
        log.warning(
            "pseudofs.lazy_unmount",
            target=path,
            reason="still busy after retries; detached lazily, it goes once unused",
        )
        try:
            umount_if_mounted(path, syscalls.MNT_DETACH)
        except OSError as lazy_exc:
            raise UnmountError(
                f"cannot unmount {path}, even lazily: {lazy_exc.strerror}"
            ) from lazy_exc
        return True
    return False
