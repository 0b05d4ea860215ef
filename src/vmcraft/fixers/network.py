"""fix-boot's network step: no configuration tied to a MAC address the NIC lost.

A VM moved to KVM gets a new NIC (virtio-net) with, usually, a new MAC
address. Whatever the guest matched by the old address then matches
nothing: RHEL's ifup refuses an ifcfg whose ``HWADDR=`` differs, a
NetworkManager profile or a networkd ``.network`` with a MAC match applies
to no device, and udev's persistent-net generator (Debian <= 8, RHEL 6)
keeps ``eth0`` for the NIC that is gone and calls the new one ``eth1``.
This step takes those MAC matches away where that is safe, and with
``--nic OLDNAME=MAC`` names the NIC that will have ``MAC`` on KVM
``OLDNAME``, so the guest's own configuration (ifupdown, netplan,
NetworkManager, ifcfg, wicked, networkd), which names that NIC, applies.

What is a MAC pin, and what becomes of it (each line is commented out,
``#LINE  # vmcraft: ...``, so the original stays readable; the journal
keeps every file for ``--undo``):

- udev rules in ``/etc/udev/rules.d/*.rules`` that set ``NAME=`` for an
  ``ATTR{address}==``: commented out; a ``70-persistent-net.rules`` left
  with no rule at all is removed instead (udev's generator writes it anew
  on guests that have one, as virt-sysprep's ``udev-persistent-net`` does);
- ifcfg ``HWADDR=`` (RHEL's ``network-scripts``, SUSE's ``network``):
  commented out where ``DEVICE=`` still names the NIC (SUSE's files are
  named after it: always); ``MACADDR=`` and SUSE's ``LLADDR=`` set the old
  address on the new NIC and are commented out always;
- netplan ``macaddress:`` under ``match:``: commented out where ``name:``
  stays in the match; a match that is only the MAC address, with
  ``set-name:`` equal to the stanza's id, loses ``match:`` and
  ``set-name:`` too (netplan then takes the id as the interface's name);
  ``macaddress:`` beside ``match:`` sets the address, and is commented out;
- NetworkManager keyfiles' ``mac-address=`` in ``[ethernet]``: commented
  out where ``interface-name=`` names the device; ``cloned-mac-address=``
  with an address (not ``preserve``, ``random``...) always;
- networkd ``.network`` ``[Match] MACAddress=`` / ``PermanentMACAddress=``:
  commented out where ``[Match] Name=`` stays; ``[Link] MACAddress=`` (it
  sets the address) always;
- networkd ``.link`` files: one whose ``[Match]`` is only the MAC address
  is removed (its ``[Match]`` left empty would match, and rename, every
  NIC); ``[Link] MACAddress=`` is commented out.

Where the MAC address is all that ties a configuration to one NIC (an
ifcfg without ``DEVICE=``, a profile without ``interface-name=``, a
``[Match]`` with nothing else but ``Type=`` or ``Driver=``), taking it away
would make the configuration apply to every NIC: it stays as it is and is
reported (``fixable: false``) for a person to give it a name. A match for a
MAC address a ``--nic`` pin names is left alone: the NIC will have it on
KVM (a kept address, as virt-v2v keeps it), and the pin keeps its name.
fix-boot's own pins (``10-vmcraft-*.link``, ``70-vmcraft-net.rules``) are
never taken for the guest's.

The pins: ``/etc/systemd/network/10-vmcraft-NAME.link`` (``[Match]
MACAddress=``, ``[Link] Name=``) where the guest's udev applies ``.link``
files (systemd-udevd with ``80-net-setup-link.rules`` not masked);
otherwise one udev rule per pin in ``/etc/udev/rules.d/70-vmcraft-net.rules``
(``DRIVERS=="?*"`` leaves out VLANs and bridges, which share the NIC's
address; numbered before the persistent-net generator, which then leaves
the NIC alone). A guest with no udev at all cannot have its NICs renamed:
each pin is then reported, not written.

The step runs before the initramfs step: Debian's initramfs-tools copies
``/etc/systemd/network/*.link`` and every ``/etc/udev/rules.d/*.rules``
into the image, whose udev names the NICs first; an image holding the old
rules would rename the NIC before the root's udev sees the new ones. So a
change here makes the initramfs step rebuild the images
(``InitramfsRepair.COPIED_FROM``). dracut, run with ``--no-hostonly``,
copies no ``/etc`` ``.link`` file: there the root's udev renames the NIC
when it starts, before networking does.
"""

