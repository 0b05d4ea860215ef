"""The drivers step: virtio, and the drivers of the hardware the guest came from, in every initrd.

A guest converted from VMware or Hyper-V has an initramfs built for that
hardware (pvscsi/LSI/storvsc): on KVM's virtio disk it stops at
``ALERT! ... does not exist`` or a dracut-initqueue timeout. This step
makes the drivers *persistent in the guest's own configuration*, so the
image fix-boot rebuilds next, and every image the guest's next kernel
update builds, holds them:

* initramfs-tools: the names are appended to ``/etc/initramfs-tools/modules``
  (the lines already there are kept byte for byte), under a comment line
  saying vmcraft added them and why. mkinitramfs honours that file under
  every ``MODULES=`` setting. ``MODULES=most`` (Debian's default) already
  puts every storage and NIC driver in, so such a guest has nothing to fix.
* dracut (Fedora/RHEL, SLES 12+ and openSUSE, Debian guests that use
  Debian's dracut): ``/etc/dracut.conf.d/90-vmcraft-virtio.conf`` with
  ``add_drivers+=" ... "``. dracut installs ``add_drivers`` with host-only
  checks off, so they are in under ``hostonly=yes`` too.
* old SUSE with mkinitrd and no dracut: ``INITRD_MODULES`` in
  ``/etc/sysconfig/kernel``.

Only top-level drivers are named; the tools add what they need from
``modules.dep`` (virtio_pci: virtio, virtio_ring, virtio_pci_modern_dev and
virtio_pci_legacy_dev on 5.x+ kernels; virtio_net: net_failover,
failover). ``sd_mod`` is named too: it is no dependency of any controller
driver, and without it a virtio-scsi, pvscsi, LSI or storvsc disk never
becomes a block device. A driver built into every kernel
(``modules.builtin``, or ``=y`` in ``/boot/config-K``) needs no entry and
no check.

**MODULES=dep and hostonly.** Measured on the demo guest (bookworm,
6.1.0-50-amd64) in a chroot on this conversion host (2 CPUs): with
``MODULES=dep``, ``update-initramfs -u -k all`` exits 0 with no warning at
all, in 2-4 s, and the image (6.6 MB, 15 modules) holds what the *host's*
sysfs shows for the loop device the guest's root is on: virtio_pci,
virtio_mmio, psmouse, fan, dm-mod, the ext4 stack, and neither virtio_blk
nor vmw_pvscsi nor any other disk driver. dep also walks the host's
devices and exits 1 where it cannot resolve one (``failed to determine
device for /``). With the modules file above the same dep build (2.4 s,
7.4 MB, 45 modules) holds every listed driver and its dependencies, so the
persistent configuration alone makes the guest's *next* kernel update
right: it runs on KVM, where dep sees the guest's own virtio hardware, and
the list adds the virtio and source drivers whatever dep sees.

For *this* rebuild fix-boot takes the host out of it entirely
(:func:`generic_rebuild`): a guest whose effective setting is
``MODULES=dep`` gets ``/etc/initramfs-tools/conf.d/zz-vmcraft-rebuild``
(``MODULES=most``), written through the journal before the rebuild and
removed right after it, so the image fix-boot leaves is built for no
machine in particular and boots on any (measured: 28-31 s, 30.7 MB, 747
modules, every driver of the list among them; Debian's default setting).
dracut gets ``--no-hostonly --no-hostonly-cmdline`` on its command line
for this rebuild: host-only mode in a chroot would also pick dracut's lvm,
crypt and mdraid modules and the stored kernel command line from the
*host's* view of the guest's disks (an LVM root on linear loop devices
looks like a plain ext4 disk). The guest's own ``hostonly=yes`` applies
again on its next kernel update, with ``add_drivers`` keeping the virtio
and source drivers in. ``generic=False`` on these calls keeps the guest's
own setting for the rebuild too: ten times faster here, and the image
holds the listed drivers, but also whatever the host's view adds.

**The source drivers** (kept so the guest still boots where it came from:
migrations get rolled back) are decided from the guest alone, in this
order, stopping at the first source that names a platform:

1. its configuration: a VMware or Hyper-V driver named in the initramfs
   configuration (modules file, dracut ``add_drivers``/``force_drivers``/
   ``drivers``, sysconfig ``INITRD_MODULES``) or in ``/etc/modules`` and
   ``/etc/modules-load.d``, including the entries an earlier fix-boot added;
2. the platform's guest tools installed (open-vm-tools' ``vmtoolsd``,
   VMware Tools' ``/etc/vmware-tools``; Hyper-V's ``hv_kvp_daemon`` /
   ``hypervkvpd``);
3. the current initramfs images, listed with the guest's own tool, when the
   image was built for its hardware: an image holding both VMware's and
   Hyper-V's disk drivers is a generic one (``MODULES=most``,
   ``hostonly=no``) and says nothing about where the guest ran.

A platform recognised brings its whole set of boot drivers (as far as the
kernel has them as modules): VMware's vmw_pvscsi, mptspi, mptsas, vmxnet3,
ata_piix, ahci and nvme (its IDE, SATA and NVMe controllers use the common
drivers); Hyper-V's hv_vmbus, hv_storvsc, hv_netvsc, hid_hyperv and
hyperv_keyboard. No platform recognised means no source drivers (the guest
keeps whatever its own configuration names).

**No virtio at all.** A kernel has virtio when virtio_blk and virtio_pci are
modules under ``/lib/modules/K`` or built in. When no installed kernel has
it, nothing here can help: :meth:`DriversRepair.unfixable` says so before
anything changes, ``find`` reports it as the only finding, and ``fix``
fails without touching the guest.

The initramfs step checks its images with :meth:`DriversRepair.check_images`
(or :meth:`GuestDrivers.missing_in_image` on its own listing): every
required driver and its dependencies, unless built in, must be in each
kernel's image, by the guest's own lister (lsinitramfs, lsinitrd).
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vmcraft.errors import GuestFileError, VMCraftError
from vmcraft.fixers.step import Finding, RepairContext, Step, findings_as_checks
from vmcraft.log import get_logger
from vmcraft.report import Check, Rewrite, StepReport

if TYPE_CHECKING:
    from vmcraft.fixers.layout import BootLayout
    from vmcraft.handle import VMCraft

__all__ = [
    "DRACUT_CONF",
    "HYPERV",
    "INITRAMFS_TOOLS_MODULES",
    "PLATFORMS",
    "REBUILD_OVERRIDE",
    "SYSCONFIG_KERNEL",
    "VIRTIO_DRIVERS",
    "VMWARE",
    "DriversRepair",
    "GuestDrivers",
    "ImageListError",
    "Platform",
    "generic_rebuild",
    "initramfs_tool",
    "kernels_with_virtio",
    "list_image",
    "modules_in_listing",
    "rebuild_command",
    "rebuild_override",
]

log = get_logger(__name__)

VIRTIO_DRIVERS = ("virtio_blk", "virtio_scsi", "virtio_pci", "virtio_net")
"""KVM's disk (virtio-blk, virtio-scsi), bus and NIC drivers."""
COMPANIONS = ("sd_mod",)
"""Needed beside the SCSI controller drivers, and no modules.dep dependency of any of them."""
VIRTIO_PRESENT = ("virtio_blk", "virtio_pci")
"""A kernel with both (as modules or built in) can boot from a virtio disk."""

