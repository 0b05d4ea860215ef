"""The handle's private working directory, and removing it without harm.

Everything a launched handle makes on the host lives in one directory under
``/run/vmcraft`` (a tmpfs on most hosts, gone at reboot): the guest tree,
the image exports and the inspection scratch mounts. Removal never
recurses into a mount: only what vmcraft made is unlinked, and a directory
that still holds a mount is left, with a warning, rather than emptied.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vmcraft.log import get_logger
from vmcraft.mount.mountinfo import mount_points

log = get_logger(__name__)

STATE_ROOT = Path(os.environ.get("VMCRAFT_STATE_DIR", "/run/vmcraft"))


def _base() -> Path:
    try:
        STATE_ROOT.mkdir(mode=0o700, parents=True, exist_ok=True)
        return STATE_ROOT
    except OSError:
        return Path(tempfile.gettempdir())


def remove_tree_safely(top: Path) -> None:
    """Remove ``top`` bottom-up, refusing to touch anything under a mount."""
    prefix = os.fspath(top).rstrip("/") + "/"
    busy = sorted(p for p in mount_points() if p == os.fspath(top) or p.startswith(prefix))
    if busy:
        log.warning("statedir.still_mounted", directory=str(top), mounts=busy)
        return
    for dirpath, dirnames, filenames in os.walk(top, topdown=False):
        for name in filenames:
            os.unlink(os.path.join(dirpath, name))
        for name in dirnames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                os.unlink(path)
            else:
                os.rmdir(path)
    os.rmdir(top)


@contextmanager
def state_directory() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=_base()))
    try:
        yield path
    finally:
        remove_tree_safely(path)