from __future__ import annotations

import enum
import posixpath
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from vmcraft.errors import GuestFileError, NicPinError
from vmcraft.fixers import lines as textlines
from vmcraft.fixers.step import Finding, RepairContext, Step, findings_as_checks
from vmcraft.report import Check, Rewrite, StepReport

__all__ = [
    "LINK_DIR",
    "UDEV_PIN_RULES",
    "NetworkRepair",
    "NicPin",
    "PinMethod",
    "check_pins",
    "pin_link_path",
]

UDEV_RULES_D = "/etc/udev/rules.d"
LINK_DIR = "/etc/systemd/network"
UDEV_PIN_RULES = f"{UDEV_RULES_D}/70-vmcraft-net.rules"
PERSISTENT_NET = "70-persistent-net.rules"
IFCFG_DIRS = ("/etc/sysconfig/network-scripts", "/etc/sysconfig/network")
SUSE_IFCFG_DIR = "/etc/sysconfig/network"
NETPLAN_DIR = "/etc/netplan"
NM_DIR = "/etc/NetworkManager/system-connections"

_SYSTEMD_UDEVD = ("/lib/systemd/systemd-udevd", "/usr/lib/systemd/systemd-udevd")
_OLD_UDEVD = ("/sbin/udevd", "/usr/sbin/udevd", "/lib/udev/udevd", "/usr/lib/udev/udevd")
_SETUP_LINK_RULES = ("80-net-setup-link.rules", "80-net-name-slot.rules")
_RULE_DIRS = ("/lib/udev/rules.d", "/usr/lib/udev/rules.d")
_BACKUP_SUFFIXES = ("~", ".bak", ".orig", ".old", ".rpmnew", ".rpmsave", ".dpkg-old", ".swp")

# -- pins -----------------------------------------------------------------------

_MAC = re.compile(r"^[0-9a-f]{2}([:-])[0-9a-f]{2}(\1[0-9a-f]{2}){4}$")
_IFNAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}$")
_RESERVED_NAMES = frozenset({"lo", "all", "default"})
"""``lo`` is taken; ``all`` and ``default`` are /proc/sys/net directories (udev refuses them)."""


def _normal_mac(text: str) -> str | None:
    """``text`` as ``aa:bb:cc:dd:ee:ff``, or None when it is no unicast MAC address."""
    mac = text.strip().lower()
    if not _MAC.match(mac):
        return None
    mac = mac.replace("-", ":")
    first = int(mac[:2], 16)
    if first & 1 or mac == "00:00:00:00:00:00":
        return None  # a group address, or none: no NIC has it
    return mac


@dataclass(frozen=True)
class NicPin:
    """``--nic NAME=MAC``: the NIC that has ``mac`` on KVM is to be called ``name``.

    Checked when made, so a bad pin stops the run before the image is
    opened; ``mac`` is kept in udev's form (lower case, colons).
    """

    name: str
    mac: str

    def __post_init__(self) -> None:
        if not _IFNAME.match(self.name) or self.name in _RESERVED_NAMES or self.name.isdigit():
            raise NicPinError(
                f"--nic {self.name}={self.mac}: {self.name!r} is not an interface name "
                "(1-15 letters, digits, '_', '.', '-'; not lo, all, default or a number)"
            )
        mac = _normal_mac(self.mac)
        if mac is None:
            raise NicPinError(
                f"--nic {self.name}={self.mac}: {self.mac!r} is not a NIC's MAC address "
                "(six hex bytes, aa:bb:cc:dd:ee:ff, not a group address)"
            )
        object.__setattr__(self, "mac", mac)

    @classmethod
    def parse(cls, text: str) -> NicPin:
        """``NAME=MAC`` (as ``--nic`` takes it) -> a pin; NicPinError when it is not one."""
        name, sep, mac = text.partition("=")
        if not sep:
            raise NicPinError(f"--nic {text}: expected NAME=MAC (ens16=52:54:00:12:34:56)")
        return cls(name.strip(), mac.strip())

    def __str__(self) -> str:
        return f"{self.name}={self.mac}"