INITRAMFS_TOOLS_MODULES = "/etc/initramfs-tools/modules"
INITRAMFS_TOOLS_CONF = "/etc/initramfs-tools/initramfs.conf"
DRACUT_CONF = "/etc/dracut.conf.d/90-vmcraft-virtio.conf"
SYSCONFIG_KERNEL = "/etc/sysconfig/kernel"
REBUILD_OVERRIDE = "/etc/initramfs-tools/conf.d/zz-vmcraft-rebuild"
"""Sourced after the guest's own conf.d files (glob order) for the one rebuild fix-boot makes."""

INITRAMFS_TOOLS = "initramfs-tools"
DRACUT = "dracut"
MKINITRD = "mkinitrd"

LISTERS = {INITRAMFS_TOOLS: "lsinitramfs", DRACUT: "lsinitrd", MKINITRD: "lsinitrd"}
"""The guest's tool that lists an image, by the tool that builds it."""

LIST_TIMEOUT = 300.0

# Kconfig symbols of the drivers, for kernels without modules.builtin.
CONFIG_SYMBOLS = {
    "virtio": "VIRTIO",
    "virtio_ring": "VIRTIO",
    "virtio_blk": "VIRTIO_BLK",
    "virtio_scsi": "SCSI_VIRTIO",
    "virtio_pci": "VIRTIO_PCI",
    "virtio_pci_modern_dev": "VIRTIO_PCI_LIB",
    "virtio_pci_legacy_dev": "VIRTIO_PCI_LIB_LEGACY",
    "virtio_net": "VIRTIO_NET",
    "sd_mod": "BLK_DEV_SD",
    "scsi_mod": "SCSI",
    "vmw_pvscsi": "VMWARE_PVSCSI",
    "mptbase": "FUSION",
    "mptscsih": "FUSION",
    "mptspi": "FUSION_SPI",
    "mptsas": "FUSION_SAS",
    "vmxnet3": "VMXNET3",
    "vmw_vmci": "VMWARE_VMCI",
    "ata_piix": "ATA_PIIX",
    "ahci": "SATA_AHCI",
    "nvme": "BLK_DEV_NVME",
    "hv_vmbus": "HYPERV",
    "hv_storvsc": "HYPERV_STORAGE",
    "hv_netvsc": "HYPERV_NET",
    "hid_hyperv": "HID_HYPERV_MOUSE",
    "hyperv_keyboard": "HYPERV_KEYBOARD",
}


