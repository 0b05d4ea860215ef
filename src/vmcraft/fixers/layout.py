"""Where a guest keeps its boot files, and which tools regenerate them.

Decided from the guest alone (os-release, fstab, the files under /boot and
the ESP), never from the host. Families vmcraft does not know are reported
as unsupported rather than guessed at: a wrong grub.cfg path on a guest is
a guest that does not boot.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field
from typing import Protocol

from vmcraft.errors import UnsupportedGuestError
from vmcraft.inspect.inspector import elf_arch

__all__ = [
    "FAMILIES",
    "BootLayout",
    "UnsupportedGuestError",
    "boot_mountpoints",
    "detect_layout",
    "grub_target",
    "installed_kernels",
    "is_stub",
]

FAMILIES = {
    "debian": "debian",
    "ubuntu": "debian",
    "linuxmint": "debian",
    "kalilinux": "debian",
    "fedora": "redhat",
    "rhel": "redhat",
    "centos": "redhat",
    "rocky": "redhat",
    "oraclelinux": "redhat",
    "scientificlinux": "redhat",
    "redhat-based": "redhat",
    "sles": "suse",
    "opensuse": "suse",
    "suse-based": "suse",
}

_KERNEL = re.compile(r"^vmlinuz-(.+)$")


class GuestView(Protocol):
    """The file calls layout detection needs (VMCraft has them)."""

    def exists(self, path: str) -> bool: ...

    def is_dir(self, path: str, followsymlinks: bool = False) -> bool: ...

    def is_file(self, path: str, followsymlinks: bool = False) -> bool: ...

    def ls(self, directory: str) -> list[str]: ...

    def read_file(self, path: str) -> bytes: ...


@dataclass(frozen=True)
class BootLayout:
    """What the fix-boot workflow needs to know about one guest."""

    distro: str
    family: str
    boot_mode: str
    """``bios`` or ``uefi``."""
    kernels: tuple[str, ...]
    grub_cfg: str
    """The grub.cfg the bootloader step must (re)write."""
    bootloader_cmd: tuple[str, ...]
    initramfs_cmd: tuple[str, ...]
    grub_install_tool: str
    arch: str = "x86_64"
    """The guest's architecture (from its /bin/sh), which picks grub-install's target."""
    efi_vendor_cfg: str | None = None
    """The ESP's grub.cfg, when there is one."""
    efi_vendor_cfg_is_stub: bool = False
    esp: str | None = None
    """Where the guest mounts its EFI system partition (``/boot/efi``), on UEFI."""
    notes: tuple[str, ...] = field(default=())

    @property
    def grub_target(self) -> str:
        """grub-install's ``--target`` for this guest's architecture and boot mode."""
        return grub_target(self.arch, self.boot_mode)

    def initrd_path(self, kernel: str) -> str:
        if self.family == "debian":
            return f"/boot/initrd.img-{kernel}"
        if self.family == "suse":
            return f"/boot/initrd-{kernel}"
        return f"/boot/initramfs-{kernel}.img"


def _sbin(g: GuestView, name: str) -> bool:
    return any(g.exists(f"{d}/{name}") for d in ("/usr/sbin", "/sbin", "/usr/bin", "/bin"))


def installed_kernels(g: GuestView) -> tuple[str, ...]:
    """Kernel versions in /boot that have their modules installed.

    Fedora and RHEL keep a ``vmlinuz-0-rescue-<machine-id>``: it is not an
    installed kernel (``dracut --regenerate-all`` does not rebuild its image),
    and neither are leftovers whose modules are gone.
    """
    if not g.is_dir("/boot", followsymlinks=True):
        return ()
    found = [m.group(1) for name in g.ls("/boot") if (m := _KERNEL.match(name))]
    found = [k for k in found if not k.endswith((".hmac", ".old")) and "-rescue-" not in k]
    module_dirs = [
        d for d in ("/lib/modules", "/usr/lib/modules") if g.is_dir(d, followsymlinks=True)
    ]
    if module_dirs:
        with_modules = {v for d in module_dirs for v in g.ls(d)}
        found = [k for k in found if k in with_modules]
    return tuple(sorted(found))


def _esp_dir(g: GuestView, fstab_mounts: dict[str, str]) -> str | None:
    for point in ("/boot/efi", "/efi"):
        if point in fstab_mounts or g.is_dir(f"{point}/EFI", followsymlinks=True):
            return point
    return None


def _vendor_cfg(g: GuestView, esp: str) -> str | None:
    efi = f"{esp}/EFI"
    if not g.is_dir(efi, followsymlinks=True):
        return None
    for vendor in sorted(g.ls(efi)):
        if vendor.upper() == "BOOT":
            continue
        cfg = f"{efi}/{vendor}/grub.cfg"
        if g.is_file(cfg, followsymlinks=True):
            return cfg
    return None


def is_stub(cfg_text: str) -> bool:
    """A grub.cfg that only finds and chains to the real one (Fedora 34+, RHEL 9, SUSE)."""
    body = [ln.strip() for ln in cfg_text.splitlines() if ln.strip() and not ln.startswith("#")]
    chains = any(ln.startswith("configfile") for ln in body)
    has_entries = any(ln.startswith(("menuentry", "blscfg", "linux")) for ln in body)
    return chains and not has_entries


