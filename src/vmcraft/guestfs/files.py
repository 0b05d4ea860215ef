"""Files in the guest: every path is resolved inside the guest root (openat2).

A guest disk is untrusted: its symlinks are followed as the guest would
follow them, never out onto the host (see guest/files.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from vmcraft.errors import HostFileError, VMCraftError, os_error
from vmcraft.guestfs.base import DIFFERS, IMPLEMENTED, Conformance, HandleState


class FileCalls(HandleState):
    """exists, stat, read_file, write, ls, cp, rm, upload, download and the rest."""

    CALLS: ClassVar[Conformance] = {
        "exists": (IMPLEMENTED, ""),
        "is_file": (IMPLEMENTED, ""),
        "is_dir": (IMPLEMENTED, ""),
        "is_link": (IMPLEMENTED, ""),
        "stat": (IMPLEMENTED, ""),
        "statns": (IMPLEMENTED, ""),
        "statvfs": (IMPLEMENTED, ""),
        "filesize": (IMPLEMENTED, ""),
        "ls": (IMPLEMENTED, ""),
        "find": (IMPLEMENTED, ""),
        "glob_expand": (IMPLEMENTED, ""),
        "realpath": (IMPLEMENTED, ""),
        "read_file": (IMPLEMENTED, "regular files only (no FIFOs or device nodes)"),
        "write": (IMPLEMENTED, "regular files only"),
        "mkdir": (IMPLEMENTED, ""),
        "mkdir_p": (IMPLEMENTED, ""),
        "chmod": (IMPLEMENTED, ""),
        "ln_sf": (IMPLEMENTED, ""),
        "cp": (IMPLEMENTED, ""),
        "cp_a": (IMPLEMENTED, ""),
        "copy_file_to_file": (
            DIFFERS,
            "whole files only (offsets and sparse copies are not supported)",
        ),
        "rename": (IMPLEMENTED, ""),
        "rm": (IMPLEMENTED, ""),
        "rm_f": (IMPLEMENTED, ""),
        "rmdir": (IMPLEMENTED, ""),
        "upload": (IMPLEMENTED, ""),
        "download": (IMPLEMENTED, ""),
    }

    def exists(self, path: str) -> bool:
        return self._files().exists(path)

    def stat(self, path: str) -> dict[str, int]:
        """libguestfs's ``stat``: the fields of stat(2) as a dict (follows symlinks)."""
        st = self._files().stat(path)
        return {
            "dev": st.st_dev,
            "ino": st.st_ino,
            "mode": st.st_mode,
            "nlink": st.st_nlink,
            "uid": st.st_uid,
            "gid": st.st_gid,
            "rdev": st.st_rdev,
            "size": st.st_size,
            "blksize": st.st_blksize,
            "blocks": st.st_blocks,
            "atime": int(st.st_atime),
            "mtime": int(st.st_mtime),
            "ctime": int(st.st_ctime),
        }

    def is_file(self, path: str, followsymlinks: bool = False) -> bool:
        return self._files().is_file(path, followsymlinks)

    def is_dir(self, path: str, followsymlinks: bool = False) -> bool:
        return self._files().is_dir(path, followsymlinks)

    def read_file(self, path: str) -> bytes:
        return self._files().read_file(path)

    def cat(self, path: str) -> str:
        return self._files().read_file(path, call="cat").decode(errors="replace")

    def write(self, path: str, content: bytes | str) -> None:
        self._files().write(path, content)

    def ls(self, directory: str) -> list[str]:
        return self._files().ls(directory)

    def is_link(self, path: str) -> bool:
        return self._files().is_link(path)

    def statvfs(self, path: str) -> dict[str, int]:
        st = self._files().statvfs(path)
        return {
            "bsize": st.f_bsize,
            "frsize": st.f_frsize,
            "blocks": st.f_blocks,
            "bfree": st.f_bfree,
            "bavail": st.f_bavail,
            "files": st.f_files,
            "ffree": st.f_ffree,
            "favail": st.f_favail,
            "fsid": st.f_fsid,
            "flag": st.f_flag,
            "namemax": st.f_namemax,
        }

    def find(self, directory: str) -> list[str]:
        return self._files().find(directory)

    def glob_expand(self, pattern: str, directoryslash: bool = False) -> list[str]:
        found = self._files().glob_expand(pattern)
        if directoryslash:
            found = [f + "/" if self._files().is_dir(f) else f for f in found]
        return found

    def realpath(self, path: str) -> str:
        return self._files().realpath(path)

    def mkdir(self, path: str) -> None:
        self._files().mkdir(path)

    def mkdir_p(self, path: str) -> None:
        self._files().mkdir_p(path)

    def chmod(self, mode: int, path: str) -> None:
        self._files().chmod(mode, path)

    def ln_sf(self, target: str, linkname: str) -> None:
        self._files().ln_sf(target, linkname)

    def cp(self, src: str, dest: str) -> None:
        self._files().cp(src, dest)

    def cp_a(self, src: str, dest: str) -> None:
        self._files().cp_a(src, dest)

    def copy_file_to_file(self, src: str, dest: str, **options: object) -> None:
        if options.get("srcoffset") or options.get("destoffset") or options.get("size"):
            raise VMCraftError("copy_file_to_file: offsets and sizes are not supported")
        self._files().cp(src, dest, call="copy_file_to_file")

    def rename(self, oldpath: str, newpath: str) -> None:
        self._files().rename(oldpath, newpath)

    def rm(self, path: str) -> None:
        self._files().rm(path)

    def rm_f(self, path: str) -> None:
        self._files().rm(path, force=True, call="rm_f")

    def rmdir(self, path: str) -> None:
        self._files().rmdir(path)

    def filesize(self, path: str) -> int:
        return self._files().stat(path, call="filesize").st_size

    def upload(self, filename: str, remotefilename: str) -> None:
        """Copy a host file into the guest: a HostFileError for the host side, a
        GuestFileError for the guest's (ENOSPC, EROFS...), both naming ``upload``."""
        with os_error("upload", filename, error=HostFileError):
            content = Path(filename).read_bytes()
        self._files().write(remotefilename, content, call="upload")

    def download(self, remotefilename: str, filename: str) -> None:
        """Copy a guest file to the host: errors as in :meth:`upload`. A host disk
        that fills up leaves what fitted, as libguestfs does."""
        content = self._files().read_file(remotefilename, call="download")
        with os_error("download", filename, error=HostFileError):
            Path(filename).write_bytes(content)

    def statns(self, path: str) -> dict[str, int]:
        st = self._files().stat(path, call="statns")
        out = {
            f"st_{k}": getattr(st, f"st_{k}")
            for k in (
                "dev",
                "ino",
                "mode",
                "nlink",
                "uid",
                "gid",
                "rdev",
                "size",
                "blksize",
                "blocks",
            )
        }
        for field in ("atime", "mtime", "ctime"):
            ns = getattr(st, f"st_{field}_ns")
            out[f"st_{field}_sec"], out[f"st_{field}_nsec"] = divmod(ns, 1_000_000_000)
        return out
