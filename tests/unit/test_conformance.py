"""The libguestfs conformance table: every call hyper2kvm makes exists, and the doc is current.

No root needed: these look at the handle class, the ``CALLS`` table and
docs/conformance.md, nothing is launched.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from vmcraft import VMCraft
from vmcraft.guestfs.conformance import CALLS, IMPLEMENTED, conformance_table

REPO = Path(__file__).resolve().parents[2]

# The libguestfs calls hyper2kvm 0.2.1's offline fixers make.
HYPER2KVM_CALLS = [
    "add_drive_opts",
    "launch",
    "close",
    "sync",
    "set_trace",
    "version",
    "get_backend_settings",
    "list_devices",
    "list_partitions",
    "list_filesystems",
    "blkid",
    "vfs_type",
    "vfs_uuid",
    "findfs_uuid",
    "findfs_label",
    "vgscan",
    "vgchange_activate_all",
    "vgs",
    "pvs",
    "lvs",
    "cryptsetup_open",
    "inspect_os",
    "inspect_get_type",
    "inspect_get_distro",
    "inspect_get_product_name",
    "inspect_get_major_version",
    "inspect_get_minor_version",
    "inspect_get_mountpoints",
    "mount",
    "mount_ro",
    "mount_options",
    "umount",
    "umount_all",
    "mount_local",
    "mount_local_run",
    "umount_local",
    "exists",
    "is_file",
    "is_dir",
    "is_link",
    "stat",
    "statvfs",
    "ls",
    "find",
    "glob_expand",
    "realpath",
    "read_file",
    "write",
    "mkdir_p",
    "chmod",
    "ln_sf",
    "cp",
    "cp_a",
    "copy_file_to_file",
    "rename",
    "rm",
    "rm_f",
    "e2fsck",
    "command",
    "command_quiet",
    "command_with_mounts",
]

STATUSES = {IMPLEMENTED, "differs", "vmcraft extension"}


def test_the_call_list_has_no_duplicates() -> None:
    assert len(HYPER2KVM_CALLS) == len(set(HYPER2KVM_CALLS)) == 61


@pytest.mark.parametrize("name", HYPER2KVM_CALLS)
def test_every_call_is_listed_and_callable(name: str) -> None:
    assert name in CALLS, f"{name} is missing from vmcraft.guestfs.conformance.CALLS"
    assert callable(getattr(VMCraft, name, None)), f"VMCraft has no callable {name}"


def test_every_listed_call_is_callable() -> None:
    missing = [name for name in CALLS if not callable(getattr(VMCraft, name, None))]
    assert missing == [], f"CALLS lists calls VMCraft does not have: {missing}"


def test_statuses() -> None:
    for name, (status, note) in CALLS.items():
        assert status in STATUSES, f"{name}: unknown status {status!r}"
        assert isinstance(note, str)
        assert "|" not in note, f"{name}: a '|' would break the Markdown table"
        if status != IMPLEMENTED:
            assert note, f"{name}: a call that differs must say how"
    assert {status for status, _ in CALLS.values()} == STATUSES


def test_conformance_doc_is_current() -> None:
    doc = (REPO / "docs" / "conformance.md").read_text()
    assert doc == conformance_table(), (
        "docs/conformance.md is out of date: regenerate it with "
        "`vmcraft conformance > docs/conformance.md`"
    )


def test_conformance_table_lists_every_call_once() -> None:
    rows = [line for line in conformance_table().splitlines() if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == list(CALLS)


def params(name: str) -> list[str]:
    """The parameter names of ``VMCraft.<name>``, without ``self``."""
    found = list(inspect.signature(getattr(VMCraft, name)).parameters)
    assert found[0] == "self"
    return found[1:]


@pytest.mark.parametrize(
    ("name", "leading"),
    [
        ("mount", ["mountable", "mountpoint"]),
        ("mount_ro", ["mountable", "mountpoint"]),
        ("mount_options", ["options", "mountable", "mountpoint"]),
        ("chmod", ["mode", "path"]),
        ("ln_sf", ["target", "linkname"]),
        ("add_drive_opts", ["filename"]),
        ("cryptsetup_open", ["device", "key", "mapname"]),
        ("copy_file_to_file", ["src", "dest"]),
        ("cp", ["src", "dest"]),
        ("cp_a", ["src", "dest"]),
        ("rename", ["oldpath", "newpath"]),
        ("mount_local", ["localmountpoint"]),
        ("e2fsck", ["device"]),
        ("glob_expand", ["pattern"]),
    ],
)
def test_argument_order_follows_libguestfs(name: str, leading: list[str]) -> None:
    assert params(name)[: len(leading)] == leading


def test_optional_arguments_are_keywords_with_defaults() -> None:
    for name, options in (
        ("add_drive_opts", ["readonly", "format"]),
        ("cryptsetup_open", ["readonly"]),
        ("e2fsck", ["correct", "forceall"]),
        ("mount_local", ["readonly"]),
        ("glob_expand", ["directoryslash"]),
    ):
        signature = inspect.signature(getattr(VMCraft, name))
        for option in options:
            assert option in signature.parameters, f"{name} has no {option}"
            assert signature.parameters[option].default is not inspect.Parameter.empty
    assert inspect.signature(VMCraft.add_drive_opts).parameters["readonly"].default is True
