"""The UEFI step on synthetic ESP trees: the fallback loader is a copy of the guest's own.

Each tree is a directory in ``tmp_path`` opened with ``VMCraft.from_root``
(no root, no mount); the boot proof is tests/e2e/test_vmware_repair.py's
UEFI guest, booted with fresh OVMF variables.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.trees import put, tree_hashes
from vmcraft.fixers.fixboot import REPAIRS
from vmcraft.fixers.journal import Journal, undo
from vmcraft.fixers.layout import BootLayout
from vmcraft.fixers.step import RepairContext, Step
from vmcraft.fixers.uefi import UefiFallbackRepair, fallback_copies
from vmcraft.handle import VMCraft
from vmcraft.report import StepReport

DEBIAN_UEFI = BootLayout(
    distro="debian",
    family="debian",
    boot_mode="uefi",
    kernels=("6.1.0-13-amd64",),
    grub_cfg="/boot/grub/grub.cfg",
    bootloader_cmd=("update-grub",),
    initramfs_cmd=("update-initramfs", "-u", "-k", "all"),
    grub_install_tool="grub-install",
    esp="/boot/efi",
)
RHEL9_UEFI = dataclasses.replace(
    DEBIAN_UEFI,
    distro="rhel",
    family="redhat",
    efi_vendor_cfg="/boot/efi/EFI/redhat/grub.cfg",
    efi_vendor_cfg_is_stub=True,
)
STUB = (
    "search --no-floppy --fs-uuid --set=dev 1234\n"
    "set prefix=($dev)/grub2\nconfigfile $prefix/grub.cfg\n"
)


@pytest.fixture
def g(tmp_path: Path) -> Iterator[VMCraft]:
    with VMCraft.from_root(tmp_path) as handle:
        yield handle


def ctx(g: VMCraft, layout: BootLayout = DEBIAN_UEFI, *, writable: bool = True) -> RepairContext:
    return RepairContext(
        g=g, layout=layout, fstab=[], devices={}, journal=Journal(g) if writable else None
    )


def fix(c: RepairContext) -> tuple[UefiFallbackRepair, StepReport]:
    repair = UefiFallbackRepair()
    report = StepReport()
    repair.fix(c, repair.find(c), report)
    return repair, report


def test_grub_only_install_gets_grub_as_the_fallback(g: VMCraft, tmp_path: Path) -> None:
    put(tmp_path, "boot/efi/EFI/debian/grubx64.efi", b"GRUB core image")
    found = UefiFallbackRepair().find(ctx(g, writable=False))
    assert [(f.path, f.fixable) for f in found] == [("/boot/efi/EFI/BOOT/BOOTX64.EFI", True)]
    c = ctx(g)
    repair, report = fix(c)
    assert (tmp_path / "boot/efi/EFI/BOOT/BOOTX64.EFI").read_bytes() == b"GRUB core image"
    assert [r.path for r in report.rewrites] == ["/boot/efi/EFI/BOOT/BOOTX64.EFI"]
    assert all(check.ok for check in repair.check(c, 0.0))
    assert UefiFallbackRepair().find(ctx(g, writable=False)) == []


def test_shim_becomes_the_fallback_with_grub_and_mokmanager_beside_it(
    g: VMCraft, tmp_path: Path
) -> None:
    for name in ("shimx64.efi", "grubx64.efi", "mmx64.efi"):
        put(tmp_path, f"boot/efi/EFI/redhat/{name}", name.encode())
    put(tmp_path, "boot/efi/EFI/redhat/grub.cfg", STUB.encode())
    before = (tmp_path / "boot/efi/EFI/redhat/grub.cfg").read_bytes()
    fix(ctx(g, RHEL9_UEFI))
    boot = tmp_path / "boot/efi/EFI/BOOT"
    assert (boot / "BOOTX64.EFI").read_bytes() == b"shimx64.efi"
    assert (boot / "grubx64.efi").read_bytes() == b"grubx64.efi"
    assert (boot / "mmx64.efi").read_bytes() == b"mmx64.efi"
    assert (boot / "grub.cfg").read_bytes() == before
    # The vendor stub is left alone.
    assert (tmp_path / "boot/efi/EFI/redhat/grub.cfg").read_bytes() == before


def test_an_existing_fallback_in_any_case_is_left_alone(g: VMCraft, tmp_path: Path) -> None:
    put(tmp_path, "boot/efi/EFI/debian/grubx64.efi", b"new grub")
    put(tmp_path, "boot/efi/efi/boot/bootx64.efi", b"someone's loader")
    layout = dataclasses.replace(DEBIAN_UEFI)
    # FAT ignores case: EFI/debian and efi/boot are the same tree to the firmware.
    os.rename(tmp_path / "boot/efi/EFI/debian", tmp_path / "boot/efi/efi/debian")
    (tmp_path / "boot/efi/EFI").rmdir()
    assert UefiFallbackRepair().find(ctx(g, layout, writable=False)) == []


def test_the_vendor_with_the_grub_config_wins(g: VMCraft, tmp_path: Path) -> None:
    put(tmp_path, "boot/efi/EFI/altos/grubx64.efi", b"old vendor")
    put(tmp_path, "boot/efi/EFI/redhat/grubx64.efi", b"the one in use")
    put(tmp_path, "boot/efi/EFI/redhat/grub.cfg", STUB.encode())
    wanted = fallback_copies(ctx(g, RHEL9_UEFI, writable=False))
    assert wanted is not None
    assert wanted[1][0].source == "/boot/efi/EFI/redhat/grubx64.efi"


def test_aarch64_gets_bootaa64(g: VMCraft, tmp_path: Path) -> None:
    put(tmp_path, "boot/efi/EFI/debian/grubaa64.efi", b"arm grub")
    layout = dataclasses.replace(DEBIAN_UEFI, arch="aarch64")
    fix(ctx(g, layout))
    assert (tmp_path / "boot/efi/EFI/BOOT/BOOTAA64.EFI").read_bytes() == b"arm grub"


def test_systemd_boot_is_copied_too(g: VMCraft, tmp_path: Path) -> None:
    put(tmp_path, "boot/efi/EFI/systemd/systemd-bootx64.efi", b"sd-boot")
    fix(ctx(g))
    assert (tmp_path / "boot/efi/EFI/BOOT/BOOTX64.EFI").read_bytes() == b"sd-boot"


def test_nothing_to_copy_is_reported_not_fixed(g: VMCraft, tmp_path: Path) -> None:
    put(tmp_path, "boot/efi/EFI/debian/README", b"empty ESP")
    (found,) = UefiFallbackRepair().find(ctx(g, writable=False))
    assert not found.fixable
    assert "nothing to make one from" in found.what


def test_unknown_architecture_is_reported_not_guessed(g: VMCraft, tmp_path: Path) -> None:
    put(tmp_path, "boot/efi/EFI/debian/grubx64.efi", b"grub")
    layout = dataclasses.replace(DEBIAN_UEFI, arch="unknown")
    (found,) = UefiFallbackRepair().find(ctx(g, layout, writable=False))
    assert not found.fixable


def test_bios_guests_have_nothing_to_find(g: VMCraft, tmp_path: Path) -> None:
    put(tmp_path, "boot/efi/EFI/debian/grubx64.efi", b"grub")
    layout = dataclasses.replace(DEBIAN_UEFI, boot_mode="bios", esp=None)
    assert UefiFallbackRepair().find(ctx(g, layout, writable=False)) == []


def test_rollback_and_undo_take_the_loader_and_its_directory_away(
    g: VMCraft, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not hasattr(g, "rmdir"):
        monkeypatch.setattr(g, "rmdir", lambda p: os.rmdir(tmp_path / p.lstrip("/")), raising=False)
    for name in ("shimx64.efi", "grubx64.efi"):
        put(tmp_path, f"boot/efi/EFI/debian/{name}", name.encode())
    (tmp_path / "var/lib").mkdir(parents=True)  # every guest has it; the journal goes below
    before = tree_hashes(tmp_path)
    c = ctx(g)
    fix(c)
    assert c.journal is not None
    restored = c.journal.rollback()
    assert tree_hashes(tmp_path) == before
    assert {r.path for r in restored} >= {"/boot/efi/EFI/BOOT", "/boot/efi/EFI/BOOT/BOOTX64.EFI"}

    c = ctx(g)
    fix(c)
    assert c.journal is not None
    c.journal.finish()
    undo(g)
    assert tree_hashes(tmp_path) == before


def test_the_step_runs_last_in_fix_boot() -> None:
    assert REPAIRS[-1] is Step.UEFI
