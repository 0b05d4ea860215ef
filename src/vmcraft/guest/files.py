"""Guest paths resolved inside the guest, never on the host.

A guest's ``/etc/resolv.conf`` may be a symlink to ``/run/...`` or
``../../../../etc/shadow``. Every path here is opened with ``openat2(2)``
and ``RESOLVE_IN_ROOT``: the kernel resolves absolute links and ``..``
against the guest root, as the guest itself would see them, and magic
links (``/proc/self/fd``) are refused (the syscall is in ``syscalls.py``:
Python has no openat2 and no maintained package wraps it).

No ``OSError`` leaves this module: every public call is wrapped at its
boundary (:func:`_guest_call`), so a full disk, an I/O error or a read-only
filesystem anywhere inside it comes out as a :class:`GuestFileError`
(a ``RuntimeError``) naming the call and the guest path.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import functools
import glob
import inspect
import os
import posixpath
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar

from vmcraft.errors import GuestFileError, os_error
from vmcraft.host import run_tool
from vmcraft.mount import syscalls

_P = ParamSpec("_P")
_R = TypeVar("_R")
_Method = Callable[Concatenate["GuestFiles", _P], _R]

# What cp prints is strerror(3)'s text: the errno a failed cp_a reports.
_CP_ERRNOS = (
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.ENOENT,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.EEXIST,
    errno.ENAMETOOLONG,
    errno.EFBIG,
    errno.EMLINK,
    errno.ELOOP,
)


def _guest_call(path_param: str) -> Callable[[_Method[_P, _R]], _Method[_P, _R]]:
    """Turn any ``OSError`` the method lets out into ``GuestFileError(call, path)``.

    ``call`` is the method's own ``call`` argument where it has one (``upload``
    writes through ``write``, and its errors say ``upload``), else its name;
    ``path`` is the argument named ``path_param``.
    """

    def wrap(method: _Method[_P, _R]) -> _Method[_P, _R]:
        signature = inspect.signature(method)

        def wrapper(self: GuestFiles, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
            try:
                return method(self, *args, **kwargs)
            except OSError:
                # Only now, off the hot path: which call, on which path.
                bound = signature.bind(self, *args, **kwargs).arguments
                with os_error(str(bound.get("call", method.__name__)), str(bound[path_param])):
                    raise

        functools.update_wrapper(wrapper, method)
        wrapper.__guest_call__ = path_param  # type: ignore[attr-defined]
        return wrapper

    return wrap


def _raise(exc: OSError) -> None:
    raise exc


class GuestFiles:
    """libguestfs-style file calls on a mounted guest tree."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _open(self, call: str, path: str, flags: int, mode: int = 0) -> int:
        if not path.startswith("/"):
            raise GuestFileError(call, path, errno.EINVAL)
        # Not in os_error: a root that is gone is not "no such guest file"
        # (exists() must not answer False); the public call's wrapper reports it.
        root_fd = os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            with os_error(call, path):
                return syscalls.openat2_in_root(root_fd, path, flags | os.O_CLOEXEC, mode)
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

    def _is_dir(self, call: str, path: str, *, follow: bool) -> bool:
        st = self._stat(call, path, follow=follow)
        return st is not None and stat.S_ISDIR(st.st_mode)

    @_guest_call("path")
    def stat(self, path: str, *, follow: bool = True, call: str = "stat") -> os.stat_result:
        st = self._stat(call, path, follow=follow)
        if st is None:
            raise GuestFileError(call, path, errno.ENOENT)
        return st

    @_guest_call("path")
    def exists(self, path: str) -> bool:
        return self._stat("exists", path, follow=True) is not None

    @_guest_call("path")
    def is_file(self, path: str, followsymlinks: bool = False) -> bool:
        st = self._stat("is_file", path, follow=followsymlinks)
        return st is not None and stat.S_ISREG(st.st_mode)

    @_guest_call("path")
    def is_dir(self, path: str, followsymlinks: bool = False) -> bool:
        return self._is_dir("is_dir", path, follow=followsymlinks)

    @staticmethod
    def _require_regular(call: str, path: str, fd: int) -> None:
        """Close ``fd`` and raise unless it is a regular file."""
        try:
            mode = os.fstat(fd).st_mode
        except BaseException:
            os.close(fd)
            raise
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
            with os_error(call, path):
                return os.open(f"/proc/self/fd/{probe}", flags | os.O_CLOEXEC | os.O_NOCTTY)
        finally:
            os.close(probe)

    @_guest_call("path")
    def read_file(self, path: str, *, call: str = "read_file") -> bytes:
        fd = self._open_regular(call, path, os.O_RDONLY)
        with os.fdopen(fd, "rb") as f:
            return f.read()

    def _open_for_write(self, call: str, path: str) -> int:
        try:
            return self._open_regular(call, path, os.O_WRONLY | os.O_TRUNC)
        except GuestFileError as exc:
            if exc.errno != errno.ENOENT:
                raise
        # A new file (through a guest symlink too, resolved in the guest).
        # O_NONBLOCK: should a FIFO appear meanwhile, the open fails
        # instead of waiting for a reader; it is refused just below.
        fd = self._open(call, path, os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK | os.O_NOCTTY, 0o644)
        self._require_regular(call, path, fd)
        try:
            os.set_blocking(fd, True)
            os.ftruncate(fd, 0)
        except BaseException:
            os.close(fd)
            raise
        return fd

    @_guest_call("path")
    def write(self, path: str, content: bytes | str, *, call: str = "write") -> None:
        """Replace the file's content; on ENOSPC what fitted stays, as with libguestfs."""
        data = content.encode() if isinstance(content, str) else content
        with os.fdopen(self._open_for_write(call, path), "wb") as f:
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

    @_guest_call("path")
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

    @_guest_call("path")
    def is_link(self, path: str) -> bool:
        st = self._stat("is_link", path, follow=False)
        return st is not None and stat.S_ISLNK(st.st_mode)

    @_guest_call("path")
    def statvfs(self, path: str) -> os.statvfs_result:
        fd = self._open("statvfs", path, os.O_PATH)
        try:
            return os.statvfs(fd)
        finally:
            os.close(fd)

    @_guest_call("path")
    def mkdir(self, path: str, mode: int = 0o755, *, call: str = "mkdir") -> None:
        parent, name = self._parent(call, path)
        try:
            os.mkdir(name, mode, dir_fd=parent)
        finally:
            os.close(parent)

    @_guest_call("path")
    def mkdir_p(self, path: str, mode: int = 0o755) -> None:
        if not path.startswith("/"):
            raise GuestFileError("mkdir_p", path, errno.EINVAL)
        current = ""
        for part in [p for p in posixpath.normpath(path).split("/") if p]:
            current = f"{current}/{part}"
            if self._is_dir("mkdir_p", current, follow=True):
                continue
            try:
                self.mkdir(current, mode, call="mkdir_p")
            except GuestFileError as exc:
                if exc.errno != errno.EEXIST or not self._is_dir("mkdir_p", current, follow=True):
                    raise

    @_guest_call("path")
    def chmod(self, mode: int, path: str) -> None:
        fd = self._open("chmod", path, os.O_PATH)
        try:
            os.chmod(f"/proc/self/fd/{fd}", mode)
        finally:
            os.close(fd)

    @_guest_call("linkname")
    def ln_sf(self, target: str, linkname: str) -> None:
        """Make ``linkname`` a symlink to ``target``, replacing what was there."""
        if self._is_dir("ln_sf", linkname, follow=False):  # like ln -sf: a link inside it
            parent = self._open("ln_sf", linkname, os.O_PATH | os.O_DIRECTORY)
            name = posixpath.basename(target.rstrip("/"))
        else:
            parent, name = self._parent("ln_sf", linkname)
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=parent)
            os.symlink(target, name, dir_fd=parent)
        finally:
            os.close(parent)

    @_guest_call("oldpath")
    def rename(self, oldpath: str, newpath: str) -> None:
        old_parent, old_name = self._parent("rename", oldpath)
        try:
            new_parent, new_name = self._parent("rename", newpath)
            try:
                os.rename(old_name, new_name, src_dir_fd=old_parent, dst_dir_fd=new_parent)
            finally:
                os.close(new_parent)
        finally:
            os.close(old_parent)

    @_guest_call("path")
    def rm(self, path: str, *, force: bool = False, call: str = "rm") -> None:
        try:
            parent, name = self._parent(call, path)
        except GuestFileError as exc:
            if force and exc.errno in (errno.ENOENT, errno.ENOTDIR):
                return
            raise
        try:
            os.unlink(name, dir_fd=parent)
        except FileNotFoundError:
            if not force:
                raise
        finally:
            os.close(parent)

    @_guest_call("path")
    def rmdir(self, path: str, *, call: str = "rmdir") -> None:
        """Remove an empty directory (libguestfs's ``rmdir``)."""
        parent, name = self._parent(call, path)
        try:
            os.rmdir(name, dir_fd=parent)
        finally:
            os.close(parent)

    @_guest_call("dest")
    def cp(self, src: str, dest: str, *, call: str = "cp") -> None:
        """Copy one regular file; into ``dest`` when it is a directory."""
        if self._is_dir(call, dest, follow=True):
            dest = posixpath.join(dest, posixpath.basename(src))
        self.write(dest, self.read_file(src, call=call), call=call)

    @_guest_call("src")
    def cp_a(self, src: str, dest: str) -> None:
        """``cp -a`` inside the guest: both ends resolved in the guest, links kept as links.

        cp runs in the source's parent directory (entered through our fd) and
        writes below the destination's fd, so no path it sees crosses a
        guest symlink; it unlinks rather than writes through what it replaces.
        """
        src_parent, src_name = self._parent("cp_a", src)
        try:
            if self._is_dir("cp_a", dest, follow=True):
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
            said = next((e for e in _CP_ERRNOS if os.strerror(e) in done.stderr), errno.EIO)
            raise GuestFileError("cp_a", src, said)

    @_guest_call("directory")
    def find(self, directory: str) -> list[str]:
        """Every path below ``directory``, relative to it, links not followed (as libguestfs).

        A directory below that cannot be read fails the call, as in libguestfs,
        rather than leaving its entries out.
        """
        fd = self._open("find", directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            found = []
            walk = os.fwalk(".", dir_fd=fd, follow_symlinks=False, onerror=_raise)
            for top, dirs, files, _ in walk:
                prefix = "" if top == "." else top.removeprefix("./") + "/"
                found += [prefix + name for name in (*dirs, *files)]
            return sorted(found)
        finally:
            os.close(fd)

    @_guest_call("pattern")
    def glob_expand(self, pattern: str) -> list[str]:
        """Guest paths matching a shell pattern, each level listed inside the guest."""
        matches = ["/"]
        for part in [p for p in pattern.split("/") if p]:
            following = []
            for base in matches:
                if not self._is_dir("glob_expand", base, follow=True):
                    continue
                if glob.has_magic(part):
                    names = fnmatch.filter(
                        [
                            n
                            for n in self._listdir("glob_expand", base)
                            if part.startswith(".") or not n.startswith(".")
                        ],
                        part,
                    )
                else:
                    names = (
                        [part]
                        if self._stat("glob_expand", posixpath.join(base, part), follow=False)
                        else []
                    )
                following += [posixpath.join(base, n) for n in names]
            matches = following
        return sorted(m for m in matches if m != "/")

    def _listdir(self, call: str, directory: str) -> list[str]:
        fd = self._open(call, directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            return sorted(os.listdir(fd))
        finally:
            os.close(fd)

    @_guest_call("directory")
    def ls(self, directory: str) -> list[str]:
        return self._listdir("ls", directory)