def check_pins(pins: Iterable[NicPin]) -> tuple[NicPin, ...]:
    """The pins, each name and each MAC address given once; NicPinError otherwise."""
    out = tuple(pins)
    for attr in ("name", "mac"):
        seen: dict[str, NicPin] = {}
        for pin in out:
            key = getattr(pin, attr)
            if key in seen and seen[key] != pin:
                raise NicPinError(f"--nic {seen[key]} and --nic {pin}: the same {attr} twice")
            seen[key] = pin
    return tuple(dict.fromkeys(out))


class PinMethod(enum.Enum):
    """How this guest's udev is told a NIC's name."""

    LINK = "a systemd .link file"
    UDEV_RULE = "a udev rule"
    NONE = "nothing: the guest has no udev"


def pin_link_path(pin: NicPin) -> str:
    return f"{LINK_DIR}/10-vmcraft-{pin.name}.link"


def _link_text(pin: NicPin) -> str:
    return (
        f"# vmcraft fix-boot --nic {pin}: the NIC with this MAC address keeps the name\n"
        "# the guest's network configuration gives it.\n"
        "[Match]\n"
        f"MACAddress={pin.mac}\n"
        "\n"
        "[Link]\n"
        f"Name={pin.name}\n"
    )


def _udev_rule(pin: NicPin) -> str:
    return (
        'SUBSYSTEM=="net", ACTION=="add", DRIVERS=="?*", '
        f'ATTR{{address}}=="{pin.mac}", ATTR{{type}}=="1", NAME="{pin.name}"'
    )


def _udev_rules_text(pins: Sequence[NicPin]) -> str:
    lines = [
        "# vmcraft fix-boot --nic: each NIC keeps the name the guest's network",
        "# configuration gives it.",
        *(_udev_rule(pin) for pin in pins),
    ]
    return "\n".join(lines) + "\n"


def pin_method(ctx: RepairContext) -> PinMethod:
    """.link files where systemd-udevd applies them (80-net-setup-link.rules, not masked)."""
    g = ctx.g

    def is_file(path: str) -> bool:
        try:
            return g.is_file(path, followsymlinks=True)
        except GuestFileError:
            return False

    if any(is_file(p) for p in _SYSTEMD_UDEVD):
        masked = False
        for name in _SETUP_LINK_RULES:
            local = f"{UDEV_RULES_D}/{name}"
            # A rules file in /etc replaces the one in /lib: a link to /dev/null masks it.
            if ctx.text(local) is not None:
                if "net_setup_link" in (ctx.text(local) or ""):
                    return PinMethod.LINK
                masked = True
            elif g.is_link(local):
                masked = True
        if not masked and any(
            "net_setup_link" in (ctx.text(f"{d}/{name}") or "")
            for d in _RULE_DIRS
            for name in _SETUP_LINK_RULES
        ):
            return PinMethod.LINK
        return PinMethod.UDEV_RULE
    if any(is_file(p) for p in _OLD_UDEVD):
        return PinMethod.UDEV_RULE
    return PinMethod.NONE


# -- the guest's files -----------------------------------------------------------


@dataclass
class _File:
    """One guest file as read, and what is to become of it."""

    path: str
    lines: list[str]
    strict: bool
    """Decoded as UTF-8 without loss (otherwise surrogate escapes keep the odd bytes)."""
    comment_out: dict[int, str] = field(default_factory=dict)
    """Line -> the note after ``# vmcraft:``."""
    remove: bool = False
    findings: list[Finding] = field(default_factory=list)

    def finding(self, what: str, detail: str, *, fixable: bool = True) -> None:
        self.findings.append(Finding(Step.NETWORK, what, self.path, detail, fixable=fixable))


COMMENTED = "becomes a comment"
STALE = "a MAC address a NIC on KVM does not have"


