"""The drivers step on small synthetic guest trees: no root, no mount, no guest command.

Each tree has what the step reads: os-release, the kernels in /boot with
their config, /lib/modules/K with a modules.dep taken from a real Debian
bookworm kernel (6.1.0-50-amd64; Fedora's gets ``.ko.xz``), its
modules.builtin, the guest's initramfs tool and its configuration. Image
listings, which the guest's lsinitramfs/lsinitrd would print, are answered
by a stub on the handle, so the tests say exactly what each image holds.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import cast

import pytest

from vmcraft.errors import CommandError, VMCraftError
from vmcraft.fixers.drivers import (
    DRACUT_CONF,
    INITRAMFS_TOOLS_MODULES,
    REBUILD_OVERRIDE,
    SYSCONFIG_KERNEL,
    VIRTIO_DRIVERS,
    DriversRepair,
    GuestDrivers,
    ImageListError,
    generic_rebuild,
    kernels_with_virtio,
    list_image,
    modules_in_listing,
    rebuild_command,
    rebuild_override,
)
from vmcraft.fixers.journal import GuestFilesView, Journal
from vmcraft.fixers.layout import detect_layout
from vmcraft.fixers.step import Finding, RepairContext, Step
from vmcraft.handle import VMCraft
from vmcraft.report import Rewrite, StepReport

# -- a real kernel's modules.dep (the lines the step follows) -------------------------

BOOKWORM_DEP = """\
kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko
kernel/fs/jbd2/jbd2.ko:
kernel/fs/mbcache.ko:
kernel/lib/crc16.ko:
kernel/lib/crc64.ko:
kernel/lib/crc64-rocksoft.ko: kernel/lib/crc64.ko
kernel/lib/crc-t10dif.ko: kernel/crypto/crct10dif_common.ko
kernel/crypto/crct10dif_common.ko:
kernel/block/t10-pi.ko: kernel/lib/crc64-rocksoft.ko kernel/lib/crc-t10dif.ko kernel/lib/crc64.ko \
kernel/crypto/crct10dif_common.ko
kernel/net/core/failover.ko:
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko \
kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio_ring.ko \
kernel/drivers/virtio/virtio.ko
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko \
kernel/drivers/virtio/virtio.ko
kernel/drivers/scsi/scsi_common.ko:
kernel/drivers/scsi/scsi_mod.ko: kernel/drivers/scsi/scsi_common.ko
kernel/drivers/scsi/virtio_scsi.ko: kernel/drivers/scsi/scsi_mod.ko \
kernel/drivers/scsi/scsi_common.ko \
kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko \
kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/scsi/sd_mod.ko: kernel/block/t10-pi.ko kernel/lib/crc64-rocksoft.ko \
kernel/drivers/scsi/scsi_mod.ko kernel/drivers/scsi/scsi_common.ko kernel/lib/crc-t10dif.ko \
kernel/lib/crc64.ko kernel/crypto/crct10dif_common.ko
kernel/drivers/scsi/vmw_pvscsi.ko: kernel/drivers/scsi/scsi_mod.ko \
kernel/drivers/scsi/scsi_common.ko
kernel/drivers/scsi/scsi_transport_spi.ko: kernel/drivers/scsi/scsi_mod.ko \
kernel/drivers/scsi/scsi_common.ko
kernel/drivers/scsi/scsi_transport_sas.ko: kernel/drivers/scsi/scsi_mod.ko \
kernel/drivers/scsi/scsi_common.ko
kernel/drivers/scsi/scsi_transport_fc.ko: kernel/drivers/scsi/scsi_mod.ko \
kernel/drivers/scsi/scsi_common.ko
kernel/drivers/message/fusion/mptbase.ko:
kernel/drivers/message/fusion/mptscsih.ko: kernel/drivers/message/fusion/mptbase.ko \
kernel/drivers/scsi/scsi_mod.ko kernel/drivers/scsi/scsi_common.ko
kernel/drivers/message/fusion/mptspi.ko: kernel/drivers/message/fusion/mptscsih.ko \
kernel/drivers/message/fusion/mptbase.ko kernel/drivers/scsi/scsi_transport_spi.ko \
kernel/drivers/scsi/scsi_mod.ko kernel/drivers/scsi/scsi_common.ko
kernel/drivers/message/fusion/mptsas.ko: kernel/drivers/message/fusion/mptscsih.ko \
kernel/drivers/message/fusion/mptbase.ko kernel/drivers/scsi/scsi_transport_sas.ko \
kernel/drivers/scsi/scsi_mod.ko kernel/drivers/scsi/scsi_common.ko
kernel/drivers/net/vmxnet3/vmxnet3.ko:
kernel/drivers/misc/vmw_vmci/vmw_vmci.ko:
kernel/drivers/ata/libata.ko: kernel/drivers/scsi/scsi_mod.ko kernel/drivers/scsi/scsi_common.ko
kernel/drivers/ata/libahci.ko: kernel/drivers/ata/libata.ko kernel/drivers/scsi/scsi_mod.ko \
kernel/drivers/scsi/scsi_common.ko
kernel/drivers/ata/ahci.ko: kernel/drivers/ata/libahci.ko kernel/drivers/ata/libata.ko \
kernel/drivers/scsi/scsi_mod.ko kernel/drivers/scsi/scsi_common.ko
kernel/drivers/ata/ata_piix.ko: kernel/drivers/ata/libata.ko kernel/drivers/scsi/scsi_mod.ko \
kernel/drivers/scsi/scsi_common.ko
kernel/drivers/nvme/host/nvme-core.ko: kernel/block/t10-pi.ko kernel/lib/crc64-rocksoft.ko \
kernel/lib/crc-t10dif.ko kernel/lib/crc64.ko kernel/crypto/crct10dif_common.ko
kernel/drivers/nvme/host/nvme.ko: kernel/drivers/nvme/host/nvme-core.ko kernel/block/t10-pi.ko \
kernel/lib/crc64-rocksoft.ko kernel/lib/crc-t10dif.ko kernel/lib/crc64.ko \
kernel/crypto/crct10dif_common.ko
kernel/drivers/hv/hv_vmbus.ko:
kernel/drivers/scsi/hv_storvsc.ko: kernel/drivers/scsi/scsi_transport_fc.ko \
kernel/drivers/scsi/scsi_mod.ko kernel/drivers/scsi/scsi_common.ko kernel/drivers/hv/hv_vmbus.ko
kernel/drivers/net/hyperv/hv_netvsc.ko: kernel/drivers/hv/hv_vmbus.ko
kernel/drivers/hid/hid.ko:
kernel/drivers/hid/hid-hyperv.ko: kernel/drivers/hid/hid.ko kernel/drivers/hv/hv_vmbus.ko
kernel/drivers/input/serio/hyperv-keyboard.ko: kernel/drivers/hv/hv_vmbus.ko
""".replace("\\\n", "")
"""One logical line per module, as depmod writes it (wrapped here only to fit)."""

DEBIAN_KERNELS = ("6.1.0-49-amd64", "6.1.0-50-amd64")
FEDORA_KERNEL = "6.6.8-200.fc39.x86_64"
RHEL9_KERNEL = "5.14.0-362.8.1.el9_3.x86_64"
SLES15_KERNEL = "5.14.21-150500.55.39-default"
SLES11_KERNEL = "3.0.101-63-default"

ALL_VMWARE = ["vmw_pvscsi", "mptspi", "mptsas", "vmxnet3", "ata_piix", "ahci", "nvme"]
ALL_HYPERV = ["hv_vmbus", "hv_storvsc", "hv_netvsc", "hid_hyperv", "hyperv_keyboard"]
DEBIAN_ENTRIES = [*VIRTIO_DRIVERS, "sd_mod"]

STOCK_MODULES_FILE = (
    "# List of modules that you want to include in your initramfs.\n"
    "# They will be loaded at boot time in the order below.\n"
    "#\n"
    "# Syntax:  module_name [args ...]\n"
    "#\n"
    "# You must run update-initramfs(8) to effect this change.\n"
    "#\n"
    "# Examples:\n"
    "#\n"
    "# raid1\n"
    "# sd_mod\n"
)


# -- building trees -------------------------------------------------------------------


def put(root: Path, rel: str, text: str = "") -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def usr_merged(root: Path) -> None:
    for name in ("bin", "sbin", "lib"):
        (root / "usr" / name).mkdir(parents=True, exist_ok=True)
        (root / name).symlink_to(f"usr/{name}")


def shell(root: Path) -> None:
    """/usr/bin/sh as the head of an x86_64 ELF file (what inspection reads)."""
    path = root / "usr/bin/sh"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x7fELF\x02\x01\x01" + bytes(11) + (0x3E).to_bytes(2, "little"))


def kernel(
    root: Path,
    version: str,
    initrd: str,
    *,
    dep: str = BOOKWORM_DEP,
    suffix: str = "",
    builtin: Sequence[str] = (),
    drop: Sequence[str] = (),
    config: str = "CONFIG_EXT4_FS=m\n",
    with_builtin_file: bool = True,
) -> None:
    """A kernel in /boot and its modules: ``builtin`` ones move from modules.dep to modules.builtin.

    ``drop`` removes modules altogether (a kernel built without them).
    """
    put(root, f"boot/vmlinuz-{version}", "kernel image")
    put(root, f"boot/{initrd}", "initramfs image")
    put(root, f"boot/config-{version}", config)
    gone = {*builtin, *drop}
    lines, built = [], []
    for line in dep.splitlines():
        path, rest = line.split(":", 1)
        name = path.rsplit("/", 1)[1].removesuffix(".ko").replace("-", "_")
        if name in builtin:
            built.append(path)
        if name in gone:
            (root / f"lib/modules/{version}/{path}{suffix}").unlink(missing_ok=True)
            continue
        deps = [d for d in rest.split() if d.rsplit("/", 1)[1][:-3].replace("-", "_") not in gone]
        lines.append(f"{path}{suffix}: {' '.join(d + suffix for d in deps)}".rstrip())
        put(root, f"lib/modules/{version}/{path}{suffix}")
    put(root, f"lib/modules/{version}/modules.dep", "\n".join(lines) + "\n")
    builtin_file = root / f"lib/modules/{version}/modules.builtin"
    if with_builtin_file:
        put(root, f"lib/modules/{version}/modules.builtin", "".join(f"{p}\n" for p in built))
    else:
        builtin_file.unlink(missing_ok=True)


def debian(
    base: Path, *, modules: str = "dep", tool: str = "initramfs-tools", name: str = "debian"
) -> Path:
    """Debian 12, usr-merged, two kernels, initramfs-tools (or Debian's dracut)."""
    root = base / name
    usr_merged(root)
    shell(root)
    put(root, "etc/os-release", 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\n')
    put(
        root,
        "etc/fstab",
        "UUID=2f0c5a8e-6d1b-4c3e-9f7a-1b2c3d4e5f60 / ext4 errors=remount-ro 0 1\n",
    )
    for version in DEBIAN_KERNELS:
        kernel(root, version, f"initrd.img-{version}")
    put(root, "usr/sbin/update-grub")
    if tool == "initramfs-tools":
        put(root, "usr/sbin/update-initramfs")
        put(root, "usr/sbin/mkinitramfs")
        put(root, "usr/bin/lsinitramfs")
        put(
            root,
            "etc/initramfs-tools/initramfs.conf",
            "#\n# MODULES: [ most | netboot | dep | list ]\n#\n\n"
            f"MODULES={modules}\n\nBUSYBOX=auto\n\nCOMPRESS=zstd\n",
        )
        put(root, "etc/initramfs-tools/modules", STOCK_MODULES_FILE)
        (root / "etc/initramfs-tools/conf.d").mkdir()
    else:
        put(root, "usr/bin/dracut")
        put(root, "usr/bin/lsinitrd")
        put(root, "etc/dracut.conf", "# PUT YOUR CONFIG IN separate files\n")
        (root / "etc/dracut.conf.d").mkdir(parents=True)
        put(root, "etc/kernel/postinst.d/dracut", "#!/bin/sh\n")
    return root


def fedora(base: Path, *, name: str = "fedora", release: str = "fedora") -> Path:
    """Fedora 39 (or RHEL 9): dracut; virtio, virtio_pci and the SCSI core built in, .ko.xz."""
    root = base / name
    usr_merged(root)
    shell(root)
    ids = {"fedora": "ID=fedora\nVERSION_ID=39\n", "rhel": 'ID="rhel"\nVERSION_ID="9.3"\n'}
    put(root, "usr/lib/os-release", ids[release])
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc/os-release").symlink_to("../usr/lib/os-release")
    put(root, "etc/fstab", "/dev/mapper/fedora-root / xfs defaults 0 0\n")
    version = FEDORA_KERNEL if release == "fedora" else RHEL9_KERNEL
    builtin = [
        "virtio",
        "virtio_ring",
        "virtio_pci",
        "virtio_pci_modern_dev",
        "virtio_pci_legacy_dev",
        "scsi_mod",
        "scsi_common",
        "sd_mod",
    ]
    kernel(root, version, f"initramfs-{version}.img", suffix=".xz", builtin=builtin)
    put(root, "usr/sbin/grub2-mkconfig")
    put(root, "usr/bin/dracut")
    put(root, "usr/bin/lsinitrd")
    put(root, "etc/dracut.conf", "# PUT YOUR CONFIG IN separate files\n")
    (root / "etc/dracut.conf.d").mkdir()
    put(root, "usr/lib/dracut/dracut.conf.d/01-dist.conf", 'hostonly="yes"\n')
    return root


def sles(base: Path, *, old: bool = False) -> Path:
    """SLES 15 SP5 (dracut), or SLES 11 (mkinitrd and /etc/sysconfig/kernel)."""
    root = base / ("sles11" if old else "sles15")
    shell(root)
    version_id = "11.4" if old else "15.5"
    put(root, "etc/os-release", f'NAME="SLES"\nID="sles"\nVERSION_ID="{version_id}"\n')
    put(root, "etc/fstab", "UUID=2f0c5a8e-6d1b-4c3e-9f7a-1b2c3d4e5f60 / xfs defaults 0 0\n")
    version = SLES11_KERNEL if old else SLES15_KERNEL
    kernel(root, version, f"initrd-{version}")
    put(root, "usr/sbin/grub2-mkconfig")
    if old:
        put(root, "sbin/mkinitrd")
        put(
            root,
            "etc/sysconfig/kernel",
            "## Type:        string\n"
            "## Description: This variable contains the list of modules to be added\n"
            "#\n"
            'INITRD_MODULES="processor thermal ata_piix ata_generic fan jbd ext3 edd"\n'
            "\n"
            "## Description: The list of modules to load during boot\n"
            'MODULES_LOADED_ON_BOOT=""\n',
        )
    else:
        put(root, "usr/bin/dracut")
        put(root, "usr/bin/lsinitrd")
        put(root, "etc/dracut.conf", "")
        put(root, "etc/dracut.conf.d/01-dist.conf", 'hostonly="yes"\n')
    return root


# -- running the step on a tree ---------------------------------------------------------


def context(
    g: VMCraft,
    distro: str,
    *,
    journal: bool = True,
    images: Mapping[str, Sequence[str]] | None = None,
    monkeypatch: pytest.MonkeyPatch,
) -> RepairContext:
    """A context on the tree: ``images`` maps an image path to what its lister prints."""
    listed: list[str] = []

    def command_with_mounts(cmd: Sequence[str], quiet: bool = False, **_: object) -> str:
        assert quiet, "listing an image is quiet"
        listed.append(cmd[1])
        if images is None or cmd[1] not in images:
            raise CommandError(list(cmd), 1, "", f"{cmd[0]}: {cmd[1]}: cannot be listed")
        return "".join(f"{line}\n" for line in images[cmd[1]])

    def rmdir(path: str) -> None:
        os.rmdir(os.path.join(g.root, path.lstrip("/")))

    monkeypatch.setattr(g, "command_with_mounts", command_with_mounts)
    monkeypatch.setattr(g, "rmdir", rmdir, raising=False)
    monkeypatch.setattr(g, "listed", listed, raising=False)
    layout = detect_layout(g, distro, {"/": "/dev/sda1"})
    # The handle has no rmdir (stubbed above), which the journal's protocol asks for.
    files = cast(GuestFilesView, g)
    return RepairContext(g, layout, [], {}, journal=Journal(files) if journal else None)


def listed(g: VMCraft) -> list[str]:
    out: list[str] = getattr(g, "listed")  # noqa: B009 - set by context()
    return out


@pytest.fixture
def handle(tmp_path: Path) -> Iterator[Callable[[Path], VMCraft]]:
    opened: list[VMCraft] = []

    def open_tree(tree: Path) -> VMCraft:
        g = VMCraft.from_root(tree)
        opened.append(g)
        return g

    yield open_tree
    for g in opened:
        g.close()


def itools_listing(version: str, modules: Sequence[str], ext: str = "") -> list[str]:
    """lsinitramfs's output for an image holding ``modules`` (and the usual rest)."""
    where = {
        "vmw_pvscsi": "drivers/scsi",
        "sd_mod": "drivers/scsi",
        "scsi_mod": "drivers/scsi",
        "mptspi": "drivers/message/fusion",
        "mptsas": "drivers/message/fusion",
        "vmxnet3": "drivers/net/vmxnet3",
        "hv_storvsc": "drivers/scsi",
        "hv_vmbus": "drivers/hv",
        "virtio_pci": "drivers/virtio",
        "virtio_mmio": "drivers/virtio",
        "ext4": "fs/ext4",
    }
    base = f"usr/lib/modules/{version}"
    out = [".", "usr/bin/busybox", "usr/sbin/e2fsck", base, f"{base}/modules.dep"]
    out += [f"{base}/kernel/{where.get(m, 'drivers/misc')}/{m}.ko{ext}" for m in modules]
    return out


VMWARE_IMAGE = ["vmw_pvscsi", "mptspi", "mptbase", "mptscsih", "vmxnet3", "sd_mod", "ext4"]
"""What a VMware install's MODULES=dep image holds (tests/fixtures/build-vmware-guest.sh)."""


def rewrite_text(root: Path, path: str) -> str:
    return (root / path.lstrip("/")).read_text()


def sha(root: Path, path: str) -> str | None:
    file = root / path.lstrip("/")
    return hashlib.sha256(file.read_bytes()).hexdigest() if file.exists() else None


# -- Debian, initramfs-tools ------------------------------------------------------------


def test_debian_dep_from_vmware_gets_virtio_and_keeps_vmware(
    tmp_path: Path, handle: Callable[[Path], VMCraft], monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = debian(tmp_path)
    images = {f"/boot/initrd.img-{k}": itools_listing(k, VMWARE_IMAGE) for k in DEBIAN_KERNELS}
    g = handle(tree)
    ctx = context(g, "debian", images=images, monkeypatch=monkeypatch)
    repair = DriversRepair()

    findings = repair.find(ctx)

    entries = [*DEBIAN_ENTRIES, *ALL_VMWARE]
    assert findings == [
        Finding(
            Step.DRIVERS,
            f"initramfs-tools modules file lacks {', '.join(entries)}",
            INITRAMFS_TOOLS_MODULES,
            f"kernels: {', '.join(DEBIAN_KERNELS)}; MODULES=dep; came from VMware "
            f"(vmw_pvscsi is in /boot/initrd.img-{DEBIAN_KERNELS[0]})",
        )
    ]
    assert findings[0].what.startswith("initramfs-tools modules file lacks virtio_blk")
    assert repair.plan(ctx, findings) == []

    report = StepReport()
    repair.fix(ctx, findings, report)

    expected = (
        STOCK_MODULES_FILE
        + "# Added by vmcraft fix-boot: KVM's virtio drivers and those of the VMware hardware"
        " this guest came from, so every initramfs holds them, even with MODULES=dep.\n"
        + "".join(f"{n}\n" for n in entries)
    )
    assert rewrite_text(tree, INITRAMFS_TOOLS_MODULES) == expected
    assert report.rewrites == [Rewrite(INITRAMFS_TOOLS_MODULES, STOCK_MODULES_FILE, expected)]
    assert report.success
    # Found again: nothing left, and no image listed (the config names VMware now).
    before = len(listed(g))
    assert repair.find(ctx) == []
    assert DriversRepair().find(ctx) == []
    assert len(listed(g)) == before


def test_debian_modules_most_has_nothing_to_fix(
    tmp_path: Path, handle: Callable[[Path], VMCraft], monkeypatch: pytest.MonkeyPatch
) -> None:
    g = handle(debian(tmp_path, modules="most"))
    ctx = context(g, "debian", monkeypatch=monkeypatch)

    assert DriversRepair().find(ctx) == []
    assert listed(g) == []
    assert rebuild_override(ctx) is None


def test_modules_dep_set_in_conf_d_counts(
    tmp_path: Path, handle: Callable[[Path], VMCraft], monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = debian(tmp_path, modules="most")
    put(tree, "etc/initramfs-tools/conf.d/modules", 'MODULES="dep"  # small images\n')
    ctx = context(handle(tree), "debian", monkeypatch=monkeypatch)

    drivers = GuestDrivers.of(ctx)
    assert drivers.itools_modules_setting() == "dep"
    assert [f.path for f in DriversRepair().find(ctx)] == [INITRAMFS_TOOLS_MODULES]


def test_a_generic_image_says_nothing_about_the_source(
    tmp_path: Path, handle: Callable[[Path], VMCraft], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An image with VMware's and Hyper-V's disk drivers (MODULES=most) was built for any host."""
    generic = ["vmw_pvscsi", "mptspi", "hv_storvsc", "hv_vmbus", "virtio_blk", "sd_mod"]
    images = {f"/boot/initrd.img-{k}": itools_listing(k, generic) for k in DEBIAN_KERNELS}
    tree = debian(tmp_path)
    ctx = context(handle(tree), "debian", images=images, monkeypatch=monkeypatch)
    repair = DriversRepair()

    assert repair.source_drivers(ctx) == ()
    report = StepReport()
    repair.fix(ctx, repair.find(ctx), report)

    assert rewrite_text(tree, INITRAMFS_TOOLS_MODULES) == (
        STOCK_MODULES_FILE
        + "# Added by vmcraft fix-boot: KVM's virtio drivers, so every initramfs holds them,"
        " even with MODULES=dep.\n" + "".join(f"{n}\n" for n in DEBIAN_ENTRIES)
    )


def test_images_that_cannot_be_listed_are_no_evidence(
    tmp_path: Path, handle: Callable[[Path], VMCraft], monkeypatch: pytest.MonkeyPatch
) -> None:
    g = handle(debian(tmp_path))
    ctx = context(g, "debian", images={}, monkeypatch=monkeypatch)

    assert DriversRepair().source_drivers(ctx) == ()
    assert listed(g) == [f"/boot/initrd.img-{k}" for k in DEBIAN_KERNELS]


def test_vmware_tools_installed_name_the_source_without_listing(
    tmp_path: Path, handle: Callable[[Path], VMCraft], monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = debian(tmp_path)
    put(tree, "usr/bin/vmtoolsd")
    g = handle(tree)
    ctx = context(g, "debian", monkeypatch=monkeypatch)

    assert DriversRepair().source_drivers(ctx) == tuple(ALL_VMWARE)
    assert GuestDrivers.of(ctx).platforms() == {
        "VMware": "its guest tools are installed (/usr/bin/vmtoolsd)"
    }
    assert listed(g) == []


def test_hyperv_guest_keeps_hyperv_drivers(
    tmp_path: Path, handle: Callable[[Path], VMCraft], monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = debian(tmp_path)
    put(tree, "usr/sbin/hv_kvp_daemon")
    ctx = context(handle(tree), "debian", monkeypatch=monkeypatch)
    repair = DriversRepair()
    repair.fix(ctx, repair.find(ctx), StepReport())

    added = rewrite_text(tree, INITRAMFS_TOOLS_MODULES).removeprefix(STOCK_MODULES_FILE)
    assert added.splitlines()[1:] == [*DEBIAN_ENTRIES, *ALL_HYPERV]
    assert "Hyper-V hardware" in added.splitlines()[0]


def test_a_source_driver_named_in_the_config_is_evidence_and_kept(
    tmp_path: Path, handle: Callable[[Path], VMCraft], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The user's own lines stay byte for byte (even without a final newline)."""
    tree = debian(tmp_path)
    own = STOCK_MODULES_FILE + "vmw_pvscsi\nvirtio_blk  # already here"
    put(tree, "etc/initramfs-tools/modules", own)
    ctx = context(handle(tree), "debian", monkeypatch=monkeypatch)
    repair = DriversRepair()

    findings = repair.find(ctx)
    assert findings[0].detail.endswith(
        f"came from VMware (vmw_pvscsi named in {INITRAMFS_TOOLS_MODULES})"
    )
    repair.fix(ctx, findings, StepReport())

    text = rewrite_text(tree, INITRAMFS_TOOLS_MODULES)
    assert text.startswith(own + "\n# Added by vmcraft")
    added = text.removeprefix(own + "\n").splitlines()[1:]
    assert added == ["virtio_scsi", "virtio_pci", "virtio_net", "sd_mod"] + [
        m for m in ALL_VMWARE if m != "vmw_pvscsi"
    ]


def test_rollback_restores_the_modules_file_byte_for_byte(
    tmp_path: Path, handle: Callable[[Path], VMCraft], monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = debian(tmp_path)
    put(tree, "usr/bin/vmtoolsd")
    original = (tree / "etc/initramfs-tools/modules").read_bytes()
    ctx = context(handle(tree), "debian", monkeypatch=monkeypatch)
    repair = DriversRepair()
    repair.fix(ctx, repair.find(ctx), StepReport())
    assert ctx.journal is not None
    assert (tree / "etc/initramfs-tools/modules").read_bytes() != original

    restored = ctx.journal.rollback()

    assert [(r.path, r.action) for r in restored] == [(INITRAMFS_TOOLS_MODULES, "restored")]
    assert (tree / "etc/initramfs-tools/modules").read_bytes() == original
    assert not (tree / "var").exists()


def test_a_read_only_context_cannot_fix(
    tmp_path: Path, handle: Callable[[Path], VMCraft], monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = debian(tmp_path)
    ctx = context(handle(tree), "debian", journal=False, monkeypatch=monkeypatch)
    repair = DriversRepair()

    with pytest.raises(VMCraftError, match="drivers: a read-only look cannot change the guest"):
        repair.fix(ctx, repair.find(ctx), StepReport())
    assert rewrite_text(tree, INITRAMFS_TOOLS_MODULES) == STOCK_MODULES_FILE
    with pytest.raises(VMCraftError, match="initramfs: a read-only look"), generic_rebuild(ctx):
        pass
    assert not (tree / REBUILD_OVERRIDE.lstrip("/")).exists()


def test_a_read_only_context_cannot_fix_dracut_either(
    tmp_path: Path, handle: Callable[[Path], VMCraft], monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = fedora(tmp_path)
    (tree / "etc/dracut.conf.d").rmdir()
    ctx = context(handle(tree), "fedora", journal=False, monkeypatch=monkeypatch)
    repair = DriversRepair()

    with pytest.raises(VMCraftError, match="read-only"):
        repair.fix(ctx, repair.find(ctx), StepReport())
    assert not (tree / "etc/dracut.conf.d").exists()

    writable = context(ctx.g, "fedora", monkeypatch=monkeypatch)
    repair.fix(writable, repair.find(writable), StepReport())
    assert (tree / DRACUT_CONF.lstrip("/")).is_file()


# -- the rebuild ----------------------------------------------------------------------


def test_generic_rebuild_puts_modules_most_in_place_for_the_rebuild_only(
    tmp_path: Path, handle: Callable[[Path], VMCraft], monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = debian(tmp_path)
    ctx = context(handle(tree), "debian", monkeypatch=monkeypatch)
    assert ctx.journal is not None

    with generic_rebuild(ctx) as command:
        assert command == ("update-initramfs", "-u", "-k", "all")
        text = rewrite_text(tree, REBUILD_OVERRIDE)
        assert text.endswith("\nMODULES=most\n")
        # The guest's own setting is still what the step reads.
        assert GuestDrivers.of(ctx).itools_modules_setting() == "dep"

    assert not (tree / REBUILD_OVERRIDE.lstrip("/")).exists()
    assert ctx.journal.changed() == []
    assert [e.path for e in ctx.journal.entries] == [REBUILD_OVERRIDE]


def test_generic_rebuild_removes_the_override_when_the_rebuild_fails(
    tmp_path: Path, handle: Callable[[Path], VMCraft], monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = debian(tmp_path)
    ctx = context(handle(tree), "debian", monkeypatch=monkeypatch)

    with pytest.raises(OSError, match="tool failed"), generic_rebuild(ctx):
        raise OSError("tool failed")

    assert not (tree / REBUILD_OVERRIDE.lstrip("/")).exists()


DRACUT_REBUILD = ("dracut", "-f", "--regenerate-all", "--no-hostonly", "--no-hostonly-cmdline")
REBUILDS: dict[str, tuple[Callable[[Path], Path], str, tuple[str, ...]]] = {
    "debian": (debian, "debian", ("update-initramfs", "-u", "-k", "all")),
    "debian-dracut": (lambda base: debian(base, tool="dracut"), "debian", DRACUT_REBUILD),
    "fedora": (fedora, "fedora", DRACUT_REBUILD),
    "sles15": (sles, "sles", DRACUT_REBUILD),
    "sles11": (lambda base: sles(base, old=True), "sles", ("mkinitrd",)),
}


@pytest.mark.parametrize("guest", sorted(REBUILDS))
def test_rebuild_command(
    tmp_path: Path,
    handle: Callable[[Path], VMCraft],
    monkeypatch: pytest.MonkeyPatch,
    guest: str,
) -> None:
    build, distro, expected = REBUILDS[guest]
    ctx = context(handle(build(tmp_path)), distro, monkeypatch=monkeypatch)
    assert rebuild_command(ctx) == expected
    assert DriversRepair().rebuild_command(ctx) == expected
    if expected[0] != "update-initramfs":
        assert rebuild_override(ctx) is None


# -- dracut: Fedora, RHEL, SLES, Debian's dracut --------------------------------------


def lsinitrd_listing(version: str, modules: Sequence[str]) -> list[str]:
    """lsinitrd's output: a header, then ``ls -l`` lines."""
    head = [
        f"Image: /boot/initramfs-{version}.img: 32M",
        "=" * 72,
        "Version: dracut-059-15.fc39",
        "",
        "dracut modules:",
        "kernel-modules",
        "lvm",
        "=" * 72,
        "drwxr-xr-x  12 root     root            0 Jan 10 12:00 .",
    ]
    return head + [
        "-rw-r--r--   1 root     root        20581 Jan 10 12:00 "
        f"usr/lib/modules/{version}/kernel/drivers/scsi/{m}.ko.xz"
        for m in modules
    ]


def test_fedora_from_vmware_gets_a_dracut_conf_file(
    tmp_path: Path, handle: Callable[[Path], VMCraft], monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = fedora(tmp_path)
    image = f"/boot/initramfs-{FEDORA_KERNEL}.img"
    images = {image: lsinitrd_listing(FEDORA_KERNEL, ["vmw_pvscsi", "vmxnet3", "xfs"])}
    ctx = context(handle(tree), "fedora", images=images, monkeypatch=monkeypatch)
    repair = DriversRepair()

    findings = repair.find(ctx)

    # virtio, virtio_pci and sd_mod are built into Fedora's kernel: no entry for them.
    entries = ["virtio_blk", "virtio_scsi", "virtio_net", *ALL_VMWARE]
    assert [(f.what, f.path) for f in findings] == [
        (f"dracut add_drivers (dracut.conf.d) lacks {', '.join(entries)}", DRACUT_CONF)
    ]
    report = StepReport()
    repair.fix(ctx, findings, report)

    expected = (
        "# Added by vmcraft fix-boot: KVM's virtio drivers and those of the VMware hardware"
        " this guest came from, so every initramfs holds them, even with hostonly=yes.\n"
        f'add_drivers+=" {" ".join(entries)} "\n'
    )
    assert rewrite_text(tree, DRACUT_CONF) == expected
    assert report.rewrites == [Rewrite(DRACUT_CONF, "", expected)]
    assert repair.find(ctx) == []

    assert ctx.journal is not None
    assert [(r.path, r.action) for r in ctx.journal.rollback()] == [(DRACUT_CONF, "removed")]
    assert not (tree / DRACUT_CONF.lstrip("/")).exists()


def test_rhel_already_configured_finds_nothing(
    tmp_path: Path, handle: Callable[[Path], VMCraft], monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = fedora(tmp_path, name="rhel9", release="rhel")
    put(
        tree,
        "etc/dracut.conf.d/virtio.conf",
        'add_drivers+=" virtio_blk virtio_net "\nadd_drivers+=" virtio_scsi "\n',
    )
    ctx = context(handle(tree), "rhel", images={}, monkeypatch=monkeypatch)

    assert DriversRepair().find(ctx) == []


def test_a_later_plain_assignment_resets_add_drivers(
    tmp_path: Path, handle: Callable[[Path], VMCraft], monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = fedora(tmp_path, name="rhel9", release="rhel")
    put(
        tree,
        "etc/dracut.conf.d/10-virtio.conf",
        'add_drivers+=" virtio_blk virtio_net virtio_scsi "\n',
    )
    put(tree, "etc/dracut.conf.d/20-site.conf", "add_drivers='nvme'\n")
    ctx = context(handle(tree), "rhel", images={}, monkeypatch=monkeypatch)

    (finding,) = DriversRepair().find(ctx)
    assert (
        finding.what
        == "dracut add_drivers (dracut.conf.d) lacks virtio_blk, virtio_scsi, virtio_net"
    )


def test_sles15_uses_the_dracut_file(
    tmp_path: Path, handle: Callable[[Path], VMCraft], monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = sles(tmp_path)
    put(tree, "usr/sbin/hypervkvpd")
    ctx = context(handle(tree), "sles", monkeypatch=monkeypatch)
    repair = DriversRepair()
    repair.fix(ctx, repair.find(ctx), StepReport())

    assert rewrite_text(tree, DRACUT_CONF) == (
        "# Added by vmcraft fix-boot: KVM's virtio drivers and those of the Hyper-V hardware"
        " this guest came from, so every initramfs holds them, even with hostonly=yes.\n"
        f'add_drivers+=" {" ".join([*DEBIAN_ENTRIES, *ALL_HYPERV])} "\n'
    )
    assert repair.find(ctx) == []


def test_old_suse_with_mkinitrd_edits_initrd_modules(
    tmp_path: Path, handle: Callable[[Path], VMCraft], monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = sles(tmp_path, old=True)
    put(tree, "etc/vmware-tools/locations")
    before = rewrite_text(tree, SYSCONFIG_KERNEL)
    ctx = context(handle(tree), "sles", monkeypatch=monkeypatch)
    repair = DriversRepair()

    findings = repair.find(ctx)
    # ata_piix is already in INITRD_MODULES.
    entries = [*DEBIAN_ENTRIES, *(m for m in ALL_VMWARE if m != "ata_piix")]
    assert [(f.what, f.path) for f in findings] == [
        (f"sysconfig INITRD_MODULES lacks {', '.join(entries)}", SYSCONFIG_KERNEL)
    ]
    repair.fix(ctx, findings, StepReport())

    assert rewrite_text(tree, SYSCONFIG_KERNEL) == before.replace(
        'INITRD_MODULES="processor thermal ata_piix ata_generic fan jbd ext3 edd"\n',
        "# Added by vmcraft fix-boot: KVM's virtio drivers and those of the VMware hardware"
        " this guest came from, so every initramfs holds them.\n"
        'INITRD_MODULES="processor thermal ata_piix ata_generic fan jbd ext3 edd '
        + " ".join(entries)
        + '"\n',
    )
    assert repair.find(ctx) == []


def test_debian_with_dracut_uses_dracut_and_lsinitrd(
    tmp_path: Path, handle: Callable[[Path], VMCraft], monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = debian(tmp_path, tool="dracut")
    images = {
        f"/boot/initrd.img-{k}": lsinitrd_listing(k, ["vmw_pvscsi", "mptsas"])
        for k in DEBIAN_KERNELS
    }
    g = handle(tree)
    ctx = context(g, "debian", images=images, monkeypatch=monkeypatch)
    repair = DriversRepair()

    findings = repair.find(ctx)
    assert [f.path for f in findings] == [DRACUT_CONF]
    repair.fix(ctx, findings, StepReport())

    names = [*DEBIAN_ENTRIES, *ALL_VMWARE]
    assert rewrite_text(tree, DRACUT_CONF).endswith(f'\nadd_drivers+=" {" ".join(names)} "\n')
    assert not (tree / "etc/initramfs-tools").exists()
    assert list_image(ctx, DEBIAN_KERNELS[1]) == images[f"/boot/initrd.img-{DEBIAN_KERNELS[1]}"]
    assert repair.find(ctx) == []


def test_an_earlier_runs_dracut_file_keeps_its_names(
    tmp_path: Path, handle: Callable[[Path], VMCraft], monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = fedora(tmp_path)
    put(tree, DRACUT_CONF.lstrip("/"), '# old\nadd_drivers+=" virtio_blk megaraid_sas "\n')
    put(tree, "usr/bin/vmtoolsd")
    ctx = context(handle(tree), "fedora", monkeypatch=monkeypatch)
    repair = DriversRepair()
    repair.fix(ctx, repair.find(ctx), StepReport())

    names = ["virtio_blk", "megaraid_sas", "virtio_scsi", "virtio_net", *ALL_VMWARE]
    assert rewrite_text(tree, DRACUT_CONF).splitlines()[1] == f'add_drivers+=" {" ".join(names)} "'


# -- built-in drivers, kernels without virtio ----------------------------------------


def test_a_kernel_with_virtio_built_in_needs_no_entry_and_no_check(
    tmp_path: Path, handle: Callable[[Path], VMCraft], monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = debian(tmp_path)
    built = [
        *VIRTIO_DRIVERS,
        "virtio",
        "virtio_ring",
        "virtio_pci_modern_dev",
        "virtio_pci_legacy_dev",
        "sd_mod",
        "scsi_mod",
        "scsi_common",
    ]
    for version in DEBIAN_KERNELS:
        kernel(tree, version, f"initrd.img-{version}", builtin=built)
    ctx = context(handle(tree), "debian", images={}, monkeypatch=monkeypatch)
    drivers = GuestDrivers.of(ctx)

    assert all(drivers.builtin(DEBIAN_KERNELS[0], m) for m in built)
    assert not drivers.builtin(DEBIAN_KERNELS[0], "vmw_pvscsi")
    assert DriversRepair().find(ctx) == []
    assert kernels_with_virtio(ctx) == list(DEBIAN_KERNELS)
    assert drivers.missing_in_image(DEBIAN_KERNELS[0], []) == []


def test_builtin_from_the_kernel_config_without_modules_builtin(
    tmp_path: Path, handle: Callable[[Path], VMCraft], monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = debian(tmp_path)
    version = DEBIAN_KERNELS[0]
    kernel(
        tree,
        version,
        f"initrd.img-{version}",
        drop=["virtio_blk", "virtio_pci"],
        config="CONFIG_VIRTIO_BLK=y\nCONFIG_VIRTIO_PCI=y\n# CONFIG_SCSI_VIRTIO is not set\n",
        with_builtin_file=False,
    )
    ctx = context(handle(tree), "debian", monkeypatch=monkeypatch)
    drivers = GuestDrivers.of(ctx)

    assert drivers.builtin(version, "virtio_blk")
    assert drivers.builtin(version, "virtio-pci")
    assert not drivers.builtin(version, "virtio_scsi")
    assert drivers.has_virtio(version)
    assert "virtio_blk" not in drivers.wanted(version)
    assert "virtio_scsi" in drivers.wanted(version)


def test_no_kernel_with_virtio_is_unfixable_and_nothing_changes(
    tmp_path: Path, handle: Callable[[Path], VMCraft], monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = debian(tmp_path)
    for version in DEBIAN_KERNELS:
        kernel(tree, version, f"initrd.img-{version}", drop=["virtio_blk", "virtio_pci"])
    ctx = context(handle(tree), "debian", monkeypatch=monkeypatch)
    repair = DriversRepair()

    why = repair.unfixable(ctx)
    assert why == (
        f"none of the installed kernels ({', '.join(DEBIAN_KERNELS)}) has virtio drivers "
        "(virtio_blk and virtio_pci neither modules nor built in): it cannot boot on KVM's "
        "virtio disk; install a kernel with virtio in the guest first"
    )
    assert kernels_with_virtio(ctx) == []
    assert repair.find(ctx) == [
        Finding(Step.DRIVERS, "no installed kernel has virtio drivers", "/boot", why)
    ]
    report = StepReport()
    repair.fix(ctx, repair.find(ctx), report)
    assert report.failure == why
    assert not report.success
    assert rewrite_text(tree, INITRAMFS_TOOLS_MODULES) == STOCK_MODULES_FILE
    assert ctx.journal is not None
    assert ctx.journal.entries == []


def test_one_kernel_without_virtio_is_the_kernel_steps_concern(
    tmp_path: Path, handle: Callable[[Path], VMCraft], monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = debian(tmp_path)
    old = DEBIAN_KERNELS[0]
    kernel(tree, old, f"initrd.img-{old}", drop=["virtio_blk"])
    ctx = context(handle(tree), "debian", images={}, monkeypatch=monkeypatch)
    repair = DriversRepair()

    assert repair.unfixable(ctx) is None
    assert kernels_with_virtio(ctx) == [DEBIAN_KERNELS[1]]
    assert [c.name for c in repair.check_images(ctx)] == [
        f"initramfs for {DEBIAN_KERNELS[1]} holds the virtio and source drivers"
    ]


def test_no_installed_kernel_is_unfixable(
    tmp_path: Path, handle: Callable[[Path], VMCraft], monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = debian(tmp_path)
    for version in DEBIAN_KERNELS:
        (tree / f"boot/vmlinuz-{version}").unlink()
    ctx = context(handle(tree), "debian", monkeypatch=monkeypatch)

    assert DriversRepair().unfixable(ctx) == (
        "no installed kernel found (/boot/vmlinuz-* with its /lib/modules)"
    )


# -- the image check ------------------------------------------------------------------


def test_missing_in_image_follows_modules_dep(
    tmp_path: Path, handle: Callable[[Path], VMCraft], monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = debian(tmp_path)
    put(tree, "usr/bin/vmtoolsd")
    ctx = context(handle(tree), "debian", monkeypatch=monkeypatch)
    drivers = GuestDrivers.of(ctx)
    version = DEBIAN_KERNELS[1]

    # The image fix-boot found: the conversion host's virtio_pci under MODULES=dep.
    host_sized = itools_listing(version, ["virtio_pci", "virtio_pci_modern_dev", "virtio_mmio"])
    missing = drivers.missing_in_image(version, host_sized)
    assert missing[:5] == ["virtio_blk", "virtio_scsi", "virtio_net", "sd_mod", "vmw_pvscsi"]
    assert "virtio_pci_legacy_dev" in missing
    assert "virtio_ring" in missing
    assert "virtio_pci" not in missing

    complete = [
        f"usr/lib/modules/{version}/kernel/x/{m}.ko" + (".zst" if i % 2 else "")
        for i, m in enumerate(drivers.required_in_image(version))
    ]
    assert drivers.missing_in_image(version, complete) == []
    assert DriversRepair().missing_in_image(ctx, version, complete[1:]) == [
        drivers.required_in_image(version)[0]
    ]


def test_modules_in_listing_reads_both_listers() -> None:
    lines = [
        "usr/lib/modules/6.1.0-50-amd64/kernel/drivers/block/virtio_blk.ko",
        "usr/lib/modules/6.1.0-50-amd64/kernel/drivers/hid/hid-hyperv.ko.xz",
        "-rw-r--r--   1 root root 20581 Jan 10 12:00 "
        "usr/lib/modules/6.6.8/kernel/drivers/scsi/virtio_scsi.ko.zst",
        "usr/lib/modules/6.1.0-50-amd64/modules.dep",
        "usr/bin/kmod",
        "etc/modprobe.d/not_a_module.ko.conf",
    ]
    assert modules_in_listing(lines) == {"virtio_blk", "hid_hyperv", "virtio_scsi"}


def test_check_images_lists_each_image_with_the_guests_tool(
    tmp_path: Path, handle: Callable[[Path], VMCraft], monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = debian(tmp_path)
    put(tree, "usr/bin/vmtoolsd")
    new, old = DEBIAN_KERNELS[1], DEBIAN_KERNELS[0]
    g = handle(tree)
    drivers_of = GuestDrivers.of(context(g, "debian", monkeypatch=monkeypatch))
    complete = [f"usr/lib/modules/{new}/kernel/{m}.ko" for m in drivers_of.required_in_image(new)]
    images = {f"/boot/initrd.img-{new}": complete}
    ctx = context(g, "debian", images=images, monkeypatch=monkeypatch)

    checks = DriversRepair().check_images(ctx)

    assert [(c.name, c.ok) for c in checks] == [
        (f"initramfs for {old} holds the virtio and source drivers", False),
        (f"initramfs for {new} holds the virtio and source drivers", True),
    ]
    assert checks[0].detail.startswith(f"lsinitramfs /boot/initrd.img-{old}: ")
    assert listed(g) == [f"/boot/initrd.img-{old}", f"/boot/initrd.img-{new}"]


def test_list_image_errors(
    tmp_path: Path, handle: Callable[[Path], VMCraft], monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = debian(tmp_path)
    version = DEBIAN_KERNELS[0]
    ctx = context(handle(tree), "debian", images={}, monkeypatch=monkeypatch)

    with pytest.raises(ImageListError, match="cannot be listed"):
        list_image(ctx, version)
    (tree / f"boot/initrd.img-{version}").unlink()
    with pytest.raises(ImageListError, match="no such image"):
        list_image(ctx, version)
    (tree / "usr/bin/lsinitramfs").unlink()
    with pytest.raises(ImageListError, match=r"no tool to list it \(lsinitramfs\)"):
        list_image(ctx, DEBIAN_KERNELS[1])


def test_the_listing_is_cached_until_the_image_changes(
    tmp_path: Path, handle: Callable[[Path], VMCraft], monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = debian(tmp_path)
    version = DEBIAN_KERNELS[0]
    image = f"/boot/initrd.img-{version}"
    g = handle(tree)
    ctx = context(g, "debian", images={image: ["a"]}, monkeypatch=monkeypatch)
    repair = DriversRepair()

    repair.list_image(ctx, version)
    repair.list_image(ctx, version)
    assert listed(g) == [image]
    (tree / image.lstrip("/")).write_text("a rebuilt image, bigger than before")
    repair.list_image(ctx, version)
    assert listed(g) == [image, image]


def test_generic_false_keeps_the_guests_own_setting(
    tmp_path: Path, handle: Callable[[Path], VMCraft], monkeypatch: pytest.MonkeyPatch
) -> None:
    debian_ctx = context(handle(debian(tmp_path)), "debian", monkeypatch=monkeypatch)
    fedora_ctx = context(handle(fedora(tmp_path)), "fedora", monkeypatch=monkeypatch)

    assert rebuild_override(debian_ctx, generic=False) is None
    with generic_rebuild(debian_ctx, generic=False) as command:
        assert command == ("update-initramfs", "-u", "-k", "all")
        assert not (tmp_path / "debian" / REBUILD_OVERRIDE.lstrip("/")).exists()
    assert debian_ctx.journal is not None
    assert debian_ctx.journal.entries == []
    assert rebuild_command(fedora_ctx, generic=False) == ("dracut", "-f", "--regenerate-all")
