"""Guest paths resolved inside the guest, never on the host.

A guest's ``/etc/resolv.conf`` may be a symlink to ``/run/...`` or
``../../../../etc/shadow``. Every path here is opened with ``openat2(2)``
and ``RESOLVE_IN_ROOT``: the kernel resolves absolute links and ``..``
against the guest root, as the guest itself would see them, and magic
links (``/proc/self/fd``) are refused (the syscall is in ``syscalls.py``:
Python has no openat2 and no maintained package wraps it).
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import glob
import os
import posixpath
import stat
from pathlib import Path

from vmcraft.errors import GuestFileError
from vmcraft.host import run_tool
from vmcraft.mount import syscalls


class GuestFiles:
    """libguestfs-style file calls on a mounted guest tree."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _open(self, call: str, path: str, flags: int, mode: int = 0) -> int:
        if not path.startswith("/"):
            raise GuestFileError(call, path, errno.EINVAL)
        root_fd = os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            return syscalls.openat2_in_root(root_fd, path, flags | os.O_CLOEXEC, mode)
        except OSError as exc:
            raise GuestFileError(call, path, exc.errno or errno.EIO) from exc
        finally:
            os.close(root_fd)

    def _stat(self, call: str, path: str, *, follow: bool) -> os.stat_result | None:
        flags = os.O_PATH | (0 if follow else os.O_NOFOLLOW)
        try:
            fd = self._open(call, path, flags)
        except GuestFileError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                return None
            raise
        try:
            return os.fstat(fd)
        finally:
            os.close(fd)

    def stat(self, path: str, *, follow: bool = True) -> os.stat_result:
        st = self._stat("stat", path, follow=follow)
        if st is None:
            raise GuestFileError("stat", path, errno.ENOENT)
        return st

    def exists(self, path: str) -> bool:
        return self._stat("exists", path, follow=True) is not None

    def is_file(self, path: str, followsymlinks: bool = False) -> bool:
        st = self._stat("is_file", path, follow=followsymlinks)
        return st is not None and stat.S_ISREG(st.st_mode)

    def is_dir(self, path: str, followsymlinks: bool = False) -> bool:
        st = self._stat("is_dir", path, follow=followsymlinks)
        return st is not None and stat.S_ISDIR(st.st_mode)

    @staticmethod
    def _require_regular(call: str, path: str, fd: int) -> None:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            raise GuestFileError(call, path, errno.EISDIR if stat.S_ISDIR(mode) else errno.EINVAL)

    def _open_regular(self, call: str, path: str, flags: int) -> int:
        """Open a regular file only: never a FIFO (it would block), a socket,
        or a device node (a hostile guest's node could name a host disk).

        The file is looked at through an O_PATH fd first, then that very
        inode is reopened, so nothing can be swapped in between.
        """
        probe = self._open(call, path, os.O_PATH)
        self._require_regular(call, path, probe)
        try:
            return os.open(f"/proc/self/fd/{probe}", flags | os.O_CLOEXEC | os.O_NOCTTY)
        except OSError as exc:
            raise GuestFileError(call, path, exc.errno or errno.EIO) from exc
        finally:
            os.close(probe)

    def read_file(self, path: str) -> bytes:
        fd = self._open_regular("read_file", path, os.O_RDONLY)
        with os.fdopen(fd, "rb") as f:
            return f.read()

    def write(self, path: str, content: bytes | str) -> None:
        data = content.encode() if isinstance(content, str) else content
        try:
            fd = self._open_regular("write", path, os.O_WRONLY | os.O_TRUNC)
        except GuestFileError as exc:
            if exc.errno != errno.ENOENT:
                raise
            # A new file (through a guest symlink too, resolved in the guest).
            # O_NONBLOCK: should a FIFO appear meanwhile, the open fails
            # instead of waiting for a reader; it is refused just below.
            fd = self._open(
                "write", path, os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK | os.O_NOCTTY, 0o644
            )
            self._require_regular("write", path, fd)
            os.set_blocking(fd, True)
            os.ftruncate(fd, 0)
        with os.fdopen(fd, "wb") as f:
            f.write(data)

    # -- paths as the guest sees them --------------------------------------

    def _parent(self, call: str, path: str) -> tuple[int, str]:
        """An O_PATH fd on ``path``'s parent (resolved in the guest) and the last name."""
        if not path.startswith("/"):
            raise GuestFileError(call, path, errno.EINVAL)
        parent, name = posixpath.split(posixpath.normpath(path))
        if not name or name in (".", ".."):
            raise GuestFileError(call, path, errno.EINVAL)
        return self._open(call, parent or "/", os.O_PATH | os.O_DIRECTORY), name

    def _host_path(self, fd: int) -> str:
        """The host path of an fd opened inside the root."""
        return os.readlink(f"/proc/self/fd/{fd}")

    def realpath(self, path: str) -> str:
        """The canonical guest path: symlinks resolved as the guest resolves them."""
        fd = self._open("realpath", path, os.O_PATH)
        try:
            host = self._host_path(fd)
        finally:
            os.close(fd)
        root = os.path.realpath(self.root)
        if host == root:
            return "/"
        return "/" + os.path.relpath(host, root)

    def is_link(self, path: str) -> bool:
        st = self._stat("is_link", path, follow=False)
        return st is not None and stat.S_ISLNK(st.st_mode)

    def statvfs(self, path: str) -> os.statvfs_result:
        fd = self._open("statvfs", path, os.O_PATH)
        try:
            return os.statvfs(fd)
        finally:
            os.close(fd)

    def mkdir(self, path: str, mode: int = 0o755) -> None:
        parent, name = self._parent("mkdir", path)
        try:
            os.mkdir(name, mode, dir_fd=parent)
        except OSError as exc:
            raise GuestFileError("mkdir", path, exc.errno or errno.EIO) from exc
        finally:
            os.close(parent)

    def mkdir_p(self, path: str, mode: int = 0o755) -> None:
        if not path.startswith("/"):
            raise GuestFileError("mkdir_p", path, errno.EINVAL)
        current = ""
        for part in [p for p in posixpath.normpath(path).split("/") if p]:
            current = f"{current}/{part}"
            if self.is_dir(current, followsymlinks=True):
                continue
            try:
                self.mkdir(current, mode)
            except GuestFileError as exc:
                if exc.errno != errno.EEXIST or not self.is_dir(current, followsymlinks=True):
                    raise

    def chmod(self, mode: int, path: str) -> None:
        fd = self._open("chmod", path, os.O_PATH)
        try:
            os.chmod(f"/proc/self/fd/{fd}", mode)
        except OSError as exc:
            raise GuestFileError("chmod", path, exc.errno or errno.EIO) from exc
        finally:
            os.close(fd)

    def ln_sf(self, target: str, linkname: str) -> None:
        """Make ``linkname`` a symlink to ``target``, replacing what was there."""
        if self.is_dir(linkname):  # like ln -sf: a link inside the directory
            parent = self._open("ln_sf", linkname, os.O_PATH | os.O_DIRECTORY)
            name = posixpath.basename(target.rstrip("/"))
        else:
            parent, name = self._parent("ln_sf", linkname)
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=parent)
            os.symlink(target, name, dir_fd=parent)
        except OSError as exc:
            raise GuestFileError("ln_sf", linkname, exc.errno or errno.EIO) from exc
        finally:
            os.close(parent)

    def rename(self, oldpath: str, newpath: str) -> None:
        old_parent, old_name = self._parent("rename", oldpath)
        try:
            new_parent, new_name = self._parent("rename", newpath)
            try:
                os.rename(old_name, new_name, src_dir_fd=old_parent, dst_dir_fd=new_parent)
            except OSError as exc:
                raise GuestFileError("rename", oldpath, exc.errno or errno.EIO) from exc
            finally:
                os.close(new_parent)
        finally:
            os.close(old_parent)

    def rm(self, path: str, *, force: bool = False) -> None:
        try:
            parent, name = self._parent("rm", path)
        except GuestFileError as exc:
            if force and exc.errno in (errno.ENOENT, errno.ENOTDIR):
                return
            raise
        try:
            os.unlink(name, dir_fd=parent)
        except FileNotFoundError:
            if not force:
                raise GuestFileError("rm", path, errno.ENOENT) from None
        except OSError as exc:
            raise GuestFileError("rm", path, exc.errno or errno.EIO) from exc
        finally:
            os.close(parent)

    def cp(self, src: str, dest: str) -> None:
        """Copy one regular file; into ``dest`` when it is a directory."""
        if self.is_dir(dest, followsymlinks=True):
            dest = posixpath.join(dest, posixpath.basename(src))
        self.write(dest, self.read_file(src))

    def cp_a(self, src: str, dest: str) -> None:
        """``cp -a`` inside the guest: both ends resolved in the guest, links kept as links.

        cp runs in the source's parent directory (entered through our fd) and
        writes below the destination's fd, so no path it sees crosses a
        guest symlink; it unlinks rather than writes through what it replaces.
        """
        src_parent, src_name = self._parent("cp_a", src)
        try:
            if self.is_dir(dest, followsymlinks=True):
                # Into the directory, as the guest resolves it.
                dest_fd = self._open("cp_a", dest, os.O_PATH | os.O_DIRECTORY)
                dest_name = src_name
            else:
                dest_fd, dest_name = self._parent("cp_a", dest)
            try:
                # What cp writes to is never a symlink (cp would follow it on
                # the host): one there is replaced, as cp -a replaces files.
                with contextlib.suppress(FileNotFoundError):
                    if stat.S_ISLNK(os.lstat(dest_name, dir_fd=dest_fd).st_mode):
                        os.unlink(dest_name, dir_fd=dest_fd)
                done = run_tool(
                    [
                        "cp",
                        "-a",
                        "--no-dereference",
                        "--remove-destination",
                        "--no-target-directory",
                        "--",
                        src_name,
                        f"/proc/self/fd/{dest_fd}/{dest_name}",
                    ],
                    cwd=f"/proc/self/fd/{src_parent}",
                    pass_fds=(src_parent, dest_fd),
                    capture_output=True,
                    text=True,
                    timeout=3600,
                )
            finally:
                os.close(dest_fd)
        finally:
            os.close(src_parent)
        if done.returncode != 0:
            raise GuestFileError(
                "cp_a", src, errno.ENOENT if "No such" in done.stderr else errno.EIO
            )

    def find(self, directory: str) -> list[str]:
        """Every path below ``directory``, relative to it, links not followed (as libguestfs)."""
        fd = self._open("find", directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            found = []
            for top, dirs, files, _ in os.fwalk(".", dir_fd=fd, follow_symlinks=False):
                prefix = "" if top == "." else top.removeprefix("./") + "/"
                found += [prefix + name for name in (*dirs, *files)]
            return sorted(found)
        finally:
            os.close(fd)

    def glob_expand(self, pattern: str) -> list[str]:
        """Guest paths matching a shell pattern, each level listed inside the guest."""
        matches = ["/"]
        for part in [p for p in pattern.split("/") if p]:
            following = []
            for base in matches:
                if not self.is_dir(base, followsymlinks=True):
                    continue
                if glob.has_magic(part):
                    names = fnmatch.filter(
                        [n for n in self.ls(base) if part.startswith(".") or not n.startswith(".")],
                        part,
                    )
                else:
                    names = (
                        [part]
                        if self._stat("glob", posixpath.join(base, part), follow=False)
                        else []
                    )
                following += [posixpath.join(base, n) for n in names]
            matches = following
        return sorted(m for m in matches if m != "/")

    def ls(self, directory: str) -> list[str]:
        fd = self._open("ls", directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            return sorted(os.listdir(fd))
        finally:
            os.close(fd)