@dataclass(frozen=True)
class Platform:
    """A hypervisor a guest can come from, and how the guest shows it."""

    name: str
    drivers: tuple[str, ...]
    """Kept in every initramfs once the platform is recognised."""
    markers: tuple[str, ...]
    """Drivers whose presence (configured, or in a host-only image) means the guest ran there."""
    tools: tuple[str, ...]
    """Guest files the platform's guest tools install."""
    disk_markers: tuple[str, ...]
    """Its disk drivers: an image holding two platforms' is a generic image."""


VMWARE = Platform(
    name="VMware",
    drivers=("vmw_pvscsi", "mptspi", "mptsas", "vmxnet3", "ata_piix", "ahci", "nvme"),
    markers=("vmw_pvscsi", "mptspi", "mptsas", "vmxnet3", "vmw_vmci", "vmw_balloon"),
    tools=("/usr/bin/vmtoolsd", "/usr/sbin/vmtoolsd", "/etc/vmware-tools"),
    disk_markers=("vmw_pvscsi",),
)
HYPERV = Platform(
    name="Hyper-V",
    drivers=("hv_vmbus", "hv_storvsc", "hv_netvsc", "hid_hyperv", "hyperv_keyboard"),
    markers=("hv_storvsc", "hv_netvsc", "hv_vmbus"),
    tools=(
        "/usr/sbin/hv_kvp_daemon",
        "/usr/sbin/hypervkvpd",
        "/usr/libexec/hypervkvpd/hypervkvpd",
        "/usr/lib/hyper-v/bin/hv_kvp_daemon",
    ),
    disk_markers=("hv_storvsc",),
)
PLATFORMS = (VMWARE, HYPERV)


class ImageListError(VMCraftError):
    """An initramfs image could not be listed with the guest's own tool."""


def module_name(name: str) -> str:
    """The kernel's name for a module file or alias: ``hid-hyperv.ko.xz`` -> ``hid_hyperv``."""
    base = posixpath.basename(name.strip())
    base = re.sub(r"\.ko(\.(xz|zst|gz|bz2))?$", "", base)
    return base.replace("-", "_")


_LISTED_MODULE = re.compile(
    r"(?:^|\s)(\S*modules/\S*?)([^/\s]+)\.ko(?:\.(?:xz|zst|gz|bz2))?(?=\s|$)"
)


def modules_in_listing(listing: Iterable[str]) -> set[str]:
    """The kernel modules in an image listing (lsinitramfs paths, or lsinitrd's ``ls -l`` lines)."""
    found = set()
    for line in listing:
        for match in _LISTED_MODULE.finditer(line):
            found.add(match.group(2).replace("-", "_"))
    return found


def _program(g: VMCraft, name: str) -> str | None:
    for directory in ("/usr/sbin", "/sbin", "/usr/bin", "/bin"):
        path = f"{directory}/{name}"
        if g.exists(path):
            return path
    return None


def _words(text: str) -> list[str]:
    return [w for w in text.replace("\t", " ").split(" ") if w]


# -- what the guest's configuration names ------------------------------------------


def _modules_file_names(text: str) -> list[str]:
    """Module names in an initramfs-tools modules file (first word of each line)."""
    names = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            names.append(module_name(stripped.split()[0]))
    return names


_SHELL_ASSIGN = re.compile(r"""^\s*(?:export\s+)?(\w+)(\+?=)(.*)$""")


def _shell_value(raw: str) -> str:
    """The value of a one-line shell assignment: quotes removed, a trailing comment dropped."""
    raw = raw.strip()
    if raw[:1] in ("'", '"'):
        quote = raw[0]
        end = raw.find(quote, 1)
        return raw[1:end] if end > 0 else raw[1:]
    return raw.split("#", 1)[0].strip()


def _shell_vars(text: str, names: Iterable[str], into: dict[str, str]) -> None:
    """Apply a config file's ``VAR=...`` and ``VAR+=...`` lines for ``names`` to ``into``."""
    wanted = set(names)
    for line in text.splitlines():
        match = _SHELL_ASSIGN.match(line)
        if not match or match.group(1) not in wanted:
            continue
        var, op, value = match.group(1), match.group(2), _shell_value(match.group(3))
        into[var] = f"{into.get(var, '')} {value}" if op == "+=" else value


def _conf_dir_files(g: VMCraft, *directories: str, suffix: str = "") -> list[str]:
    """Config files in directories merged by name, later directories masking earlier ones."""
    by_name: dict[str, str] = {}
    for directory in directories:
        if not g.is_dir(directory, followsymlinks=True):
            continue
        for name in g.ls(directory):
            if suffix and not name.endswith(suffix):
                continue
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name) or ".dpkg-" in name:
                continue
            by_name[name] = f"{directory}/{name}"
    return [by_name[n] for n in sorted(by_name)]


