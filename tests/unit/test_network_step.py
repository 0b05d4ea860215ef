"""The network step on synthetic guest trees: MAC pinning taken away, ``--nic`` pins written.

Each tree is a directory in ``tmp_path`` holding only the files the step
reads; ``VMCraft.from_root`` reads and writes it with the ordinary file
calls (no root, no mount). Every rewrite is asserted as the whole file, and
the journal is shown to put every file back byte for byte.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_fixboot_layouts import debian12
from tests.unit.trees import put, tree_hashes
from vmcraft.cli import main
from vmcraft.errors import ExitCode, NicPinError, VMCraftError, exit_code_for
from vmcraft.fixers.fixboot import REPAIRS, BootFixer, FixBootOptions
from vmcraft.fixers.initramfs import InitramfsRepair
from vmcraft.fixers.journal import Journal
from vmcraft.fixers.layout import BootLayout
from vmcraft.fixers.network import (
    UDEV_PIN_RULES,
    NetworkRepair,
    NicPin,
    PinMethod,
    check_pins,
    pin_link_path,
    pin_method,
)
from vmcraft.fixers.step import Finding, RepairContext, Step
from vmcraft.handle import VMCraft
from vmcraft.report import Rewrite, StepReport

OLD_MAC = "00:50:56:8a:12:34"
OLD_MAC2 = "00:0c:29:ab:cd:ef"
NEW_MAC = "52:54:00:12:34:56"
PIN = NicPin("ens16", NEW_MAC)

LAYOUT = BootLayout(
    distro="debian",
    family="debian",
    boot_mode="bios",
    kernels=(),
    grub_cfg="/boot/grub/grub.cfg",
    bootloader_cmd=("update-grub",),
    initramfs_cmd=("update-initramfs", "-u", "-k", "all"),
    grub_install_tool="grub-install",
)


def systemd_udev(root: Path) -> None:
    """systemd-udevd with the rules that apply .link files (Debian 12's paths)."""
    put(root, "usr/lib/systemd/systemd-udevd", "")
    put(
        root,
        "usr/lib/udev/rules.d/80-net-setup-link.rules",
        'SUBSYSTEM!="net", GOTO="net_setup_link_end"\nIMPORT{builtin}="net_setup_link"\n',
    )


@pytest.fixture
def handle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[VMCraft]:
    with VMCraft.from_root(tmp_path) as g:
        if not hasattr(g, "rmdir"):
            monkeypatch.setattr(
                g, "rmdir", lambda path: os.rmdir(tmp_path / path.lstrip("/")), raising=False
            )
        yield g


def journal_for(g: Any) -> Journal:
    return Journal(g)


def context(g: VMCraft, *, writable: bool = True) -> RepairContext:
    return RepairContext(
        g=g, layout=LAYOUT, fstab=[], devices={}, journal=journal_for(g) if writable else None
    )


def run_fix(ctx: RepairContext, pins: tuple[NicPin, ...] = ()) -> StepReport:
    repair = NetworkRepair(pins)
    report = StepReport()
    repair.fix(ctx, repair.find(ctx), report)
    report.checks.extend(repair.check(ctx, 0.0))
    return report


def summary(findings: list[Finding]) -> list[tuple[str | None, str, bool]]:
    return [(f.path, f.detail, f.fixable) for f in findings]


# -- --nic NAME=MAC --------------------------------------------------------------


def test_a_pin_is_parsed_and_its_mac_kept_in_udevs_form() -> None:
    assert NicPin.parse("ens16=52:54:00:12:34:56") == PIN
    assert NicPin.parse(" eth0 = 52-54-00-AB-CD-EF ") == NicPin("eth0", "52:54:00:ab:cd:ef")
    assert NicPin("ens16", "52:54:00:12:34:56").mac == NEW_MAC
    assert str(PIN) == "ens16=52:54:00:12:34:56"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ens16", "expected NAME=MAC"),
        ("ens16=52:54:00:12:34", "not a NIC's MAC address"),
        ("ens16=52:54:00:12:34:5g", "not a NIC's MAC address"),
        ("ens16=52:54:00-12:34:56", "not a NIC's MAC address"),
        ("ens16=01:00:5e:00:00:01", "not a NIC's MAC address"),  # a group address
        ("ens16=00:00:00:00:00:00", "not a NIC's MAC address"),
        ("=52:54:00:12:34:56", "is not an interface name"),
        ("averyverylongname=52:54:00:12:34:56", "is not an interface name"),
        ("eth/0=52:54:00:12:34:56", "is not an interface name"),
        ("eth 0=52:54:00:12:34:56", "is not an interface name"),
        (".hidden=52:54:00:12:34:56", "is not an interface name"),
        ("lo=52:54:00:12:34:56", "is not an interface name"),
        ("all=52:54:00:12:34:56", "is not an interface name"),
        ("42=52:54:00:12:34:56", "is not an interface name"),
    ],
)
def test_a_bad_pin_is_a_typed_error(text: str, message: str) -> None:
    with pytest.raises(NicPinError, match=message) as caught:
        NicPin.parse(text)
    assert isinstance(caught.value, VMCraftError)
    assert exit_code_for(caught.value) is ExitCode.USAGE