class _Pins:
    """The MAC addresses the run's ``--nic`` pins name: matches for them stay."""

    def __init__(self, pins: Sequence[NicPin]) -> None:
        self.by_mac = {p.mac: p for p in pins}

    def kept(self, macs: Iterable[str], name: str | None = None) -> bool:
        """Does a match for ``macs`` still pick a NIC on KVM (naming it ``name``, if given)?"""
        for mac in macs:
            pin = self.by_mac.get(_normal_mac(mac) or mac.lower())
            if pin is not None and (name is None or name == pin.name):
                return True
        return False


# -- udev rules -----------------------------------------------------------------

_UDEV_ADDRESS = re.compile(r'ATTRS?\{address\}=="([^"]*)"')
_UDEV_NAME = re.compile(r'(?<![A-Z_{])NAME:?="([^"]*)"')


def _udev_rules(f: _File, pins: _Pins) -> None:
    stale = []
    active = 0
    for i, line in enumerate(f.lines):
        if not textlines.active(line):
            continue
        active += 1
        address, name = _UDEV_ADDRESS.search(line), _UDEV_NAME.search(line)
        if address is None or name is None or pins.kept([address.group(1)], name.group(1)):
            continue
        stale.append((i, address.group(1), name.group(1)))
    whole = posixpath.basename(f.path) == PERSISTENT_NET and bool(stale) and len(stale) == active
    for i, mac, new_name in stale:
        what = f"udev rule names the NIC with MAC address {mac} {new_name}: {STALE}"
        if whole:
            f.finding(what, "the file is removed: it holds nothing else (udev writes it anew)")
        else:
            f.comment_out[i] = "a MAC address the NIC does not have on KVM"
            f.finding(what, COMMENTED)
    f.remove = whole


# -- ifcfg ----------------------------------------------------------------------

_IFCFG = re.compile(r"""^\s*(?:export\s+)?([A-Z_][A-Z0-9_]*)=(["']?)([^"'#\s]*)\2""")


def _ifcfg(f: _File, pins: _Pins) -> None:
    values: dict[str, list[tuple[int, str]]] = {}
    for i, line in enumerate(f.lines):
        m = _IFCFG.match(line)
        if m:
            values.setdefault(m.group(1), []).append((i, m.group(3)))
    suse = posixpath.dirname(f.path) == SUSE_IFCFG_DIR
    named = suse or any(v for _, v in values.get("DEVICE", []))
    for i, mac in values.get("HWADDR", []):
        if not mac or pins.kept([mac]):
            continue
        what = f"ifcfg HWADDR={mac} picks the NIC by {STALE}"
        if named:
            f.comment_out[i] = "the NIC is picked by its name"
            f.finding(what, f"{COMMENTED}: the NIC is picked by its name")
        else:
            f.finding(
                what,
                "no DEVICE= names the NIC: without HWADDR= the file would apply to any NIC; "
                "add DEVICE=NAME (and --nic NAME=MAC)",
                fixable=False,
            )
    setters = ("MACADDR", "LLADDR") if suse else ("MACADDR",)
    for key in setters:
        for i, mac in values.get(key, []):
            if mac and not pins.kept([mac]):
                f.comment_out[i] = "KVM gives the NIC its own MAC address"
                f.finding(f"ifcfg {key}={mac} sets the NIC's old MAC address", COMMENTED)


# -- netplan --------------------------------------------------------------------

_YAML_KEY = re.compile(r"""^(\s*)(?:-\s+)?["']?([A-Za-z0-9_.-]+)["']?\s*:(.*)$""")
_YAML_MAC = re.compile(r"""^\s*(["']?)([0-9A-Fa-f:-]+)\1\s*(#.*)?$""")


@dataclass(frozen=True)
class _YamlLine:
    index: int
    indent: int
    key: str
    value: str


def _yaml_lines(f: _File) -> list[_YamlLine]:
    out = []
    for i, line in enumerate(f.lines):
        if not textlines.active(line):
            continue
        m = _YAML_KEY.match(line)
        if m:
            out.append(_YamlLine(i, len(m.group(1)), m.group(2), m.group(3).strip()))
    return out


def _parent(lines: list[_YamlLine], at: int) -> int | None:
    """The position in ``lines`` of the key that holds ``lines[at]``."""
    for j in range(at - 1, -1, -1):
        if lines[j].indent < lines[at].indent:
            return j
    return None