def initramfs_tool(g: VMCraft, family: str) -> str | None:
    """Which tool builds this guest's initramfs (what its next kernel update runs).

    Debian guests use initramfs-tools unless they use Debian's dracut
    package: dracut installed with its kernel hook, or dracut without
    initramfs-tools. SUSE without dracut is the old mkinitrd.
    """
    has_dracut = _program(g, "dracut") is not None
    has_itools = (
        _program(g, "mkinitramfs") is not None or _program(g, "update-initramfs") is not None
    )
    if family == "debian":
        if has_dracut and (g.exists("/etc/kernel/postinst.d/dracut") or not has_itools):
            return DRACUT
        return INITRAMFS_TOOLS if has_itools else None
    if family == "suse" and not has_dracut and _program(g, "mkinitrd"):
        return MKINITRD
    return DRACUT if has_dracut else None


# -- the guest's kernels and modules --------------------------------------------------


@dataclass
class _Kernel:
    version: str
    moddir: str | None
    deps: dict[str, tuple[str, ...]]
    builtins: set[str]
    config_y: set[str]


@dataclass
class GuestDrivers:
    """What the guest's kernels have and what its initramfs configuration names.

    Bound to one guest (``g``) and its boot layout; the module tables of
    each kernel are read once, the configuration every time it is asked.
    """

    g: VMCraft
    layout: BootLayout
    _kernels: dict[str, _Kernel] = field(default_factory=dict)
    _listings: dict[tuple[str, int, int, int], list[str]] = field(default_factory=dict)

    @classmethod
    def of(cls, ctx: RepairContext) -> GuestDrivers:
        return cls(ctx.g, ctx.layout)

    @property
    def kernels(self) -> tuple[str, ...]:
        return self.layout.kernels

    # -- kernels ------------------------------------------------------------------

    def _kernel(self, version: str) -> _Kernel:
        if version in self._kernels:
            return self._kernels[version]
        moddir = next(
            (
                d
                for d in (f"/lib/modules/{version}", f"/usr/lib/modules/{version}")
                if self.g.is_dir(d, followsymlinks=True)
            ),
            None,
        )
        deps: dict[str, tuple[str, ...]] = {}
        builtins: set[str] = set()
        if moddir is not None:
            dep_text = self._read(f"{moddir}/modules.dep")
            if dep_text is not None:
                for line in dep_text.splitlines():
                    if ":" not in line:
                        continue
                    path, rest = line.split(":", 1)
                    deps[module_name(path)] = tuple(module_name(d) for d in rest.split())
            elif self.g.is_dir(f"{moddir}/kernel", followsymlinks=True):
                # Not depmod'ed yet: the module files themselves, without dependencies.
                for path in self.g.find(f"{moddir}/kernel"):
                    if re.search(r"\.ko(\.(xz|zst|gz|bz2))?$", path):
                        deps.setdefault(module_name(path), ())
            builtin_text = self._read(f"{moddir}/modules.builtin")
            if builtin_text is not None:
                builtins = {module_name(line) for line in builtin_text.splitlines() if line.strip()}
        config_y: set[str] = set()
        config = self._read(f"/boot/config-{version}")
        if config is not None:
            config_y = {m.group(1) for m in re.finditer(r"^CONFIG_(\w+)=y$", config, re.M)}
        kernel = _Kernel(version, moddir, deps, builtins, config_y)
        self._kernels[version] = kernel
        return kernel

    def _read(self, path: str) -> str | None:
        try:
            if not self.g.is_file(path, followsymlinks=True):
                return None
            return self.g.read_file(path).decode(errors="replace")
        except GuestFileError:
            return None

    def builtin(self, kernel: str, module: str) -> bool:
        """``module`` is built into ``kernel`` (modules.builtin, or ``=y`` in /boot/config-K)."""
        k = self._kernel(kernel)
        name = module_name(module)
        if name in k.builtins:
            return True
        symbol = CONFIG_SYMBOLS.get(name)
        return symbol is not None and symbol in k.config_y and name not in k.deps

    def is_module(self, kernel: str, module: str) -> bool:
        """``kernel`` ships ``module`` as a loadable module (a .ko file under /lib/modules/K)."""
        return module_name(module) in self._kernel(kernel).deps

    def available(self, kernel: str, module: str) -> bool:
        return self.builtin(kernel, module) or self.is_module(kernel, module)

    def has_virtio(self, kernel: str) -> bool:
        return all(self.available(kernel, m) for m in VIRTIO_PRESENT)

    def kernels_with_virtio(self) -> list[str]:
        return [k for k in self.kernels if self.has_virtio(k)]

    def dependencies(self, kernel: str, modules: Iterable[str]) -> list[str]:
        """``modules`` and all they need by modules.dep, in that order, loadable ones only."""
        k = self._kernel(kernel)
        out: list[str] = []
        queue = [module_name(m) for m in modules]
        while queue:
            name = queue.pop(0)
            if name in out or name not in k.deps:
                continue
            out.append(name)
            queue.extend(k.deps[name])
        return out

    # -- where the guest came from ----------------------------------------------------

    def tool(self) -> str | None:
        return initramfs_tool(self.g, self.layout.family)

    def configured(self) -> dict[str, str]:
        """Module name -> the file that names it, over every config that says what is loaded."""
        named: dict[str, str] = {}

        def note(names: Iterable[str], path: str) -> None:
            for n in names:
                named.setdefault(module_name(n), path)

        for path in self._itools_list_files():
            note(_modules_file_names(self._read(path) or ""), path)
        for var, value in self._dracut_vars().items():
            note(_words(value), f"dracut {var}")
        sysconfig = self._sysconfig_modules()
        if sysconfig is not None:
            note(_words(sysconfig), SYSCONFIG_KERNEL)
        load_d = _conf_dir_files(
            self.g, "/usr/lib/modules-load.d", "/etc/modules-load.d", suffix=".conf"
        )
        load_files = ["/etc/modules", *load_d]
        for path in load_files:
            text = self._read(path) or ""
            note(
                (
                    ln.split()[0]
                    for ln in text.splitlines()
                    if ln.strip() and ln.strip()[0] not in "#;"
                ),
                path,
            )
        return named

    def platforms(self) -> dict[str, str]:
        """The platforms the guest came from -> why vmcraft thinks so (see the module's rule)."""
        found: dict[str, str] = {}
        named = self.configured()
        for platform in PLATFORMS:
            hit = next((m for m in platform.markers if m in named), None)
            if hit:
                found[platform.name] = f"{hit} named in {named[hit]}"
        if found:
            return found
        for platform in PLATFORMS:
            tool = next((t for t in platform.tools if self.g.exists(t)), None)
            if tool:
                found[platform.name] = f"its guest tools are installed ({tool})"
        if found:
            return found
        for kernel in self.kernels:
            path = self.layout.initrd_path(kernel)
            if not self.g.is_file(path, followsymlinks=True):
                continue
            try:
                modules = modules_in_listing(self.listing(kernel))
            except ImageListError as exc:
                log.info("drivers.image_unlisted", kernel=kernel, error=str(exc))
                continue
            disk_platforms = [p for p in PLATFORMS if any(m in modules for m in p.disk_markers)]
            if len(disk_platforms) > 1:
                continue  # a generic image: built for any hardware, not for the guest's
            for platform in PLATFORMS:
                hit = next((m for m in platform.markers if m in modules), None)
                if hit and platform.name not in found:
                    found[platform.name] = f"{hit} is in {path}"
        return found

    def source_drivers(self, kernel: str | None = None) -> tuple[str, ...]:
        """The boot drivers of the platforms the guest came from (those ``kernel`` has, or any)."""
        recognised = self.platforms()
        kernels = [kernel] if kernel else list(self.kernels)
        out: list[str] = []
        for platform in PLATFORMS:
            if platform.name not in recognised:
                continue
            for driver in platform.drivers:
                if driver not in out and any(self.available(k, driver) for k in kernels):
                    out.append(driver)
        return tuple(out)

    def wanted(self, kernel: str) -> list[str]:
        """The top-level drivers ``kernel``'s initramfs must hold, built-in ones left out."""
        names = [*VIRTIO_DRIVERS, *COMPANIONS, *self.source_drivers(kernel)]
        return [
            n
            for n in dict.fromkeys(names)
            if self.is_module(kernel, n) and not self.builtin(kernel, n)
        ]

    def required_entries(self) -> list[str]:
        """The drivers the persistent configuration must name: wanted by at least one kernel."""
        out: list[str] = []
        for kernel in self.kernels:
            out.extend(n for n in self.wanted(kernel) if n not in out)
        return out

    # -- the persistent configuration ---------------------------------------------------

    def _itools_list_files(self) -> list[str]:
        files = [INITRAMFS_TOOLS_MODULES]
        files += _conf_dir_files(self.g, "/usr/share/initramfs-tools/modules.d")
        return files

    def itools_modules_setting(self) -> str:
        """initramfs-tools' effective ``MODULES=`` (initramfs.conf, then conf.d; default most)."""
        values: dict[str, str] = {}
        # mkinitramfs' order: initramfs.conf, /usr/share's conf.d files that /etc's do not
        # mask by name, /etc's conf.d, then the packages' conf-hooks.d.
        etc = _conf_dir_files(self.g, "/etc/initramfs-tools/conf.d")
        masked = {posixpath.basename(p) for p in etc}
        usr = _conf_dir_files(self.g, "/usr/share/initramfs-tools/conf.d")
        files = [INITRAMFS_TOOLS_CONF]
        files += [p for p in usr if posixpath.basename(p) not in masked]
        files += etc + _conf_dir_files(self.g, "/usr/share/initramfs-tools/conf-hooks.d")
        for path in files:
            if path == REBUILD_OVERRIDE:
                continue  # fix-boot's own, present only during its rebuild
            _shell_vars(self._read(path) or "", ["MODULES"], values)
        return values.get("MODULES", "most").strip() or "most"

    def _dracut_files(self) -> list[str]:
        conf_d = _conf_dir_files(
            self.g, "/usr/lib/dracut/dracut.conf.d", "/etc/dracut.conf.d", suffix=".conf"
        )
        return ["/etc/dracut.conf", *conf_d]

    def _dracut_vars(self) -> dict[str, str]:
        values: dict[str, str] = {}
        if self.tool() != DRACUT:
            return values
        for path in self._dracut_files():
            _shell_vars(self._read(path) or "", ["add_drivers", "force_drivers", "drivers"], values)
        return values

    def _sysconfig_modules(self) -> str | None:
        if self.tool() != MKINITRD:
            return None
        values: dict[str, str] = {}
        _shell_vars(self._read(SYSCONFIG_KERNEL) or "", ["INITRD_MODULES"], values)
        return values.get("INITRD_MODULES", "")

    def config_path(self) -> str | None:
        """The file this step writes for the guest's tool."""
        return {
            INITRAMFS_TOOLS: INITRAMFS_TOOLS_MODULES,
            DRACUT: DRACUT_CONF,
            MKINITRD: SYSCONFIG_KERNEL,
        }.get(self.tool() or "")

    def config_names(self) -> set[str]:
        """What the initramfs configuration already puts in every image, by name."""
        tool = self.tool()
        if tool == INITRAMFS_TOOLS:
            names: set[str] = set()
            for path in self._itools_list_files():
                names |= set(_modules_file_names(self._read(path) or ""))
            return names
        if tool == DRACUT:
            return {module_name(w) for v in self._dracut_vars().values() for w in _words(v)}
        if tool == MKINITRD:
            return {module_name(w) for w in _words(self._sysconfig_modules() or "")}
        return set()

    def config_covers_all(self) -> bool:
        """initramfs-tools' ``MODULES=most`` puts every storage and NIC driver in by itself."""
        return self.tool() == INITRAMFS_TOOLS and self.itools_modules_setting() == "most"

    def missing_entries(self) -> list[str]:
        if self.config_covers_all():
            return []
        named = self.config_names()
        return [n for n in self.required_entries() if n not in named]

    # -- the images ---------------------------------------------------------------

    def listing(self, kernel: str, *, timeout: float | None = None) -> list[str]:
        """The paths in ``kernel``'s image, by the guest's own lister (see :func:`list_image`)."""
        path = self.layout.initrd_path(kernel)
        tool = self.tool()
        lister = LISTERS.get(tool or "")
        if lister is None or _program(self.g, lister) is None:
            raise ImageListError(
                f"{path}: the guest has no tool to list it ({lister or 'no initramfs tool'})"
            )
        try:
            st = self.g.stat(path)
        except GuestFileError as exc:
            raise ImageListError(f"{path}: no such image ({exc})") from exc
        key = (path, st.get("ino", 0), st.get("size", 0), st.get("mtime", 0))
        if key in self._listings:
            return self._listings[key]
        try:
            out = self.g.command_with_mounts(
                [lister, path], quiet=True, timeout=timeout or LIST_TIMEOUT
            )
        except VMCraftError as exc:
            raise ImageListError(f"{lister} {path}: {exc}") from exc
        lines = out.splitlines()
        if not lines:
            raise ImageListError(f"{lister} {path}: listed nothing")
        self._listings[key] = lines
        return lines

    def required_in_image(self, kernel: str) -> list[str]:
        """The modules ``kernel``'s image must hold: the wanted drivers and their dependencies."""
        return [
            m for m in self.dependencies(kernel, self.wanted(kernel)) if not self.builtin(kernel, m)
        ]

    def missing_in_image(self, kernel: str, listing: Sequence[str]) -> list[str]:
        """Required drivers (virtio, source, dependencies) neither built in nor in ``listing``."""
        present = modules_in_listing(listing)
        return [m for m in self.required_in_image(kernel) if m not in present]


