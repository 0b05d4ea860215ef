"""Every guest command in a bubblewrap sandbox that is gone when the command is.

The guest's tools run the guest's own scripts as root (grub.d, initramfs
hooks, kernel postinst.d, maintainer scripts), and a converted estate holds
compromised VMs. The sandbox gives the command, and everything it starts:

- a mount namespace of its own: the guest's root (with the guest's
  filesystems under it) as ``/``, a fresh procfs of its own PID namespace
  (read-only: bwrap leaves /proc/sys writable otherwise), the host's sysfs
  read-only, a minimal /dev holding only the guest's own block devices and
  the links udev would make for them, a tmpfs /run;
- its own PID, network (loopback only), IPC, UTS and cgroup namespaces;
- host root's uid, but only the capabilities dpkg and its maintainer
  scripts need (no SYS_ADMIN, MKNOD, SYS_MODULE, SYS_BOOT, SYS_RAWIO,
  NET_ADMIN, SYS_PTRACE, DAC_READ_SEARCH...), no_new_privs, and the
  syscall filter of ``seccomp.py``;
- death with its parent: bwrap's PID 1 gets SIGKILL when vmcraft dies,
  and the kernel then ends every process of the namespace and drops its
  mounts. Nothing it made outlives it, whatever happens to vmcraft; there
  is no code that has to undo it.

No user namespace, on purpose: mapping the guest's root to an unprivileged
range needs idmapped mounts of every guest filesystem (not of the staged
ESP's tmpfs, nor an overlay), and bwrap cannot be given such a namespace
as root; a plain ``--unshare-user`` maps 0 to 0, which drops nothing for
file access and breaks every chown dpkg makes. docs/sandbox.md has the
measurements and the threat model.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass

from vmcraft.host import host_tool
from vmcraft.mount.devtree import BlockDevice, udev_escape

CAPABILITIES = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SYS_CHROOT",
)
"""What dpkg and its maintainer scripts need as root; grub and initramfs tools need none."""

HOSTNAME = "vmcraft-guest"


@dataclass(frozen=True)
class Sandbox:
    """How one guest root is sandboxed: the root and the block devices it may see."""

    root: str
    devices: tuple[BlockDevice, ...] = ()

    def argv(
        self, command: Sequence[str], *, seccomp_fd: int, info_fd: int | None = None
    ) -> list[str]:
        """bwrap's command line running ``command`` in the sandbox.

        ``info_fd`` gets bwrap's JSON with the sandbox's PID 1 (``child-pid``),
        whose exit the kernel reports once every process in the sandbox is gone.
        """
        args = [
            host_tool("bwrap", "bubblewrap"),
            "--unshare-pid",
            "--unshare-net",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-cgroup-try",
            "--hostname",
            HOSTNAME,
            "--die-with-parent",
            "--new-session",
            "--bind",
            self.root,
            "/",
            "--proc",
            "/proc",
            "--remount-ro",
            "/proc",
            "--ro-bind",
            "/sys",
            "/sys",
            "--dev",
            "/dev",
            *self._device_args(),
            "--tmpfs",
            "/run",
            "--cap-drop",
            "ALL",
        ]
        for cap in CAPABILITIES:
            args += ["--cap-add", cap]
        if info_fd is not None:
            args += ["--info-fd", str(info_fd)]
        return [*args, "--seccomp", str(seccomp_fd), "--", *command]

    def _device_args(self) -> list[str]:
        """The guest's block nodes under their host names, and the guest's names as links."""
        args: list[str] = []
        links: dict[str, str] = {}
        for device in self.devices:
            name = os.path.basename(device.host_node)
            args += ["--dev-bind", device.host_node, f"/dev/{name}"]
            for alias in device.aliases:
                links.setdefault(alias, name)
            for kind, value in device.ids.items():
                # Two devices sharing a UUID (a cloned disk): the first wins, as in udev.
                links.setdefault(f"disk/{kind}/{udev_escape(value)}", name)
        for link, name in links.items():
            target = posixpath.relpath(f"/dev/{name}", posixpath.dirname(f"/dev/{link}"))
            args += ["--symlink", target, f"/dev/{link}"]
        return args
