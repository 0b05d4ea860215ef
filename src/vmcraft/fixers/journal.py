"""What a repair changed in the guest, kept in the guest, so it can be put back.

Every file a step rewrites, and every file a guest tool is about to
rewrite (initramfs images, grub.cfg), is copied into the journal first.
A step that fails puts back everything the run changed, byte for byte, so
a failed repair leaves the guest as it found it; a run that succeeds keeps
its journal in the guest (``/var/lib/vmcraft/journal/<run>``), and
``vmcraft fix-boot --undo`` restores from it later, as virt-v2v keeps
``*.pre-v2v`` copies.

Files are replaced by writing a sibling and renaming it over the original,
so a full filesystem fails the write, never leaves half a file.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import stat as stat_mod
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from vmcraft.errors import GuestFileError, VMCraftError
from vmcraft.log import get_logger

log = get_logger(__name__)

JOURNAL_DIR = "/var/lib/vmcraft/journal"
_MANIFEST = "manifest.json"


class GuestFilesView(Protocol):
    """The file calls the journal needs (VMCraft has them)."""

    def exists(self, path: str) -> bool: ...

    def is_file(self, path: str, followsymlinks: bool = False) -> bool: ...

    def is_dir(self, path: str, followsymlinks: bool = False) -> bool: ...

    def read_file(self, path: str) -> bytes: ...

    def write(self, path: str, content: bytes | str) -> None: ...

    def rename(self, oldpath: str, newpath: str) -> None: ...

    def rm_f(self, path: str) -> None: ...

    def mkdir_p(self, path: str) -> None: ...

    def chmod(self, mode: int, path: str) -> None: ...

    def stat(self, path: str) -> dict[str, int]: ...

    def ls(self, directory: str) -> list[str]: ...

    def rmdir(self, path: str) -> None: ...


class JournalError(VMCraftError):
    """The journal cannot be written or read back."""


@dataclass(frozen=True)
class Entry:
    """One guest file as it was before the run touched it."""

    path: str
    step: str
    existed: bool
    sha256: str | None
    """Of the original content; None when the file did not exist."""
    mode: int | None
    backup: str | None
    """The copy's name inside the journal directory."""
    directory: bool = False
    """A directory the run made (``existed`` is then False): taken away again if empty."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Restored:
    """A file put back (or removed again), for the report."""

    path: str
    step: str
    action: str
    """``restored`` (original content back) or ``removed`` (it did not exist)."""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def replace_file(g: GuestFilesView, path: str, content: bytes, mode: int | None = None) -> None:
    """Write ``content`` to ``path`` through a sibling and a rename (never half a file)."""
    tmp = f"{path}.vmcraft-new"
    try:
        g.write(tmp, content)
        if mode is not None:
            g.chmod(stat_mod.S_IMODE(mode), tmp)
        g.rename(tmp, path)
    except BaseException:
        try:
            g.rm_f(tmp)
        except VMCraftError:
            log.warning("journal.tmp_left", path=tmp)
        raise


@dataclass
class Journal:
    """The files one run changed, with their originals stored in the guest."""

    g: GuestFilesView
    run_id: str = field(default_factory=lambda: time.strftime("%Y%m%dT%H%M%S"))
    entries: list[Entry] = field(default_factory=list)
    _created_dirs: list[str] = field(default_factory=list)

    @property
    def directory(self) -> str:
        return f"{JOURNAL_DIR}/{self.run_id}"

    def kept(self, path: str) -> bool:
        return any(e.path == path for e in self.entries)

    def _ensure_directory(self) -> None:
        if self.g.is_dir(self.directory):
            return
        # Remember which directories the journal adds, so a rollback can
        # take them away again and leave the guest as it was.
        missing = []
        current = self.directory
        while current != "/" and not self.g.exists(current):
            missing.append(current)
            current = posixpath.dirname(current)
        self.g.mkdir_p(self.directory)
        self._created_dirs.extend(missing)

    def keep(self, path: str, step: str) -> None:
        """Copy ``path`` into the journal before it changes (once per run)."""
        if self.kept(path):
            return
        self._ensure_directory()
        if self.g.is_file(path):
            data = self.g.read_file(path)
            backup = f"{len(self.entries):04d}"
            self.g.write(f"{self.directory}/{backup}", data)
            mode = self.g.stat(path)["mode"]
            entry = Entry(path, step, True, _sha(data), mode, backup)
        elif self.g.exists(path):
            raise JournalError(f"{path}: not a regular file; vmcraft will not replace it")
        else:
            entry = Entry(path, step, False, None, None, None)
        self.entries.append(entry)
        self._save()

    def write(self, path: str, content: bytes | str, step: str) -> None:
        """Replace a guest file, keeping its original first; same mode as before."""
        data = content.encode() if isinstance(content, str) else content
        self.keep(path, step)
        entry = next(e for e in self.entries if e.path == path)
        replace_file(self.g, path, data, entry.mode)

    def make_dirs(self, path: str, step: str) -> None:
        """Make ``path`` and its missing parents, each noted so a rollback removes it again.

        A new loader needs a new directory (``EFI/BOOT``); putting the guest
        back as it was takes that away too.
        """
        missing = []
        current = posixpath.normpath(path)
        while current != "/" and not self.g.exists(current):
            missing.append(current)
            current = posixpath.dirname(current)
        if not missing:
            if not self.g.is_dir(path, followsymlinks=True):
                raise JournalError(f"{path}: not a directory; vmcraft will not replace it")
            return
        self._ensure_directory()
        for directory in reversed(missing):  # parents first, so they are restored last
            self.entries.append(Entry(directory, step, False, None, None, None, directory=True))
            self._save()
            self.g.mkdir_p(directory)

    def discard(self, path: str) -> None:
        """Take away a file this run added, and the directories made for it, as if never written.

        For a file a guest command needs only while it runs (a grub.d
        drop-in): afterwards neither the guest nor the journal holds a trace
        of it, so a run that changed nothing else still changes nothing.
        """
        entry = next((e for e in self.entries if e.path == path), None)
        if entry is None:
            return
        if entry.existed:
            raise JournalError(
                f"{path}: was in the guest before this run; it is kept, not discarded"
            )
        self.g.rm_f(path)
        self.entries.remove(entry)
        parent = posixpath.dirname(path)
        made = {e.path: e for e in self.entries if e.directory}
        while parent in made and self.g.is_dir(parent) and not self.g.ls(parent):
            self.g.rmdir(parent)
            self.entries.remove(made[parent])
            parent = posixpath.dirname(parent)
        self._save()

    def remove(self, path: str, step: str) -> None:
        """Remove a guest file, keeping it first."""
        self.keep(path, step)
        self.g.rm_f(path)

    def changed(self) -> list[Entry]:
        """Entries whose file now differs from how it was."""
        out = []
        for entry in self.entries:
            if entry.directory:
                if self.g.is_dir(entry.path):
                    out.append(entry)
                continue
            now = self.g.read_file(entry.path) if self.g.is_file(entry.path) else None
            if (now is None) != (not entry.existed) or (
                now is not None and _sha(now) != entry.sha256
            ):
                out.append(entry)
        return out

    def _save(self) -> None:
        manifest = {"run_id": self.run_id, "entries": [e.to_dict() for e in self.entries]}
        self.g.write(f"{self.directory}/{_MANIFEST}", json.dumps(manifest, indent=1) + "\n")

    def rollback(self) -> list[Restored]:
        """Put every kept file back as it was, newest first, and drop the journal."""
        entries, self.entries = self.entries, []
        restored = list(_restore_entries(self.g, self.directory, entries))
        self._drop()
        return restored

    def finish(self) -> None:
        """Keep the journal only if the run changed something."""
        if not self.changed():
            self._drop()

    def _drop(self) -> None:
        if not self.g.is_dir(self.directory):
            return
        for name in self.g.ls(self.directory):
            self.g.rm_f(f"{self.directory}/{name}")
        # Deepest first: the run directory, then the parents it created.
        for directory in self._created_dirs or [self.directory]:
            try:
                if self.g.is_dir(directory) and not self.g.ls(directory):
                    self.g.rmdir(directory)
            except GuestFileError:
                log.warning("journal.dir_left", path=directory)


def _restore_entries(g: GuestFilesView, directory: str, entries: list[Entry]) -> Iterator[Restored]:
    for entry in reversed(entries):
        if entry.directory:
            if g.is_dir(entry.path) and not g.ls(entry.path):
                g.rmdir(entry.path)
                yield Restored(entry.path, entry.step, "removed")
            elif g.exists(entry.path):
                log.warning("journal.dir_left", path=entry.path, why="not empty")
        elif entry.existed:
            assert entry.backup is not None  # noqa: S101 - existed implies a backup
            data = g.read_file(f"{directory}/{entry.backup}")
            if _sha(data) != entry.sha256:
                raise JournalError(f"{directory}/{entry.backup}: the kept copy is damaged")
            replace_file(g, entry.path, data, entry.mode)
            yield Restored(entry.path, entry.step, "restored")
        else:
            g.rm_f(entry.path)
            yield Restored(entry.path, entry.step, "removed")


def journals(g: GuestFilesView) -> list[str]:
    """The run ids of the journals kept in the guest, oldest first."""
    if not g.is_dir(JOURNAL_DIR):
        return []
    return sorted(
        name for name in g.ls(JOURNAL_DIR) if g.is_file(f"{JOURNAL_DIR}/{name}/{_MANIFEST}")
    )


def undo(g: GuestFilesView) -> list[Restored]:
    """Restore every file every kept run changed, newest run first; drop the journals."""
    restored: list[Restored] = []
    for run_id in reversed(journals(g)):
        directory = f"{JOURNAL_DIR}/{run_id}"
        manifest = json.loads(g.read_file(f"{directory}/{_MANIFEST}"))
        entries = [Entry(**e) for e in manifest["entries"]]
        restored.extend(_restore_entries(g, directory, entries))
        Journal(g, run_id)._drop()
    # The directories vmcraft made for its journals, when nothing else is in them.
    for directory in (JOURNAL_DIR, posixpath.dirname(JOURNAL_DIR)):
        if g.is_dir(directory) and not g.ls(directory):
            g.rmdir(directory)
    return restored
