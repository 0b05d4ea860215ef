"""The rest of libguestfs's API that migration scripts call, with its semantics.

hyper2kvm's OfflineFSFix (and scripts like it) drive a ``guestfs.GuestFS``
handle opened with ``python_return_dict=True``: argument order, return types
and ``RuntimeError`` on failure follow libguestfs. Calls that cannot be
honoured on this host raise the error libguestfs would, never a silent
success. ``CALLS`` lists every call and how it conforms; docs/conformance.md
is generated from it (``vmcraft conformance``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from vmcraft import syscalls
from vmcraft.chroot.mountinfo import mount_points
from vmcraft.disks import lvm
from vmcraft.errors import GuestMountError, VMCraftError
from vmcraft.host import host_tool, run_tool
from vmcraft.unmount import unmount
from vmcraft.version import package_version

if TYPE_CHECKING:
    from vmcraft.disks.attach import AttachedDisks
    from vmcraft.guest.files import GuestFiles
    from vmcraft.guest.mounts import GuestMount
    from vmcraft.inspect.inspector import OSInfo

IMPLEMENTED = "implemented with libguestfs semantics"

# name -> (status, how it differs). Kept here, beside the code, so the
# conformance table cannot drift from it (tests check both ways).
CALLS: dict[str, tuple[str, str]] = {
    "add_drive_opts": (IMPLEMENTED, "read-only by default, as the seed's library"),
    "launch": (IMPLEMENTED, "loop devices / qemu-storage-daemon instead of an appliance"),
    "close": (IMPLEMENTED, ""),
    "sync": (IMPLEMENTED, ""),
    "set_trace": ("differs", "accepted; calls are logged as structlog events instead"),
    "version": (IMPLEMENTED, "vmcraft's own version numbers, extra='vmcraft'"),
    "get_backend_settings": (IMPLEMENTED, "always [] (no appliance to configure)"),
    "list_devices": (IMPLEMENTED, ""),
    "list_partitions": (IMPLEMENTED, ""),
    "list_filesystems": (IMPLEMENTED, ""),
    "blkid": (IMPLEMENTED, ""),
    "vfs_type": (IMPLEMENTED, ""),
    "vfs_uuid": (IMPLEMENTED, ""),
    "findfs_uuid": (IMPLEMENTED, ""),
    "findfs_label": (IMPLEMENTED, ""),
    "vgscan": (IMPLEMENTED, "the scan happens at launch; a no-op afterwards"),
    "vgchange_activate_all": (
        "differs",
        "VGs are activated at launch (device-mapper, or linear LVs on loop devices); "
        "deactivating is refused while LVs are mounted",
    ),
    "vgs": (IMPLEMENTED, ""),
    "pvs": (IMPLEMENTED, ""),
    "lvs": (IMPLEMENTED, ""),
    "cryptsetup_open": (
        "differs",
        "cryptsetup on the host, through device-mapper; raises RuntimeError where the host "
        "has none (as libguestfs raises when it cannot open the device)",
    ),
    "inspect_os": (IMPLEMENTED, "Linux guests (os-release); no Windows"),
    "inspect_get_type": (IMPLEMENTED, ""),
    "inspect_get_distro": (IMPLEMENTED, ""),
    "inspect_get_product_name": (IMPLEMENTED, ""),
    "inspect_get_major_version": (IMPLEMENTED, ""),
    "inspect_get_minor_version": (IMPLEMENTED, ""),
    "inspect_get_mountpoints": (IMPLEMENTED, ""),
    "inspect_get_arch": (IMPLEMENTED, "from the ELF header of the guest's /bin/sh"),
    "mount": (IMPLEMENTED, "guest filesystems are mounted nodev"),
    "mount_ro": (IMPLEMENTED, "no journal replay (noload/norecovery)"),
    "mount_options": (IMPLEMENTED, ""),
    "umount": (IMPLEMENTED, ""),
    "umount_all": (IMPLEMENTED, ""),
    "mount_local": (
        "differs",
        "a bind mount of the guest tree (no FUSE server); readonly honoured",
    ),
    "mount_local_run": ("differs", "returns at once: there is no FUSE loop to serve"),
    "umount_local": (IMPLEMENTED, ""),
    "exists": (IMPLEMENTED, ""),
    "is_file": (IMPLEMENTED, ""),
    "is_dir": (IMPLEMENTED, ""),
    "is_link": (IMPLEMENTED, ""),
    "stat": (IMPLEMENTED, ""),
    "statvfs": (IMPLEMENTED, ""),
    "ls": (IMPLEMENTED, ""),
    "find": (IMPLEMENTED, ""),
    "glob_expand": (IMPLEMENTED, ""),
    "realpath": (IMPLEMENTED, ""),
    "read_file": (IMPLEMENTED, "regular files only (no FIFOs or device nodes)"),
    "write": (IMPLEMENTED, "regular files only"),
    "mkdir_p": (IMPLEMENTED, ""),
    "chmod": (IMPLEMENTED, ""),
    "ln_sf": (IMPLEMENTED, ""),
    "cp": (IMPLEMENTED, ""),
    "cp_a": (IMPLEMENTED, ""),
    "copy_file_to_file": (
        "differs",
        "whole files only (offsets and sparse copies are not supported)",
    ),
    "rename": (IMPLEMENTED, ""),
    "rm": (IMPLEMENTED, ""),
    "rm_f": (IMPLEMENTED, ""),
    "e2fsck": (IMPLEMENTED, "runs the host's e2fsck on the unmounted device"),
    "mkdir": (IMPLEMENTED, ""),
    "filesize": (IMPLEMENTED, ""),
    "statns": (IMPLEMENTED, ""),
    "upload": (IMPLEMENTED, ""),
    "download": (IMPLEMENTED, ""),
    "get_trace": (IMPLEMENTED, ""),
    "command": (IMPLEMENTED, ""),
    "command_quiet": ("vmcraft extension", "command, failures logged at debug level"),
    "command_with_mounts": ("vmcraft extension", "command with /proc, /dev, /sys provided"),
}


class GuestfsCalls:
    """Mixed into VMCraft: the libguestfs calls beyond the core ones."""

    _trace = 0
    _local_mount: Path | None = None

    # Provided by VMCraft.
    def _attached(self) -> AttachedDisks:
        raise NotImplementedError

    def _files(self) -> GuestFiles:
        raise NotImplementedError

    def guest_mounts(self) -> list[GuestMount]:
        raise NotImplementedError

    @property
    def root(self) -> Path:
        raise NotImplementedError

    def inspect(self, root: str) -> OSInfo:
        raise NotImplementedError

    # -- handle -------------------------------------------------------------

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

    # -- devices ------------------------------------------------------------

    def blkid(self, device: str) -> dict[str, str]:
        disks = self._attached()
        disks.table.host_node(device)  # UnknownDeviceError for names not on the drives
        canon = disks.table.canonical(device)
        ids = dict(disks.ids.get(canon, {}))
        # Host names and numbers stay on the host: the guest's name, as libguestfs gives it.
        ids["DEVNAME"] = canon
        ids.pop("PART_ENTRY_DISK", None)
        return ids

    def _findfs(self, key: str, value: str) -> str:
        for name, ids in self._attached().ids.items():
            if ids.get(key) == value and ids.get("TYPE") != "LVM2_member":
                return name
        raise VMCraftError(f"findfs: unable to resolve '{key}={value}'")

    def findfs_uuid(self, uuid: str) -> str:
        return self._findfs("UUID", uuid)

    def findfs_label(self, label: str) -> str:
        return self._findfs("LABEL", label)

    def vgscan(self) -> None:
        self._attached()

    def vgchange_activate_all(self, activate: bool) -> None:
        if not activate and any(
            m.device in self._attached().table.volumes for m in self.guest_mounts()
        ):
            raise VMCraftError("vgchange_activate_all: logical volumes are still mounted")

    def vgs(self) -> list[str]:
        return sorted({name.split("/")[2] for name in self._attached().table.list_lvs()})

    def pvs(self) -> list[str]:
        disks = self._attached()
        return [n for n, ids in disks.ids.items() if ids.get("TYPE") == "LVM2_member"]

    def cryptsetup_open(
        self, device: str, key: str, mapname: str, readonly: bool = False, **_: object
    ) -> None:
        disks = self._attached()
        disks.table.host_node(device)
        if disks.ids.get(disks.table.canonical(device), {}).get("TYPE") != "crypto_LUKS":
            raise VMCraftError(f"cryptsetup_open: {device}: not a LUKS device")
        if not lvm.device_mapper_available():
            raise VMCraftError(
                f"cryptsetup_open: {device}: this host has no device-mapper, "
                "which opening a LUKS device needs"
            )
        guest_name = f"/dev/mapper/{mapname}"
        if guest_name in disks.table.volumes:
            raise VMCraftError(f"cryptsetup_open: {guest_name} is already open")
        # The host-side name carries our pid: a guest's mapname never meets the host's own.
        host_name = f"vmcraft{os.getpid()}-{mapname}"
        tool = host_tool("cryptsetup", "cryptsetup-bin")
        argv = [tool, "open", "--type", "luks", "--key-file=-"]
        readonly = readonly or disks.readonly(device)
        if readonly:
            argv.append("--readonly")
        done = run_tool(
            [*argv, os.fspath(disks.table.host_node(device)), host_name],
            input=key,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            tail = done.stderr.strip().splitlines()[-1:] or ["cryptsetup failed"]
            raise VMCraftError(f"cryptsetup_open: {device}: {tail[0]}")
        disks.on_detach(
            lambda: run_tool([tool, "close", host_name], capture_output=True, timeout=120)
        )
        node = Path(os.path.realpath(f"/dev/mapper/{host_name}"))
        disks.add_volume(guest_name, node, readonly=readonly)

    def e2fsck(self, device: str, correct: bool = False, forceall: bool = False) -> None:
        if correct and forceall:
            raise VMCraftError("e2fsck: only one of correct or forceall may be set")
        disks = self._attached()
        node = disks.table.host_node(device)
        if any(m.node == node for m in self.guest_mounts()):
            raise VMCraftError(f"e2fsck: {device} is mounted")
        if disks.readonly(device) and (correct or forceall):
            raise VMCraftError(f"e2fsck: {device} is on a read-only drive")
        mode = "-p" if correct else "-y" if forceall else "-n"
        done = run_tool(
            [host_tool("e2fsck", "e2fsprogs"), "-f", mode, os.fspath(node)],
            capture_output=True,
            text=True,
            timeout=3600,
        )
        # e2fsck: 0 clean, 1 errors corrected; anything else is a failure.
        if done.returncode not in (0, 1):
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["failed"]
            raise VMCraftError(f"e2fsck: {device}: {tail[0]}")

    # -- the guest tree on the host -----------------------------------------

    def mount_local(self, localmountpoint: str, readonly: bool = False, **_: object) -> None:
        if self._local_mount is not None:
            raise GuestMountError("mount_local: already mounted")
        target = Path(localmountpoint)
        if not target.is_dir() or target.is_symlink():
            raise GuestMountError(f"mount_local: {localmountpoint}: not a directory")
        where = os.fspath(target)
        syscalls.mount(os.fspath(self.root), where, None, syscalls.MS_BIND | syscalls.MS_REC)
        syscalls.mount(None, where, None, syscalls.MS_REC | syscalls.MS_PRIVATE)
        self._local_mount = target
        if readonly:
            # A bind remount is per mount: every guest mount under it too.
            flags = syscalls.MS_BIND | syscalls.MS_REMOUNT | syscalls.MS_RDONLY
            for point in self._local_mounts():
                syscalls.mount(None, point, None, flags)

    def _local_mounts(self) -> list[str]:
        """Mount points of the local tree, deepest first."""
        if self._local_mount is None:
            return []
        top = os.fspath(self._local_mount)
        points = [p for p in mount_points() if p == top or p.startswith(top + "/")]
        return sorted(points, key=lambda p: p.count("/"), reverse=True)

    def mount_local_run(self) -> None:
        if self._local_mount is None:
            raise GuestMountError("mount_local_run: call mount_local first")

    def umount_local(self, **_: object) -> None:
        points = self._local_mounts()
        self._local_mount = None
        for point in points:
            try:
                unmount(point)
            except VMCraftError:
                syscalls.umount(point, syscalls.MNT_DETACH)

    # -- files ----------------------------------------------------------------

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
        self._files().cp(src, dest)

    def rename(self, oldpath: str, newpath: str) -> None:
        self._files().rename(oldpath, newpath)

    def rm(self, path: str) -> None:
        self._files().rm(path)

    def rm_f(self, path: str) -> None:
        self._files().rm(path, force=True)

    def filesize(self, path: str) -> int:
        return self._files().stat(path).st_size

    def upload(self, filename: str, remotefilename: str) -> None:
        self._files().write(remotefilename, Path(filename).read_bytes())

    def download(self, remotefilename: str, filename: str) -> None:
        Path(filename).write_bytes(self._files().read_file(remotefilename))

    def statns(self, path: str) -> dict[str, int]:
        st = self._files().stat(path)
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

    def inspect_get_arch(self, root: str) -> str:
        return self.inspect(root).arch


def conformance_table() -> str:
    lines = [
        "# libguestfs conformance",
        "",
        "Every call hyper2kvm 0.2.1's offline fixers make, as `vmcraft.VMCraft` answers it.",
        "Generated from `vmcraft.guestfs_calls.CALLS` by `python -m vmcraft conformance`;",
        "a test fails if this file or the handle drifts from it.",
        "",
        "| call | status | notes |",
        "|---|---|---|",
    ]
    lines += [f"| `{name}` | {status} | {note} |" for name, (status, note) in CALLS.items()]
    return "\n".join(lines) + "\n"