# -- the calls the fix-boot steps make ------------------------------------------------


def kernels_with_virtio(ctx: RepairContext) -> list[str]:
    """The installed kernels that have virtio_blk and virtio_pci (modules or built in)."""
    return GuestDrivers.of(ctx).kernels_with_virtio()


def rebuild_command(ctx: RepairContext, *, generic: bool = True) -> tuple[str, ...]:
    """The command that rebuilds every kernel's image with the guest's tool, whatever the host.

    initramfs-tools: ``update-initramfs -u -k all`` (run inside
    :func:`generic_rebuild` when the guest has MODULES=dep); dracut:
    ``--regenerate-all`` with host-only mode and the stored host command line
    off. ``generic=False`` keeps the guest's own hostonly setting instead
    (``add_drivers`` still puts the drivers in; the rest is the host's view).
    """
    tool = initramfs_tool(ctx.g, ctx.layout.family)
    if tool == INITRAMFS_TOOLS:
        return ("update-initramfs", "-u", "-k", "all")
    if tool == DRACUT:
        flags = ("--no-hostonly", "--no-hostonly-cmdline") if generic else ()
        return ("dracut", "-f", "--regenerate-all", *flags)
    if tool == MKINITRD:
        return ("mkinitrd",)
    return ctx.layout.initramfs_cmd