def _children(lines: list[_YamlLine], at: int) -> list[_YamlLine]:
    """The keys directly under ``lines[at]``."""
    out: list[_YamlLine] = []
    child_indent: int | None = None
    for line in lines[at + 1 :]:
        if line.indent <= lines[at].indent:
            break
        child_indent = line.indent if child_indent is None else child_indent
        if line.indent == child_indent:
            out.append(line)
    return out


def _netplan(f: _File, pins: _Pins) -> None:
    if any("macaddress" in line and "{" in line for line in f.lines if textlines.active(line)):
        f.finding(
            "netplan names a MAC address in a flow mapping ({...})",
            "not rewritten: only block mappings are edited",
            fixable=False,
        )
    lines = _yaml_lines(f)
    for at, line in enumerate(lines):
        value = _YAML_MAC.match(line.value)
        if line.key != "macaddress" or value is None or pins.kept([value.group(2)]):
            continue
        mac = value.group(2)
        up = _parent(lines, at)
        if up is None or lines[up].key != "match":
            f.comment_out[line.index] = "KVM gives the NIC its own MAC address"
            f.finding(f"netplan macaddress: {mac} sets the NIC's old MAC address", COMMENTED)
            continue
        what = f"netplan match: macaddress: {mac} picks the NIC by {STALE}"
        match_keys = {c.key for c in _children(lines, up)}
        stanza = _parent(lines, up)
        siblings = _children(lines, stanza) if stanza is not None else []
        set_name = next((s for s in siblings if s.key == "set-name"), None)
        if "name" in match_keys:
            f.comment_out[line.index] = "the NIC is matched by its name"
            f.finding(what, f"{COMMENTED}: match: name: picks the NIC")
        elif (
            match_keys == {"macaddress"}
            and stanza is not None
            and set_name is not None
            and set_name.value.strip("'\"") == lines[stanza].key
            and len(siblings) > 2
        ):
            note = f"without a match netplan configures the interface {lines[stanza].key}"
            for gone in (lines[up], line, set_name):
                f.comment_out[gone.index] = note
            f.finding(what, f"match: and set-name: become comments: {note}")
        else:
            f.finding(
                what,
                "the MAC address is all that picks the NIC: without it the stanza would "
                "match every NIC; add match: name: (and --nic NAME=MAC)",
                fixable=False,
            )


# -- keyfiles (NetworkManager) and systemd units (networkd) ---------------------

_INI_SECTION = re.compile(r"^\s*\[([^\]]+)\]\s*$")
_INI_KEY = re.compile(r"^\s*([A-Za-z0-9_.-]+)\s*=\s*(.*?)\s*$")


@dataclass(frozen=True)
class _IniLine:
    index: int
    section: str
    key: str
    value: str


def _ini(f: _File, comments: str) -> list[_IniLine]:
    out = []
    section = ""
    for i, line in enumerate(f.lines):
        if not textlines.active(line, comments):
            continue
        m = _INI_SECTION.match(line)
        if m:
            section = m.group(1).strip()
            continue
        kv = _INI_KEY.match(line)
        if kv:
            out.append(_IniLine(i, section, kv.group(1), kv.group(2)))
    return out


_NM_ETHERNET = ("ethernet", "802-3-ethernet")
_NM_SPECIAL = frozenset({"preserve", "permanent", "random", "stable", "stable-ssid"})


def _nm_keyfile(f: _File, pins: _Pins) -> None:
    keys = _ini(f, "#")
    named = any(k.section == "connection" and k.key == "interface-name" and k.value for k in keys)
    for k in keys:
        if k.section not in _NM_ETHERNET or not k.value or pins.kept([k.value]):
            continue
        if k.key == "mac-address":
            what = f"NetworkManager mac-address={k.value} picks the NIC by {STALE}"
            if named:
                f.comment_out[k.index] = "the NIC is picked by interface-name="
                f.finding(what, f"{COMMENTED}: interface-name= picks the NIC")
            else:
                f.finding(
                    what,
                    "no interface-name= in [connection]: without mac-address= the profile "
                    "would apply to any ethernet NIC; add interface-name=NAME "
                    "(and --nic NAME=MAC)",
                    fixable=False,
                )
        elif k.key == "cloned-mac-address" and k.value not in _NM_SPECIAL:
            f.comment_out[k.index] = "KVM gives the NIC its own MAC address"
            f.finding(f"NetworkManager cloned-mac-address={k.value} sets an old one", COMMENTED)


