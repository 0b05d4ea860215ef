"""Guest device names, os-release, fstab, fstab specs and image vetting (no root needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pytest_mock import MockerFixture

from vmcraft import ImageFormatError, ImageNotFoundError, UnknownDeviceError
from vmcraft.disks.attach import AttachedDisks
from vmcraft.disks.images import ImageInfo, vet_image
from vmcraft.disks.names import DeviceTable, drive_index, drive_letters
from vmcraft.inspect.fstab import FstabEntry, local_filesystems, parse_fstab
from vmcraft.inspect.inspector import resolve_spec
from vmcraft.inspect.osrelease import distro_name, parse_os_release, version_numbers
from vmcraft.mount.devtree import udev_escape

# -- drive letters ------------------------------------------------------------


@pytest.mark.parametrize(
    ("index", "letters"),
    [(0, "a"), (1, "b"), (25, "z"), (26, "aa"), (27, "ab"), (51, "az"), (52, "ba"), (701, "zz")],
)
def test_drive_letters_follow_the_kernel_scheme(index: int, letters: str) -> None:
    assert drive_letters(index) == letters
    assert drive_index(letters) == index


def test_drive_letters_round_trip() -> None:
    for index in range(1000):
        assert drive_index(drive_letters(index)) == index


# -- the device table ---------------------------------------------------------


def two_disk_table() -> DeviceTable:
    """sda with two partitions, sdb with none, and one logical volume."""
    table = DeviceTable()
    assert table.add_disk(Path("/dev/loop7"), [Path("/dev/loop7p1"), Path("/dev/loop7p2")]) == (
        "/dev/sda"
    )
    assert table.add_disk(Path("/dev/loop9"), []) == "/dev/sdb"
    table.volumes["/dev/vg-x/lv-y"] = Path("/dev/dm-3")
    return table


def test_table_lists_guest_names() -> None:
    table = two_disk_table()
    assert table.list_devices() == ["/dev/sda", "/dev/sdb"]
    assert table.list_partitions() == ["/dev/sda1", "/dev/sda2"]
    assert table.list_lvs() == ["/dev/vg-x/lv-y"]
    assert table.all_devices() == [
        "/dev/sda",
        "/dev/sdb",
        "/dev/sda1",
        "/dev/sda2",
        "/dev/vg-x/lv-y",
    ]


def test_many_disks_get_two_letter_names() -> None:
    table = DeviceTable()
    names = [table.add_disk(Path(f"/dev/loop{i}"), []) for i in range(28)]
    assert names[25:] == ["/dev/sdz", "/dev/sdaa", "/dev/sdab"]
    assert table.list_devices() == names
    assert table.host_node("/dev/sdaa") == Path("/dev/loop26")
    assert table.host_node("/dev/vdab") == Path("/dev/loop27")
    assert table.guest_name(Path("/dev/loop26")) == "/dev/sdaa"


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("/dev/sda", "/dev/sda"),
        ("/dev/sda2", "/dev/sda2"),
        ("/dev/vda", "/dev/sda"),
        ("/dev/vda2", "/dev/sda2"),
        ("/dev/hda1", "/dev/sda1"),
        ("/dev/xvda", "/dev/sda"),
        ("/dev/xvdb3", "/dev/sdb3"),
        ("/dev/vdaa1", "/dev/sdaa1"),
        ("/dev/mapper/vg--x-lv--y", "/dev/vg-x/lv-y"),
        ("/dev/mapper/vg-root", "/dev/vg/root"),
        ("/dev/vg/root", "/dev/vg/root"),
        ("/dev/mapper/control", "/dev/mapper/control"),
        ("/dev/nvme0n1p1", "/dev/nvme0n1p1"),
        ("sda", "sda"),
    ],
)
def test_canonical_names(name: str, canonical: str) -> None:
    assert DeviceTable().canonical(name) == canonical


@pytest.mark.parametrize(
    ("name", "node"),
    [
        ("/dev/sda", "/dev/loop7"),
        ("/dev/vda", "/dev/loop7"),
        ("/dev/sda1", "/dev/loop7p1"),
        ("/dev/sda2", "/dev/loop7p2"),
        ("/dev/hda2", "/dev/loop7p2"),
        ("/dev/xvda2", "/dev/loop7p2"),
        ("/dev/sdb", "/dev/loop9"),
        ("/dev/vg-x/lv-y", "/dev/dm-3"),
        ("/dev/mapper/vg--x-lv--y", "/dev/dm-3"),
    ],
)
def test_host_node_of_known_names(name: str, node: str) -> None:
    assert two_disk_table().host_node(name) == Path(node)


@pytest.mark.parametrize(
    "name",
    [
        "/dev/sda0",
        "/dev/sda3",
        "/dev/sda9",
        "/dev/sdb1",
        "/dev/sdc",
        "/dev/vdc1",
        "/dev/nvme0n1",
        "/dev/nvme0n1p1",
        "/dev/loop7",
        "/dev/loop7p1",
        "/dev/dm-3",
        "/dev/vg-x/lv-z",
        "/dev/mapper/vg--x-lv--z",
        "/dev/mapper/control",
        "/dev/disk/by-uuid/1234",
        "sda1",
        "/dev/sd",
        "",
        "/etc/shadow",
    ],
)
def test_unknown_names_raise(name: str) -> None:
    with pytest.raises(UnknownDeviceError):
        two_disk_table().host_node(name)


def test_empty_table_knows_nothing() -> None:
    table = DeviceTable()
    assert table.all_devices() == []
    with pytest.raises(UnknownDeviceError):
        table.host_node("/dev/sda")


@pytest.mark.parametrize(
    ("node", "name"),
    [
        ("/dev/loop7", "/dev/sda"),
        ("/dev/loop7p1", "/dev/sda1"),
        ("/dev/loop7p2", "/dev/sda2"),
        ("/dev/loop9", "/dev/sdb"),
        ("/dev/dm-3", "/dev/vg-x/lv-y"),
    ],
)
def test_guest_name_reverses_host_node(node: str, name: str) -> None:
    table = two_disk_table()
    assert table.guest_name(Path(node)) == name
    assert table.host_node(name) == Path(node)


@pytest.mark.parametrize("node", ["/dev/loop0", "/dev/loop7p3", "/dev/sda", "/dev/dm-0"])
def test_guest_name_of_a_foreign_node_raises(node: str) -> None:
    with pytest.raises(UnknownDeviceError):
        two_disk_table().guest_name(Path(node))


# -- os-release -----------------------------------------------------------------

DEBIAN_OS_RELEASE = """\
PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
VERSION="12 (bookworm)"
VERSION_CODENAME=bookworm
ID=debian
HOME_URL="https://www.debian.org/"
"""


def test_parse_os_release_debian() -> None:
    values = parse_os_release(DEBIAN_OS_RELEASE)
    assert values["PRETTY_NAME"] == "Debian GNU/Linux 12 (bookworm)"
    assert values["NAME"] == "Debian GNU/Linux"
    assert values["VERSION_ID"] == "12"
    assert values["VERSION_CODENAME"] == "bookworm"
    assert values["ID"] == "debian"
    assert values["HOME_URL"] == "https://www.debian.org/"


def test_parse_os_release_quoting_and_junk() -> None:
    text = (
        "# a comment\n"
        "\n"
        "SINGLE='single quoted'\n"
        'DOUBLE="double \\"escaped\\" quotes"\n'
        "BARE=bare\n"
        'SPACED = "x"\n'
        "EMPTY=\n"
        'EMPTY_QUOTED=""\n'
        'BROKEN="unbalanced\n'
        "NO_EQUALS_SIGN\n"
        "  INDENTED=yes  \n"
    )
    values = parse_os_release(text)
    assert values["SINGLE"] == "single quoted"
    assert values["DOUBLE"] == 'double "escaped" quotes'
    assert values["BARE"] == "bare"
    assert values["SPACED"] == "x"
    assert values["EMPTY"] == ""
    assert values["EMPTY_QUOTED"] == ""
    assert values["INDENTED"] == "yes"
    assert "BROKEN" not in values
    assert "NO_EQUALS_SIGN" not in values
    assert not any(key.startswith("#") for key in values)


@pytest.mark.parametrize(
    ("release", "distro"),
    [
        ({"ID": "debian"}, "debian"),
        ({"ID": "Debian"}, "debian"),
        ({"ID": "ubuntu", "ID_LIKE": "debian"}, "ubuntu"),
        ({"ID": "rhel", "ID_LIKE": "fedora"}, "rhel"),
        ({"ID": "centos", "ID_LIKE": "rhel fedora"}, "centos"),
        ({"ID": "ol"}, "oraclelinux"),
        ({"ID": "kali"}, "kalilinux"),
        ({"ID": "arch"}, "archlinux"),
        ({"ID": "opensuse-leap", "ID_LIKE": "suse opensuse"}, "opensuse"),
        ({"ID": "sles"}, "sles"),
        ({"ID": "almalinux", "ID_LIKE": "rhel centos fedora"}, "redhat-based"),
        ({"ID": "eurolinux", "ID_LIKE": "rhel fedora centos"}, "redhat-based"),
        ({"ID": "someone", "ID_LIKE": "Fedora"}, "redhat-based"),
        ({"ID": "someone", "ID_LIKE": "centos"}, "redhat-based"),
        ({"ID": "someone", "ID_LIKE": "suse"}, "suse-based"),
        ({"ID": "someone", "ID_LIKE": "opensuse"}, "suse-based"),
        ({"ID": "someone", "ID_LIKE": "debian"}, "unknown"),
        ({"ID": "someone"}, "unknown"),
        ({}, "unknown"),
    ],
)
def test_distro_name(release: dict[str, str], distro: str) -> None:
    assert distro_name(release) == distro


@pytest.mark.parametrize(
    ("version", "numbers"),
    [
        ("12", (12, 0)),
        ("12.5", (12, 5)),
        ("22.04", (22, 4)),
        ("15.5", (15, 5)),
        ("9.3 (Blue Onyx)", (9, 3)),
        ("8.10.1", (8, 10)),
        ("bookworm/sid", (0, 0)),
        ("", (0, 0)),
        ("  11.7\n", (11, 7)),
    ],
)
def test_version_numbers(version: str, numbers: tuple[int, int]) -> None:
    assert version_numbers(version) == numbers


# -- fstab ------------------------------------------------------------------------

FSTAB = """\
# /etc/fstab: static file system information.
#
# <file system> <mount point> <type> <options> <dump> <pass>
UUID=bd4fa5e6-9058-48b1-b5cd-c4a0b91a2f7f / ext4 errors=remount-ro 0 1
   # an indented comment