def rebuild_override(ctx: RepairContext, *, generic: bool = True) -> tuple[str, str] | None:
    """The file to put in place for the rebuild only, and its content; None when none is needed.

    ``generic=False``: none, the guest's MODULES=dep applies (with the modules
    file the image holds the listed drivers, plus what the host's sysfs adds).
    """
    drivers = GuestDrivers.of(ctx)
    if not generic or drivers.tool() != INITRAMFS_TOOLS:
        return None
    if drivers.itools_modules_setting() != "dep":
        return None
    return (
        REBUILD_OVERRIDE,
        "# Written by vmcraft fix-boot for one rebuild and removed after it: MODULES=dep in a\n"
        "# chroot sizes the initramfs for the conversion host, not for this guest.\n"
        "MODULES=most\n",
    )


@contextmanager
def generic_rebuild(
    ctx: RepairContext, step: Step = Step.INITRAMFS, *, generic: bool = True
) -> Iterator[tuple[str, ...]]:
    """Yield :func:`rebuild_command` with the rebuild's override in place, then remove it.

    The override goes through the run's journal (``step``'s entry), so a
    failed run or ``--undo`` removes it too; removed here whatever happens.
    """
    override = rebuild_override(ctx, generic=generic)
    if override is None:
        yield rebuild_command(ctx, generic=generic)
        return
    journal = ctx.require_journal(step)
    path, content = override
    journal.write(path, content, step.value)
    try:
        yield rebuild_command(ctx, generic=generic)
    finally:
        journal.remove(path, step.value)