def test_a_name_or_a_mac_given_twice_is_refused() -> None:
    other = NicPin("ens17", "52:54:00:12:34:57")
    assert check_pins([PIN, other, PIN]) == (PIN, other)
    with pytest.raises(NicPinError, match="the same name twice"):
        check_pins([PIN, NicPin("ens16", "52:54:00:12:34:57")])
    with pytest.raises(NicPinError, match="the same mac twice"):
        check_pins([PIN, NicPin("ens17", NEW_MAC)])
    with pytest.raises(NicPinError):
        FixBootOptions(nics=(PIN, NicPin("ens16", "52:54:00:12:34:57")))
    with pytest.raises(NicPinError):
        NetworkRepair([PIN, NicPin("eth0", NEW_MAC)])


@pytest.mark.parametrize(
    "nics",
    [
        ["--nic", "ens16=52:54:00:12:34"],
        ["--nic", "ens16"],
        ["--nic", "ens16=52:54:00:12:34:56", "--nic", "ens16=52:54:00:12:34:57"],
    ],
)
def test_the_cli_refuses_a_bad_pin_before_it_opens_the_image(
    nics: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = put(tmp_path, "disk.raw", b"\0" * 4096)
    before = tree_hashes(tmp_path)
    with pytest.raises(SystemExit) as exited:
        main(["fix-boot", str(image), *nics])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "argument --nic: --nic ens16" in err
    assert tree_hashes(tmp_path) == before


def test_the_cli_passes_its_pins_to_the_library(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[FixBootOptions] = []

    def fake_fix_boot(image: str, **kwargs: Any) -> Any:
        seen.append(kwargs["options"])
        raise NicPinError("stop here")

    monkeypatch.setattr("vmcraft.cli.fix_boot", fake_fix_boot)
    code = main(
        ["fix-boot", "x.raw", "--nic", "ens16=52:54:00:12:34:56", "--nic", "eth1=52:54:00:AA:BB:CC"]
    )
    assert code == ExitCode.USAGE
    assert seen[0].nics == (PIN, NicPin("eth1", "52:54:00:aa:bb:cc"))


def test_the_step_order_puts_network_before_the_initramfs_that_copies_it() -> None:
    assert REPAIRS == (
        Step.NAMES,
        Step.DRIVERS,
        Step.LVM,
        Step.NETWORK,
        Step.INITRAMFS,
        Step.BOOTLOADER,
        Step.UEFI,
    )
    assert Step.NETWORK in InitramfsRepair.COPIED_FROM
    assert Step.NETWORK.value == "network"


def test_a_network_change_makes_the_initramfs_step_rebuild(handle: VMCraft) -> None:
    ctx = context(handle, writable=False)
    ctx.changed_before.add(Step.NETWORK)
    (found,) = InitramfsRepair().find(ctx)
    assert found.what == "the initramfs holds copies of files this run changed"
    assert found.detail == "network"


# -- udev rules ------------------------------------------------------------------

PERSISTENT_NET = f"""\
# This file was automatically generated by the /lib/udev/write_net_rules
# program, run by the persistent-net-generator.rules rules file.
#
# You can modify it, as long as you keep each rule on a single
# line, and change only the value of the NAME= key.

# PCI device 0x15ad:0x07b0 (vmxnet3)
SUBSYSTEM=="net", ACTION=="add", DRIVERS=="?*", ATTR{{address}}=="{OLD_MAC}", \
ATTR{{dev_id}}=="0x0", ATTR{{type}}=="1", KERNEL=="eth*", NAME="eth0"
"""


def test_a_persistent_net_file_of_only_pins_is_removed(tmp_path: Path, handle: VMCraft) -> None:
    put(tmp_path, "etc/udev/rules.d/70-persistent-net.rules", PERSISTENT_NET)
    ctx = context(handle)
    assert summary(NetworkRepair().find(ctx)) == [
        (
            "/etc/udev/rules.d/70-persistent-net.rules",
            "the file is removed: it holds nothing else (udev writes it anew)",
            True,
        )
    ]
    report = run_fix(ctx)
    assert report.removals == ["/etc/udev/rules.d/70-persistent-net.rules"]
    assert not (tmp_path / "etc/udev/rules.d/70-persistent-net.rules").exists()
    assert report.success


def test_a_rules_file_with_more_keeps_the_rest(tmp_path: Path, handle: VMCraft) -> None:
    rule = f'SUBSYSTEM=="net", ACTION=="add", ATTR{{address}}=="{OLD_MAC2}", NAME="lan0"'
    text = (
        "# local rules\n"
        'SUBSYSTEM=="block", KERNEL=="sdb", ENV{UDISKS_IGNORE}="1"\n'
        f"{rule}\n"
        'SUBSYSTEM=="net", ATTR{address}=="52:54:00:*", ENV{NM_UNMANAGED}="1"\n'
    )
    put(tmp_path, "etc/udev/rules.d/60-local.rules", text)
    report = run_fix(context(handle))
    note = "  # vmcraft: a MAC address the NIC does not have on KVM"
    assert (tmp_path / "etc/udev/rules.d/60-local.rules").read_text() == (
        "# local rules\n"
        'SUBSYSTEM=="block", KERNEL=="sdb", ENV{UDISKS_IGNORE}="1"\n'
        f"#{rule}{note}\n"
        'SUBSYSTEM=="net", ATTR{address}=="52:54:00:*", ENV{NM_UNMANAGED}="1"\n'
    )
    assert report.rewrites == [Rewrite("/etc/udev/rules.d/60-local.rules", rule, f"#{rule}{note}")]


def test_a_rule_for_the_pinned_mac_and_name_stays(tmp_path: Path, handle: VMCraft) -> None:
    systemd_udev(tmp_path)
    text = f'SUBSYSTEM=="net", ATTR{{address}}=="{NEW_MAC}", NAME="ens16"\n'
    put(tmp_path, "etc/udev/rules.d/70-persistent-net.rules", text)
    found = NetworkRepair((PIN,)).find(context(handle, writable=False))
    assert [f.path for f in found] == [pin_link_path(PIN)]
    # The same address under another name would fight the pin: it goes.
    found = NetworkRepair((NicPin("eth0", NEW_MAC),)).find(context(handle, writable=False))
    assert found[0].path == "/etc/udev/rules.d/70-persistent-net.rules"
    assert "names the NIC with MAC address 52:54:00:12:34:56 ens16" in found[0].what


# -- ifcfg -----------------------------------------------------------------------

RHEL_IFCFG = f"""\
TYPE=Ethernet
BOOTPROTO=none
NAME=eth0
DEVICE=eth0
ONBOOT=yes
HWADDR={OLD_MAC.upper()}
MACADDR="{OLD_MAC}"
IPADDR=10.0.2.15
PREFIX=24
GATEWAY=10.0.2.2
"""


def test_ifcfg_hwaddr_and_macaddr_become_comments(tmp_path: Path, handle: VMCraft) -> None:
    put(tmp_path, "etc/sysconfig/network-scripts/ifcfg-eth0", RHEL_IFCFG)
    put(tmp_path, "etc/sysconfig/network-scripts/ifcfg-eth0.bak", RHEL_IFCFG)
    put(tmp_path, "etc/sysconfig/network-scripts/ifcfg-lo", f"DEVICE=lo\nHWADDR={OLD_MAC}\n")
    report = run_fix(context(handle))
    assert (
        (tmp_path / "etc/sysconfig/network-scripts/ifcfg-eth0").read_text()
        == f"""\
TYPE=Ethernet
BOOTPROTO=none
NAME=eth0
DEVICE=eth0
ONBOOT=yes
#HWADDR={OLD_MAC.upper()}  # vmcraft: the NIC is picked by its name
#MACADDR="{OLD_MAC}"  # vmcraft: KVM gives the NIC its own MAC address
IPADDR=10.0.2.15
PREFIX=24
GATEWAY=10.0.2.2
"""
    )
    assert (tmp_path / "etc/sysconfig/network-scripts/ifcfg-eth0.bak").read_text() == RHEL_IFCFG
    assert [r.before for r in report.rewrites] == [
        f"HWADDR={OLD_MAC.upper()}",
        f'MACADDR="{OLD_MAC}"',
    ]
    assert report.success


def test_ifcfg_without_device_is_left_and_reported(tmp_path: Path, handle: VMCraft) -> None:
    text = f"BOOTPROTO=dhcp\nONBOOT=yes\nHWADDR={OLD_MAC}\n"
    put(tmp_path, "etc/sysconfig/network-scripts/ifcfg-Wired", text)
    ctx = context(handle)
    (found,) = NetworkRepair().find(ctx)
    assert not found.fixable
    assert (
        found.what
        == f"ifcfg HWADDR={OLD_MAC} picks the NIC by a MAC address a NIC on KVM does not have"
    )
    assert found.detail.startswith("no DEVICE= names the NIC")
    report = run_fix(ctx)
    assert report.rewrites == []
    assert (tmp_path / "etc/sysconfig/network-scripts/ifcfg-Wired").read_text() == text


def test_suse_ifcfg_is_named_by_its_file(tmp_path: Path, handle: VMCraft) -> None:
    text = f"BOOTPROTO='static'\nSTARTMODE='auto'\nHWADDR='{OLD_MAC}'\nLLADDR='{OLD_MAC}'\n"
    put(tmp_path, "etc/sysconfig/network/ifcfg-eth0", text)
    run_fix(context(handle))
    assert (tmp_path / "etc/sysconfig/network/ifcfg-eth0").read_text() == (
        "BOOTPROTO='static'\nSTARTMODE='auto'\n"
        f"#HWADDR='{OLD_MAC}'  # vmcraft: the NIC is picked by its name\n"
        f"#LLADDR='{OLD_MAC}'  # vmcraft: KVM gives the NIC its own MAC address\n"
    )


# -- netplan ---------------------------------------------------------------------

NETPLAN = f"""\
# This is the network config written by 'subiquity'
network:
  version: 2
  ethernets:
    eth0:
      match:
        macaddress: {OLD_MAC}
      set-name: eth0
      dhcp4: true
    lan1:
      match:
        name: ens*
        macaddress: "{OLD_MAC2}"
      addresses: [10.0.3.15/24]
    ens18:
      macaddress: {OLD_MAC2}
      dhcp6: true
"""
NETPLAN_FIXED = f"""\
# This is the network config written by 'subiquity'
network:
  version: 2
  ethernets:
    eth0:
#      match:  # vmcraft: without a match netplan configures the interface eth0
#        macaddress: {OLD_MAC}  # vmcraft: without a match netplan configures the interface eth0
#      set-name: eth0  # vmcraft: without a match netplan configures the interface eth0
      dhcp4: true
    lan1:
      match:
        name: ens*
#        macaddress: "{OLD_MAC2}"  # vmcraft: the NIC is matched by its name
      addresses: [10.0.3.15/24]
    ens18:
#      macaddress: {OLD_MAC2}  # vmcraft: KVM gives the NIC its own MAC address
      dhcp6: true
"""


def test_netplan_matches_become_names(tmp_path: Path, handle: VMCraft) -> None:
    put(tmp_path, "etc/netplan/50-cloud-init.yaml", NETPLAN, mode=0o600)
    ctx = context(handle)
    assert [f.detail for f in NetworkRepair().find(ctx)] == [
        "match: and set-name: become comments: without a match netplan configures the "
        "interface eth0",
        "becomes a comment: match: name: picks the NIC",
        "becomes a comment",
    ]
    report = run_fix(ctx)
    path = tmp_path / "etc/netplan/50-cloud-init.yaml"
    assert path.read_text() == NETPLAN_FIXED
    assert path.stat().st_mode & 0o777 == 0o600
    assert len(report.rewrites) == 5
    assert report.success


def test_netplan_match_of_only_a_mac_is_left(tmp_path: Path, handle: VMCraft) -> None:
    text = f"""\
network:
  ethernets:
    uplink:
      match:
        macaddress: {OLD_MAC}
      set-name: eth0
      dhcp4: true
    other: {{match: {{macaddress: "{OLD_MAC2}"}}, dhcp4: true}}
"""
    put(tmp_path, "etc/netplan/01-net.yaml", text)
    found = NetworkRepair().find(context(handle, writable=False))
    assert summary(found) == [
        (
            "/etc/netplan/01-net.yaml",
            "not rewritten: only block mappings are edited",
            False,
        ),
        (
            "/etc/netplan/01-net.yaml",
            "the MAC address is all that picks the NIC: without it the stanza would match "
            "every NIC; add match: name: (and --nic NAME=MAC)",
            False,
        ),
    ]
    assert run_fix(context(handle)).rewrites == []
    assert (tmp_path / "etc/netplan/01-net.yaml").read_text() == text


# -- NetworkManager --------------------------------------------------------------

NM_KEYFILE = f"""\
[connection]
id=Wired connection 1
uuid=5fb06bd0-0bb0-7ffb-45f1-d6edd65f3e03
type=ethernet
interface-name=ens192

[ethernet]
mac-address={OLD_MAC.upper()}
cloned-mac-address={OLD_MAC}

[ipv4]
method=auto
"""


def test_nm_mac_address_becomes_a_comment(tmp_path: Path, handle: VMCraft) -> None:
    rel = "etc/NetworkManager/system-connections/Wired connection 1.nmconnection"
    put(tmp_path, rel, NM_KEYFILE, mode=0o600)
    report = run_fix(context(handle))
    assert (tmp_path / rel).read_text() == NM_KEYFILE.replace(
        f"mac-address={OLD_MAC.upper()}\n",
        f"#mac-address={OLD_MAC.upper()}  # vmcraft: the NIC is picked by interface-name=\n",
    ).replace(
        f"cloned-mac-address={OLD_MAC}\n",
        f"#cloned-mac-address={OLD_MAC}  # vmcraft: KVM gives the NIC its own MAC address\n",
    )
    assert (tmp_path / rel).stat().st_mode & 0o777 == 0o600, "NetworkManager wants 0600"
    assert report.success


def test_nm_profile_without_a_name_is_left(tmp_path: Path, handle: VMCraft) -> None:
    text = NM_KEYFILE.replace("interface-name=ens192\n", "").replace(
        f"cloned-mac-address={OLD_MAC}\n", "cloned-mac-address=preserve\n"
    )
    rel = "etc/NetworkManager/system-connections/eth.nmconnection"
    put(tmp_path, rel, text, mode=0o600)
    (found,) = NetworkRepair().find(context(handle, writable=False))
    assert not found.fixable
    assert "no interface-name= in [connection]" in found.detail
    assert run_fix(context(handle)).rewrites == []
    assert (tmp_path / rel).read_text() == text


# -- networkd --------------------------------------------------------------------

NETWORKD = f"""\
[Match]
Name=eth0
MACAddress={OLD_MAC}

[Link]
MACAddress={OLD_MAC}

[Network]
DHCP=yes
"""


def test_networkd_match_and_link_become_comments(tmp_path: Path, handle: VMCraft) -> None:
    put(tmp_path, "etc/systemd/network/20-wired.network", NETWORKD)
    run_fix(context(handle))
    assert (
        (tmp_path / "etc/systemd/network/20-wired.network").read_text()
        == f"""\
[Match]
Name=eth0
#MACAddress={OLD_MAC}  # vmcraft: the NIC is matched by its name

[Link]
#MACAddress={OLD_MAC}  # vmcraft: KVM gives the NIC its own MAC address

[Network]
DHCP=yes
"""
    )


def test_networkd_match_of_only_a_mac_is_left(tmp_path: Path, handle: VMCraft) -> None:
    text = f"[Match]\nMACAddress={OLD_MAC}\nType=ether\n\n[Network]\nDHCP=yes\n"
    put(tmp_path, "etc/systemd/network/20-wired.network", text)
    (found,) = NetworkRepair().find(context(handle, writable=False))
    assert not found.fixable
    assert found.detail == (
        "[Match] has nothing else that picks one NIC (Type): without the MAC address it "
        "would match every NIC; add Name=NAME (and --nic NAME=MAC)"
    )
    assert run_fix(context(handle)).rewrites == []


def test_a_link_file_naming_an_old_mac_is_removed(tmp_path: Path, handle: VMCraft) -> None:
    put(
        tmp_path,
        "etc/systemd/network/00-lan0.link",
        f"[Match]\nMACAddress={OLD_MAC}\n\n[Link]\nName=lan0\n",
    )
    put(
        tmp_path,
        "etc/systemd/network/01-wan.link",
        f"[Match]\nMACAddress={OLD_MAC2}\nDriver=vmxnet3\n\n[Link]\nName=wan\n",
    )
    found = NetworkRepair().find(context(handle, writable=False))
    assert summary(found) == [
        (
            "/etc/systemd/network/00-lan0.link",
            "the file is removed: without the MAC address its [Match] would be empty and "
            "apply to every NIC",
            True,
        ),
        (
            "/etc/systemd/network/01-wan.link",
            "[Match] has nothing else that picks one NIC (Driver): without the MAC address it "
            "would match every NIC; remove the file or match its OriginalName= "
            "(and --nic NAME=MAC)",
            False,
        ),
    ]
    report = run_fix(context(handle))
    assert report.removals == ["/etc/systemd/network/00-lan0.link"]
    assert not (tmp_path / "etc/systemd/network/00-lan0.link").exists()
    assert (tmp_path / "etc/systemd/network/01-wan.link").exists()


# -- the pins --------------------------------------------------------------------

LINK_TEXT = f"""\
# vmcraft fix-boot --nic ens16={NEW_MAC}: the NIC with this MAC address keeps the name
# the guest's network configuration gives it.
[Match]
MACAddress={NEW_MAC}

[Link]
Name=ens16
"""


def test_a_pin_is_a_link_file_where_udev_reads_them(tmp_path: Path, handle: VMCraft) -> None:
    systemd_udev(tmp_path)
    ctx = context(handle)
    assert pin_method(ctx) is PinMethod.LINK
    (found,) = NetworkRepair((PIN,)).find(ctx)
    assert found == Finding(
        Step.NETWORK,
        f"--nic ens16={NEW_MAC}: the NIC with MAC address {NEW_MAC} is to be named ens16",
        "/etc/systemd/network/10-vmcraft-ens16.link",
        "a systemd .link file names it",
    )
    report = run_fix(ctx, (PIN,))
    assert (tmp_path / "etc/systemd/network/10-vmcraft-ens16.link").read_text() == LINK_TEXT
    assert report.rewrites == [
        Rewrite("/etc/systemd/network/10-vmcraft-ens16.link", "(none)", LINK_TEXT)
    ]
    assert [(c.name, c.ok) for c in report.checks] == [
        (f"--nic ens16={NEW_MAC}: /etc/systemd/network/10-vmcraft-ens16.link", True)
    ]
    assert report.success


def test_a_masked_link_rule_means_a_udev_rule(tmp_path: Path, handle: VMCraft) -> None:
    systemd_udev(tmp_path)
    (tmp_path / "etc/udev/rules.d").mkdir(parents=True)
    (tmp_path / "etc/udev/rules.d/80-net-setup-link.rules").symlink_to("/dev/null")
    ctx = context(handle)
    assert pin_method(ctx) is PinMethod.UDEV_RULE
    pins = (PIN, NicPin("ens17", "52:54:00:12:34:57"))
    report = run_fix(ctx, pins)
    assert (tmp_path / UDEV_PIN_RULES.lstrip("/")).read_text() == (
        "# vmcraft fix-boot --nic: each NIC keeps the name the guest's network\n"
        "# configuration gives it.\n"
        'SUBSYSTEM=="net", ACTION=="add", DRIVERS=="?*", ATTR{address}=="52:54:00:12:34:56", '
        'ATTR{type}=="1", NAME="ens16"\n'
        'SUBSYSTEM=="net", ACTION=="add", DRIVERS=="?*", ATTR{address}=="52:54:00:12:34:57", '
        'ATTR{type}=="1", NAME="ens17"\n'
    )
    assert not (tmp_path / "etc/systemd/network").exists()
    assert report.success


def test_an_old_udev_gets_a_udev_rule(tmp_path: Path, handle: VMCraft) -> None:
    put(tmp_path, "sbin/udevd", "")
    ctx = context(handle)
    assert pin_method(ctx) is PinMethod.UDEV_RULE
    run_fix(ctx, (PIN,))
    assert (tmp_path / UDEV_PIN_RULES.lstrip("/")).is_file()


def test_without_udev_a_pin_is_reported_not_written(tmp_path: Path, handle: VMCraft) -> None:
    ctx = context(handle)
    assert pin_method(ctx) is PinMethod.NONE
    (found,) = NetworkRepair((PIN,)).find(ctx)
    assert not found.fixable
    assert found.detail == "not written: this guest has no udev to rename its NICs"
    before = tree_hashes(tmp_path)
    assert run_fix(ctx, (PIN,)).rewrites == []
    assert tree_hashes(tmp_path) == before


def test_a_match_for_the_pinned_mac_stays(tmp_path: Path, handle: VMCraft) -> None:
    """The MAC address kept across the move (virt-v2v keeps it): its matches still hold."""
    systemd_udev(tmp_path)
    text = f"[Match]\nMACAddress={NEW_MAC.upper()}\n\n[Network]\nDHCP=yes\n"
    put(tmp_path, "etc/systemd/network/20-wired.network", text)
    found = NetworkRepair((PIN,)).find(context(handle, writable=False))
    assert [f.path for f in found] == [pin_link_path(PIN)]


# -- every format at once: rollback, a second run, check, the dry run --------------


def vmware_guest(root: Path) -> Path:
    systemd_udev(root)
    put(root, "etc/udev/rules.d/70-persistent-net.rules", PERSISTENT_NET)
    put(root, "etc/sysconfig/network-scripts/ifcfg-eth0", RHEL_IFCFG, mode=0o644)
    put(root, "etc/netplan/50-cloud-init.yaml", NETPLAN, mode=0o600)
    put(root, "etc/NetworkManager/system-connections/w.nmconnection", NM_KEYFILE, mode=0o600)
    put(root, "etc/systemd/network/20-wired.network", NETWORKD)
    put(
        root,
        "etc/systemd/network/00-lan0.link",
        f"[Match]\nMACAddress={OLD_MAC}\n\n[Link]\nName=lan0\n",
    )
    # Not UTF-8: the odd byte is written back as it was.
    put(
        root,
        "etc/sysconfig/network-scripts/ifcfg-eth1",
        b"# caf\xe9\nDEVICE=eth1\nHWADDR=00:0c:29:ab:cd:ef\n",
    )
    return root


def test_rollback_restores_every_file_byte_for_byte(tmp_path: Path, handle: VMCraft) -> None:
    vmware_guest(tmp_path)
    before = tree_hashes(tmp_path)
    ctx = context(handle)
    report = run_fix(ctx, (PIN,))
    assert report.success
    assert (tmp_path / "etc/sysconfig/network-scripts/ifcfg-eth1").read_bytes() == (
        b"# caf\xe9\nDEVICE=eth1\n"
        b"#HWADDR=00:0c:29:ab:cd:ef  # vmcraft: the NIC is picked by its name\n"
    )
    journal = ctx.journal
    assert journal is not None
    assert {e.step for e in journal.entries} == {"network"}
    journal.rollback()
    assert tree_hashes(tmp_path) == before
    assert not (tmp_path / "var").exists(), "the journal's directories are gone too"
    assert not (tmp_path / "etc/systemd/network/10-vmcraft-ens16.link").exists()


def test_rollback_removes_the_directory_a_pin_made(tmp_path: Path, handle: VMCraft) -> None:
    systemd_udev(tmp_path)
    before = tree_hashes(tmp_path)
    ctx = context(handle)
    run_fix(ctx, (PIN,))
    assert (tmp_path / "etc/systemd/network").is_dir()
    assert ctx.journal is not None
    ctx.journal.rollback()
    assert tree_hashes(tmp_path) == before
    assert not (tmp_path / "etc").exists()


def test_a_second_run_changes_nothing(tmp_path: Path, handle: VMCraft) -> None:
    vmware_guest(tmp_path)
    ctx = context(handle)
    run_fix(ctx, (PIN,))
    repair = NetworkRepair((PIN,))
    assert [f for f in repair.find(ctx) if f.fixable] == []
    after = tree_hashes(tmp_path)
    again = context(handle)
    report = run_fix(again, (PIN,))
    assert report.rewrites == []
    assert report.removals == []
    assert again.journal is not None
    assert again.journal.entries == []
    assert tree_hashes(tmp_path) == after
    # Without the pin too: fix-boot's own pin file is not the guest's MAC pinning.
    assert [f for f in NetworkRepair().find(ctx) if f.fixable] == []


def test_find_is_read_only(tmp_path: Path, handle: VMCraft) -> None:
    vmware_guest(tmp_path)
    before = tree_hashes(tmp_path)
    ctx = context(handle, writable=False)
    repair = NetworkRepair((PIN,))
    found = repair.find(ctx)
    assert len(found) == 13
    assert repair.plan(ctx, found) == []
    with pytest.raises(VMCraftError, match="network"):
        repair.fix(ctx, found, StepReport())
    assert tree_hashes(tmp_path) == before


def test_the_dry_run_and_check_report_the_pinning(tmp_path: Path) -> None:
    tree = vmware_guest(debian12(tmp_path))
    before = tree_hashes(tree)
    skip = frozenset({Step.NAMES, Step.DRIVERS, Step.INITRAMFS, Step.BOOTLOADER, Step.UEFI})
    with VMCraft.from_root(tree) as g:
        report = BootFixer(g, FixBootOptions(dry_run=True, skip=skip, nics=(PIN,))).run()
    assert report.success
    paths = [f.path for f in report.findings if f.step is Step.NETWORK]
    assert "/etc/udev/rules.d/70-persistent-net.rules" in paths
    assert paths[-1] == "/etc/systemd/network/10-vmcraft-ens16.link"
    assert report.plan == []
    assert report.steps == {}
    assert tree_hashes(tree) == before
    # --skip network: not looked at.
    with VMCraft.from_root(tree) as g:
        skipped = BootFixer(g, FixBootOptions(dry_run=True, skip=skip | {Step.NETWORK})).run()
    assert [f for f in skipped.findings if f.step is Step.NETWORK] == []