LABEL=BOOT   /boot   ext2  defaults  0 2
/dev/vdb1 /srv/my\\040data xfs noatime 0 0
PARTUUID=abcd-01 /home\\011tab btrfs
UUID=1111 none swap sw 0 0
/dev/sda3 swap swap defaults 0 0
proc /proc proc defaults 0 0
tmpfs /tmp tmpfs mode=1777 0 0
server:/export /mnt/nfs nfs rw 0 0
server:/export4 /mnt/nfs4 nfs4 rw 0 0
too short
"""


def test_parse_fstab_skips_comments_and_short_lines() -> None:
    entries = parse_fstab(FSTAB)
    assert [e.mountpoint for e in entries] == [
        "/",
        "/boot",
        "/srv/my data",
        "/home\ttab",
        "none",
        "swap",
        "/proc",
        "/tmp",
        "/mnt/nfs",
        "/mnt/nfs4",
    ]
    assert entries[0] == FstabEntry(
        "UUID=bd4fa5e6-9058-48b1-b5cd-c4a0b91a2f7f", "/", "ext4", "errors=remount-ro"
    )
    assert entries[3].options == "defaults"


def test_fstab_escapes() -> None:
    (entry,) = parse_fstab("/dev/disk/by-label/my\\040disk /mnt/a\\040b\\011c ext4 ro 0 0\n")
    assert entry.spec == "/dev/disk/by-label/my disk"
    assert entry.mountpoint == "/mnt/a b\tc"
    assert entry.options == "ro"


def test_local_filesystems_keeps_block_devices_only() -> None:
    local = local_filesystems(parse_fstab(FSTAB))
    assert [(e.spec, e.mountpoint, e.fstype) for e in local] == [
        ("UUID=bd4fa5e6-9058-48b1-b5cd-c4a0b91a2f7f", "/", "ext4"),
        ("LABEL=BOOT", "/boot", "ext2"),
        ("/dev/vdb1", "/srv/my data", "xfs"),
        ("PARTUUID=abcd-01", "/home\ttab", "btrfs"),
    ]


def test_empty_fstab() -> None:
    assert parse_fstab("") == []
    assert local_filesystems([]) == []


# -- fstab specs resolved among the guest's own devices -----------------------------

ROOT_UUID = "bd4fa5e6-9058-48b1-b5cd-c4a0b91a2f7f"
ROOT_PARTUUID = "60233d54-cbbf-3b4b-a539-01d311629b21"
PV_UUID = "Pv0Abc-1234-5678"


@pytest.fixture
def disks(tmp_path: Path) -> AttachedDisks:
    """Attached disks as blkid saw them, without attaching anything."""
    attached = AttachedDisks([], tmp_path)
    attached.table.add_disk(
        Path("/dev/loop7"),
        [Path("/dev/loop7p1"), Path("/dev/loop7p2"), Path("/dev/loop7p3")],
    )
    attached.ids = {
        "/dev/sda": {"PTTYPE": "gpt"},
        "/dev/sda1": {"PART_ENTRY_UUID": "11111111-0000-0000-0000-000000000001"},
        "/dev/sda2": {
            "TYPE": "ext4",
            "UUID": ROOT_UUID,
            "LABEL": "debroot",
            "PART_ENTRY_UUID": ROOT_PARTUUID,
            "PART_ENTRY_NAME": "root part",
        },
        "/dev/sda3": {"TYPE": "LVM2_member", "UUID": PV_UUID},
    }
    return attached


@pytest.mark.parametrize(
    ("spec", "device"),
    [
        (f"UUID={ROOT_UUID}", "/dev/sda2"),
        (f'UUID="{ROOT_UUID}"', "/dev/sda2"),
        (f"UUID={ROOT_UUID.upper()}", "/dev/sda2"),
        ("LABEL=debroot", "/dev/sda2"),
        ("LABEL=DEBROOT", "/dev/sda2"),
        (f"PARTUUID={ROOT_PARTUUID}", "/dev/sda2"),
        (f"PARTUUID={ROOT_PARTUUID.upper()}", "/dev/sda2"),
        ("PARTUUID=11111111-0000-0000-0000-000000000001", "/dev/sda1"),
        ('PARTLABEL="root part"', "/dev/sda2"),
        (f"/dev/disk/by-uuid/{ROOT_UUID}", "/dev/sda2"),
        ("/dev/disk/by-label/debroot", "/dev/sda2"),
        (f"/dev/disk/by-partuuid/{ROOT_PARTUUID}", "/dev/sda2"),
        ("/dev/sda2", "/dev/sda2"),
        ("/dev/vda2", "/dev/sda2"),
        ("/dev/xvda2", "/dev/sda2"),
        ("/dev/hda1", "/dev/sda1"),
        ("/dev/sda", "/dev/sda"),
    ],
)
def test_resolve_spec_finds_guest_devices(disks: AttachedDisks, spec: str, device: str) -> None:
    assert resolve_spec(spec, disks) == device


@pytest.mark.parametrize(
    "spec",
    [
        "UUID=00000000-0000-0000-0000-000000000000",
        "LABEL=nosuchlabel",
        "PARTUUID=nope",
        "/dev/disk/by-uuid/00000000-0000-0000-0000-000000000000",
        "/dev/sda9",
        "/dev/vdb1",
        "/dev/nvme0n1p2",
        "/dev/loop7p2",
        "/dev/mapper/vg-root",
        "tmpfs",
        "server:/export",
        "",
    ],
)
def test_resolve_spec_unknown_is_none(disks: AttachedDisks, spec: str) -> None:
    assert resolve_spec(spec, disks) is None


@pytest.mark.parametrize("spec", [f"UUID={PV_UUID}", f"/dev/disk/by-uuid/{PV_UUID}"])
def test_resolve_spec_never_matches_an_lvm_pv_uuid(disks: AttachedDisks, spec: str) -> None:
    assert resolve_spec(spec, disks) is None


def test_resolve_spec_logical_volume(disks: AttachedDisks) -> None:
    disks.table.volumes["/dev/vg-x/root"] = Path("/dev/dm-0")
    disks.ids["/dev/vg-x/root"] = {"TYPE": "xfs", "UUID": "lv-uuid"}
    assert resolve_spec("UUID=lv-uuid", disks) == "/dev/vg-x/root"
    assert resolve_spec("/dev/mapper/vg--x-root", disks) == "/dev/vg-x/root"
    assert resolve_spec("/dev/vg-x/root", disks) == "/dev/vg-x/root"


# -- udev escaping --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("label", "escaped"),
    [
        ("debroot", "debroot"),
        ("my disk", "my\\x20disk"),
        ("a/b", "a\\x2fb"),
        ("back\\slash", "back\\x5cslash"),
        ("tab\there", "tab\\x09here"),
        ("new\nline", "new\\x0aline"),
        ("ünïcödé", "ünïcödé"),
        ("../..", "..\\x2f.."),
        ("", ""),
    ],
)
def test_udev_escape(label: str, escaped: str) -> None:
    assert udev_escape(label) == escaped
    assert "/" not in udev_escape(label)


# -- image vetting ----------------------------------------------------------------------


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "disk.img"
    path.write_bytes(b"\0" * 512)
    return path


def info(
    path: Path,
    *,
    format: str = "qcow2",
    virtual_size: int = 1 << 30,
    backing: str | None = None,
    extents: tuple[str, ...] = (),
) -> ImageInfo:
    return ImageInfo(path, format, virtual_size, backing, extents)


def test_vet_image_accepts_a_plain_image(mocker: MockerFixture, image: Path) -> None:
    probe = mocker.patch("vmcraft.disks.images.image_info", return_value=info(image))
    assert vet_image(image, None, writable=True).format == "qcow2"
    probe.assert_called_once_with(image, None)


def test_vet_image_passes_the_given_format(mocker: MockerFixture, image: Path) -> None:
    probe = mocker.patch("vmcraft.disks.images.image_info", return_value=info(image, format="raw"))
    assert vet_image(image, "raw", writable=False).format == "raw"
    probe.assert_called_once_with(image, "raw")


def test_vet_image_refuses_a_backing_file(mocker: MockerFixture, image: Path) -> None:
    mocker.patch("vmcraft.disks.images.image_info", return_value=info(image, backing="/etc/shadow"))
    with pytest.raises(ImageFormatError, match=r"backing file \(/etc/shadow\)"):
        vet_image(image, None, writable=False)


def test_vet_image_refuses_a_foreign_vmdk_extent(
    mocker: MockerFixture, image: Path, tmp_path: Path
) -> None:
    mocker.patch(
        "vmcraft.disks.images.image_info",
        return_value=info(image, format="vmdk", extents=(str(tmp_path / "other-flat.vmdk"),)),
    )
    with pytest.raises(ImageFormatError, match="extent elsewhere"):
        vet_image(image, None, writable=False)


def test_vet_image_accepts_a_vmdk_whose_extent_is_itself(
    mocker: MockerFixture, image: Path, tmp_path: Path
) -> None:
    link = tmp_path / "link.vmdk"
    link.symlink_to(image)
    mocker.patch(
        "vmcraft.disks.images.image_info",
        return_value=info(link, format="vmdk", extents=(str(image), "")),
    )
    assert vet_image(link, None, writable=False).format == "vmdk"


@pytest.mark.parametrize("fmt", ["luks", "parallels", "qcow", "cloop", "dmg"])
def test_vet_image_refuses_an_unsupported_probed_format(
    mocker: MockerFixture, image: Path, fmt: str
) -> None:
    mocker.patch("vmcraft.disks.images.image_info", return_value=info(image, format=fmt))
    with pytest.raises(ImageFormatError, match="not supported"):
        vet_image(image, None, writable=False)


@pytest.mark.parametrize("fmt", ["foo", "luks", "QCOW2", ""])
def test_vet_image_refuses_an_unsupported_requested_format(
    mocker: MockerFixture, image: Path, fmt: str
) -> None:
    probe = mocker.patch("vmcraft.disks.images.image_info", return_value=info(image))
    with pytest.raises(ImageFormatError, match="not supported"):
        vet_image(image, fmt, writable=False)
    probe.assert_not_called()


@pytest.mark.parametrize("size", [0, -1])
def test_vet_image_refuses_zero_size(mocker: MockerFixture, image: Path, size: int) -> None:
    mocker.patch("vmcraft.disks.images.image_info", return_value=info(image, virtual_size=size))
    with pytest.raises(ImageFormatError, match="has no size"):
        vet_image(image, None, writable=False)


def test_vet_image_missing_and_directory(mocker: MockerFixture, tmp_path: Path) -> None:
    probe = mocker.patch("vmcraft.disks.images.image_info")
    with pytest.raises(ImageNotFoundError, match="does not exist"):
        vet_image(tmp_path / "missing.qcow2", None, writable=False)
    with pytest.raises(ImageNotFoundError, match="not a file or block device"):
        vet_image(tmp_path, None, writable=False)
    probe.assert_not_called()


def test_vet_image_propagates_qemu_img_failure(mocker: MockerFixture, image: Path) -> None:
    mocker.patch(
        "vmcraft.disks.images.image_info",
        side_effect=ImageFormatError("cannot read it as a disk image"),
    )
    with pytest.raises(ImageFormatError, match="cannot read"):
        vet_image(image, None, writable=False)