_MATCH_MACS = ("MACAddress", "PermanentMACAddress")


def _networkd(f: _File, pins: _Pins) -> None:
    keys = _ini(f, "#;")
    link_file = f.path.endswith(".link")
    match = [k for k in keys if k.section == "Match" and k.value]
    others = {k.key for k in match if k.key not in _MATCH_MACS}
    link_name = next((k.value for k in keys if k.section == "Link" and k.key == "Name"), None)
    kind = ".link" if link_file else ".network"
    stale = [
        k
        for k in match
        if k.key in _MATCH_MACS and not pins.kept(k.value.split(), link_name if link_file else None)
    ]
    for k in stale:
        what = f"networkd {kind} [Match] {k.key}={k.value} picks the NIC by {STALE}"
        if link_file and not others:
            f.remove = True
            f.finding(
                what,
                "the file is removed: without the MAC address its [Match] would be empty "
                "and apply to every NIC",
            )
        elif not link_file and "Name" in others:
            f.comment_out[k.index] = "the NIC is matched by its name"
            f.finding(what, f"{COMMENTED}: [Match] Name= picks the NIC")
        else:
            rest = ", ".join(sorted(others)) or "nothing"
            hint = "remove the file or match its OriginalName=" if link_file else "add Name=NAME"
            f.finding(
                what,
                f"[Match] has nothing else that picks one NIC ({rest}): without the MAC address "
                f"it would match every NIC; {hint} (and --nic NAME=MAC)",
                fixable=False,
            )
    if f.remove:
        return
    for k in keys:
        if k.section == "Link" and k.key == "MACAddress" and k.value and not pins.kept([k.value]):
            f.comment_out[k.index] = "KVM gives the NIC its own MAC address"
            f.finding(f"networkd {kind} [Link] MACAddress={k.value} sets an old one", COMMENTED)


# -- the survey -----------------------------------------------------------------


class _Survey:
    def __init__(self, ctx: RepairContext, pins: _Pins) -> None:
        self.g = ctx.g
        self.pins = pins
        self.seen: set[str] = set()
        self.files: list[_File] = []

    def listing(self, directory: str, keep: Callable[[str], bool]) -> list[str]:
        try:
            if not self.g.is_dir(directory, followsymlinks=True):
                return []
            names = self.g.ls(directory)
        except GuestFileError:
            return []
        return [
            posixpath.join(directory, n)
            for n in sorted(names)
            if keep(n) and not n.endswith(_BACKUP_SUFFIXES)
        ]

    def each(self, paths: Iterable[str], parse: Callable[[_File, _Pins], None]) -> None:
        for path in paths:
            try:
                if not self.g.is_file(path, followsymlinks=True):
                    continue
                real = self.g.realpath(path)
                if real in self.seen:
                    continue
                data = self.g.read_file(real)
            except GuestFileError:
                continue
            self.seen.add(real)
            text, strict = textlines.decode(data)
            f = _File(real, text.split("\n"), strict)
            parse(f, self.pins)
            self.files.append(f)


def _survey(ctx: RepairContext, pins: _Pins) -> list[_File]:
    s = _Survey(ctx, pins)
    own = posixpath.basename(UDEV_PIN_RULES)
    s.each(s.listing(UDEV_RULES_D, lambda n: n.endswith(".rules") and n != own), _udev_rules)
    for directory in IFCFG_DIRS:
        s.each(s.listing(directory, lambda n: n.startswith("ifcfg-") and n != "ifcfg-lo"), _ifcfg)
    s.each(s.listing(NETPLAN_DIR, lambda n: n.endswith(".yaml")), _netplan)
    s.each(s.listing(NM_DIR, lambda n: not n.startswith(".")), _nm_keyfile)
    s.each(
        s.listing(
            LINK_DIR,
            lambda n: (
                n.endswith(".network") or (n.endswith(".link") and not n.startswith("10-vmcraft-"))
            ),
        ),
        _networkd,
    )
    return s.files