def list_image(ctx: RepairContext, kernel: str) -> list[str]:
    """``kernel``'s initramfs as the guest's own lister shows it, or :class:`ImageListError`."""
    return GuestDrivers.of(ctx).listing(kernel, timeout=ctx.timeout)


# -- the step -------------------------------------------------------------------------


def _comment(platforms: dict[str, str], tool: str) -> str:
    where = " and ".join(platforms)
    what = (
        f"KVM's virtio drivers and those of the {where} hardware this guest came from"
        if platforms
        else "KVM's virtio drivers"
    )
    mode = {INITRAMFS_TOOLS: ", even with MODULES=dep", DRACUT: ", even with hostonly=yes"}
    return (
        f"# Added by vmcraft fix-boot: {what}, so every initramfs holds them{mode.get(tool, '')}."
    )


def _with_modules_lines(before: str, names: Sequence[str], comment: str) -> str:
    text = before
    if text and not text.endswith("\n"):
        text += "\n"
    return text + comment + "\n" + "".join(f"{n}\n" for n in names)


def _dracut_file(names: Sequence[str], comment: str) -> str:
    return f'{comment}\nadd_drivers+=" {" ".join(names)} "\n'


_INITRD_MODULES = re.compile(r"""^(\s*INITRD_MODULES=)(["']?)(.*?)\2(\s*(?:#.*)?)$""", re.M)


def _with_initrd_modules(before: str, names: Sequence[str], comment: str) -> str:
    """sysconfig's INITRD_MODULES with ``names`` added to its last assignment (it counts)."""
    matches = list(_INITRD_MODULES.finditer(before))
    if not matches:
        return _with_modules_lines(before, [f'INITRD_MODULES="{" ".join(names)}"'], comment)
    last = matches[-1]
    value = " ".join([*_words(last.group(3)), *names])
    line = f'{comment}\n{last.group(1)}"{value}"{last.group(4)}'
    return before[: last.start()] + line + before[last.end() :]