def detect_layout(g: GuestView, distro: str, fstab_mounts: dict[str, str]) -> BootLayout:
    """The boot layout of a guest whose filesystems are mounted on the handle."""
    family = FAMILIES.get(distro)
    if family is None:
        raise UnsupportedGuestError(
            f"{distro!r} guests are not supported by fix-boot "
            "(supported: Debian/Ubuntu, Fedora/RHEL/CentOS/Rocky/Alma, SUSE/openSUSE)"
        )
    esp = _esp_dir(g, fstab_mounts)
    boot_mode = "uefi" if esp else "bios"
    kernels = installed_kernels(g)
    notes: list[str] = []
    vendor_cfg = _vendor_cfg(g, esp) if esp else None
    stub = bool(vendor_cfg) and is_stub(g.read_file(vendor_cfg or "").decode(errors="replace"))

    if family == "debian":
        grub_cfg = "/boot/grub/grub.cfg"
        bootloader = (
            ("update-grub",) if _sbin(g, "update-grub") else ("grub-mkconfig", "-o", grub_cfg)
        )
        initramfs: tuple[str, ...] = ("update-initramfs", "-u", "-k", "all")
        install_tool = "grub-install"
    else:
        grub_cfg = "/boot/grub2/grub.cfg"
        if family == "redhat" and vendor_cfg and not stub:
            # Older RHEL/CentOS on UEFI: the ESP file is the real config.
            grub_cfg = vendor_cfg
            notes.append(f"{vendor_cfg} is the real config on this guest")
        elif vendor_cfg and stub:
            notes.append(f"{vendor_cfg} chains to /boot/grub2/grub.cfg and is left alone")
        bootloader = ("grub2-mkconfig", "-o", grub_cfg)
        if family == "suse" and not _sbin(g, "dracut") and _sbin(g, "mkinitrd"):
            initramfs = ("mkinitrd",)
        else:
            initramfs = ("dracut", "-f", "--regenerate-all")
        install_tool = "grub2-install"
    return BootLayout(
        distro=distro,
        family=family,
        boot_mode=boot_mode,
        kernels=kernels,
        grub_cfg=grub_cfg,
        bootloader_cmd=bootloader,
        initramfs_cmd=initramfs,
        grub_install_tool=install_tool,
        arch=guest_arch(g, kernels),
        efi_vendor_cfg=vendor_cfg,
        efi_vendor_cfg_is_stub=stub,
        esp=esp,
        notes=tuple(notes),
    )


# Kernel version suffixes distributions use, for a guest whose binaries cannot be read.
_KERNEL_ARCH = (
    (re.compile(r"(amd64|x86_64)"), "x86_64"),
    (re.compile(r"(arm64|aarch64)"), "aarch64"),
    (re.compile(r"(686|i386|i586)"), "i386"),
    (re.compile(r"riscv64"), "riscv64"),
    (re.compile(r"ppc64"), "ppc64"),
)


def guest_arch(g: GuestView, kernels: tuple[str, ...]) -> str:
    """The guest's architecture: from its /bin/sh (as libguestfs), else its kernels' names."""
    arch = elf_arch(g)
    if arch != "unknown":
        return arch
    found = {a for k in kernels for rx, a in _KERNEL_ARCH if rx.search(k)}
    return found.pop() if len(found) == 1 else "unknown"


# GRUB's platform names, by the guest's architecture (inspect.inspector._ELF_MACHINES).
_GRUB_TARGETS: dict[tuple[str, str], str] = {
    ("x86_64", "uefi"): "x86_64-efi",
    ("x86_64", "bios"): "i386-pc",
    ("i386", "uefi"): "i386-efi",
    ("i386", "bios"): "i386-pc",
    ("aarch64", "uefi"): "arm64-efi",
    ("arm", "uefi"): "arm-efi",
    ("riscv64", "uefi"): "riscv64-efi",
    ("ppc64", "bios"): "powerpc-ieee1275",
}


def grub_target(arch: str, boot_mode: str) -> str:
    """The ``--target`` grub-install needs; unsupported pairs fail instead of guessing.

    A wrong target installs a loader the firmware cannot run: an aarch64
    guest given ``x86_64-efi`` would not boot at all.
    """
    try:
        return _GRUB_TARGETS[(arch, boot_mode)]
    except KeyError:
        raise UnsupportedGuestError(
            f"grub-install: no GRUB platform for a {arch} guest booting by {boot_mode}"
        ) from None


def boot_mountpoints(fstab_mounts: dict[str, str]) -> list[tuple[str, str]]:
    """The fstab mounts the boot tools need, parents first: /, /usr, /boot, the ESP."""
    wanted = ("/", "/usr", "/boot", "/boot/efi", "/efi")
    chosen = [(m, d) for m, d in fstab_mounts.items() if posixpath.normpath(m) in wanted]
    return sorted(chosen, key=lambda item: (item[0].count("/"), item[0]))