def _new_text(f: _File) -> str | None:
    if not f.comment_out:
        return None
    lines = list(f.lines)
    for i, note in f.comment_out.items():
        lines[i] = textlines.commented(lines[i], note)
    return "\n".join(lines)


# -- the step -------------------------------------------------------------------


@dataclass(frozen=True)
class _PinFile:
    """A file the pins want, and its text."""

    path: str
    text: str
    pins: tuple[NicPin, ...]


class NetworkRepair:
    """MAC pinning taken away; ``--nic`` pins written (see the module docstring)."""

    step = Step.NETWORK

    def __init__(self, pins: Sequence[NicPin] = ()) -> None:
        self.pins = check_pins(pins)

    def _wanted(self, method: PinMethod) -> list[_PinFile]:
        if not self.pins or method is PinMethod.NONE:
            return []
        if method is PinMethod.UDEV_RULE:
            return [_PinFile(UDEV_PIN_RULES, _udev_rules_text(self.pins), self.pins)]
        return [_PinFile(pin_link_path(pin), _link_text(pin), (pin,)) for pin in self.pins]

    def _pin_findings(self, ctx: RepairContext) -> list[Finding]:
        method = pin_method(ctx) if self.pins else PinMethod.NONE
        if self.pins and method is PinMethod.NONE:
            return [
                Finding(
                    self.step,
                    f"--nic {pin}: the NIC with MAC address {pin.mac} is to be named {pin.name}",
                    None,
                    "not written: this guest has no udev to rename its NICs",
                    fixable=False,
                )
                for pin in self.pins
            ]
        return [
            Finding(
                self.step,
                f"--nic {pin}: the NIC with MAC address {pin.mac} is to be named {pin.name}",
                wanted.path,
                f"{method.value} names it",
            )
            for wanted in self._wanted(method)
            if ctx.text(wanted.path) != wanted.text
            for pin in wanted.pins
        ]

    def find(self, ctx: RepairContext) -> list[Finding]:
        pinning = [f for file in _survey(ctx, _Pins(self.pins)) for f in file.findings]
        return pinning + self._pin_findings(ctx)

    def plan(self, ctx: RepairContext, findings: list[Finding]) -> list[tuple[str, ...]]:
        """No guest command: the step only edits files (the findings say which)."""
        return []

    def fix(self, ctx: RepairContext, findings: list[Finding], report: StepReport) -> None:
        """Take the stale MAC matches away, then write the pins, each file once, journaled.

        The guest is surveyed again rather than trusting ``findings``, so what
        is written matches the files as they are now.
        """
        journal = ctx.require_journal(self.step)
        for f in _survey(ctx, _Pins(self.pins)):
            if f.remove:
                journal.remove(f.path, self.step.value)
                report.removals.append(f.path)
                continue
            new = _new_text(f)
            if new is None:
                continue
            rewrites = [
                Rewrite(
                    f.path,
                    textlines.shown(f.lines[i]),
                    textlines.shown(textlines.commented(f.lines[i], note)),
                )
                for i, note in sorted(f.comment_out.items())
            ]
            if f.strict:
                ctx.rewrite(report, self.step, f.path, new, rewrites)
            else:
                journal.write(f.path, new.encode(errors="surrogateescape"), self.step.value)
                report.rewrites.extend(rewrites)
        for wanted in self._wanted(pin_method(ctx)):
            before = ctx.text(wanted.path)
            if before == wanted.text:
                continue
            journal.make_dirs(posixpath.dirname(wanted.path), self.step.value)
            ctx.rewrite(
                report,
                self.step,
                wanted.path,
                wanted.text,
                [Rewrite(wanted.path, "(none)" if before is None else before, wanted.text)],
            )

    def check(self, ctx: RepairContext, started: float) -> list[Check]:
        """Whatever ``find`` still finds was not fixed; each pin's file holds it."""
        checks = [
            Check(f"--nic {pin}: {wanted.path}", ctx.text(wanted.path) == wanted.text)
            for wanted in self._wanted(pin_method(ctx))
            for pin in wanted.pins
        ]
        left = [c for c in findings_as_checks(self.find(ctx)) if not c.ok]
        return checks + left or [Check("nothing left to fix", True)]