class DriversRepair:
    """virtio, and the drivers of the hardware the guest came from, persistent in its config."""

    step = Step.DRIVERS

    def __init__(self) -> None:
        self._guests: dict[int, GuestDrivers] = {}

    def drivers(self, ctx: RepairContext) -> GuestDrivers:
        """The guest's drivers view, kept across this step's calls (its listings are cached)."""
        key = id(ctx.g)
        cached = self._guests.get(key)
        if cached is None or cached.g is not ctx.g or cached.layout != ctx.layout:
            cached = GuestDrivers.of(ctx)
            self._guests[key] = cached
        return cached

    # -- read-only -----------------------------------------------------------------

    def kernels_with_virtio(self, ctx: RepairContext) -> list[str]:
        return self.drivers(ctx).kernels_with_virtio()

    def unfixable(self, ctx: RepairContext) -> str | None:
        """Why no kernel of this guest can boot on virtio, or None when one can."""
        kernels = ctx.layout.kernels
        if not kernels:
            return "no installed kernel found (/boot/vmlinuz-* with its /lib/modules)"
        if self.kernels_with_virtio(ctx):
            return None
        return (
            f"none of the installed kernels ({', '.join(kernels)}) has virtio drivers "
            f"({' and '.join(VIRTIO_PRESENT)} neither modules nor built in): it cannot boot on "
            "KVM's virtio disk; install a kernel with virtio in the guest first"
        )

    def source_drivers(self, ctx: RepairContext) -> tuple[str, ...]:
        return self.drivers(ctx).source_drivers()

    def builtin(self, ctx: RepairContext, kernel: str, module: str) -> bool:
        return self.drivers(ctx).builtin(kernel, module)

    def find(self, ctx: RepairContext) -> list[Finding]:
        why = self.unfixable(ctx)
        if why is not None:
            return [Finding(self.step, "no installed kernel has virtio drivers", "/boot", why)]
        drivers = self.drivers(ctx)
        tool = drivers.tool()
        missing = drivers.missing_entries()
        if not missing:
            return []
        if tool is None:
            return [
                Finding(
                    self.step,
                    "no initramfs tool (initramfs-tools, dracut, mkinitrd) in the guest",
                    detail=f"needed: {', '.join(missing)}",
                )
            ]
        label = {
            INITRAMFS_TOOLS: "initramfs-tools modules file",
            DRACUT: "dracut add_drivers (dracut.conf.d)",
            MKINITRD: "sysconfig INITRD_MODULES",
        }[tool]
        platforms = drivers.platforms()
        detail = f"kernels: {', '.join(ctx.layout.kernels)}"
        if tool == INITRAMFS_TOOLS:
            detail += f"; MODULES={drivers.itools_modules_setting()}"
        if platforms:
            detail += "; came from " + ", ".join(f"{p} ({why})" for p, why in platforms.items())
        return [
            Finding(self.step, f"{label} lacks {', '.join(missing)}", drivers.config_path(), detail)
        ]

    def plan(self, ctx: RepairContext, findings: list[Finding]) -> list[tuple[str, ...]]:
        return []  # file edits only; the initramfs step rebuilds (rebuild_command)

    # -- changing the guest --------------------------------------------------------

    def fix(self, ctx: RepairContext, findings: list[Finding], report: StepReport) -> None:
        why = self.unfixable(ctx)
        if why is not None:
            report.failure = why
            return
        drivers = self.drivers(ctx)
        tool = drivers.tool()
        missing = drivers.missing_entries()
        if not missing:
            report.skipped = "every kernel's virtio and source drivers are already configured"
            return
        if tool is None:
            report.failure = "no initramfs tool (initramfs-tools, dracut, mkinitrd) in the guest"
            return
        ctx.require_journal(self.step)  # before anything below touches the guest
        comment = _comment(drivers.platforms(), tool)
        if tool == INITRAMFS_TOOLS:
            path = INITRAMFS_TOOLS_MODULES
            before = ctx.text(path) or ""
            after = _with_modules_lines(before, missing, comment)
        elif tool == DRACUT:
            path = DRACUT_CONF
            before = ctx.text(path) or ""
            # An earlier run's file keeps its names, in order; the missing ones follow.
            ours = [module_name(w) for w in _dracut_own_names(before)]
            after = _dracut_file(list(dict.fromkeys([*ours, *missing])), comment)
            directory = posixpath.dirname(path)
            if not ctx.g.is_dir(directory, followsymlinks=True):
                ctx.g.mkdir_p(directory)
        else:
            path = SYSCONFIG_KERNEL
            before = ctx.text(path) or ""
            after = _with_initrd_modules(before, missing, comment)
        ctx.rewrite(report, self.step, path, after, [Rewrite(path, before, after)])

    def check(self, ctx: RepairContext, started: float) -> list[Check]:
        """The configuration names every driver now (the images are the initramfs step's)."""
        return findings_as_checks(self.find(ctx))

    # -- the image check the initramfs step makes ------------------------------------

    def rebuild_command(self, ctx: RepairContext, *, generic: bool = True) -> tuple[str, ...]:
        return rebuild_command(ctx, generic=generic)

    def list_image(self, ctx: RepairContext, kernel: str) -> list[str]:
        return self.drivers(ctx).listing(kernel, timeout=ctx.timeout)

    def missing_in_image(
        self, ctx: RepairContext, kernel: str, listing: Sequence[str]
    ) -> list[str]:
        return self.drivers(ctx).missing_in_image(kernel, listing)

    def check_images(self, ctx: RepairContext) -> list[Check]:
        """One check per kernel with virtio: its image holds every required driver."""
        drivers = self.drivers(ctx)
        checks = []
        for kernel in ctx.layout.kernels:
            name = f"initramfs for {kernel} holds the virtio and source drivers"
            if not drivers.has_virtio(kernel):
                continue  # the kernel step's concern: it cannot be the default
            try:
                listing = drivers.listing(kernel, timeout=ctx.timeout)
            except ImageListError as exc:
                checks.append(Check(name, False, str(exc)))
                continue
            missing = drivers.missing_in_image(kernel, listing)
            checks.append(
                Check(name, not missing, f"missing: {', '.join(missing)}" if missing else "")
            )
        return checks


def _dracut_own_names(text: str) -> list[str]:
    values: dict[str, str] = {}
    _shell_vars(text, ["add_drivers"], values)
    return _words(values.get("add_drivers", ""))
