"""fix-boot's names step: disks named by what they are, not where they hang.

A VMware or Hyper-V guest names its disks after the controller they sat on
(``/dev/sda2``, ``/dev/disk/by-path/pci-...-scsi-0:0:0:0-part2``); on KVM's
virtio-blk the same disk is ``/dev/vda``, and systemd waits for
``dev-sda2.device`` until it gives up. This step rewrites every such name
to the filesystem's ``UUID=`` (``PARTUUID=`` where the device has no
filesystem UUID), in:

- ``/etc/fstab`` (first field) and ``/etc/crypttab`` (second field);
- ``root=`` and ``resume=`` on kernel command lines: ``GRUB_CMDLINE_LINUX``
  and ``GRUB_CMDLINE_LINUX_DEFAULT`` in ``/etc/default/grub`` and
  ``/etc/default/grub.d/*.cfg`` (sourced after it by Debian's grub-mkconfig),
  BootLoaderSpec entries' ``options`` lines, ``/etc/kernel/cmdline``, and
  ``kernelopts`` in ``grubenv`` (RHEL 8's entries say ``options $kernelopts``;
  the block keeps its 1024 bytes: the ``#`` padding pays for the longer name);
- ``RESUME=`` in ``/etc/initramfs-tools/conf.d/*`` (``resume`` on Debian).

GRUB's ``device.map`` (``/boot/grub/device.map``, ``/boot/grub2/device.map``)
is **removed** when any entry names a controller-dependent disk, rather than
remapped: since GRUB 2.00 neither grub-install nor grub-mkconfig needs it
(grub-probe finds the disks itself), and a remapped file would only name
``/dev/vda``, which is as controller-dependent as ``/dev/sda`` (virt-v2v
remaps it that way; a virtio-scsi disk is ``/dev/sda`` again). The journal
keeps it, so ``--undo`` brings it back.

``GRUB_DISABLE_LINUX_UUID=true`` makes GRUB 2.06/2.12's ``10_linux`` write
``root=<device>`` (the device it sees, a loop device in a conversion
chroot) unless ``GRUB_DISABLE_LINUX_PARTUUID=false`` is set too (it
defaults to true; then it writes ``root=PARTUUID=``, which is stable and is
left alone). ``GRUB_DISABLE_UUID=true`` implies both (unless they are set
explicitly) and also drops ``search --fs-uuid`` from grub.cfg, leaving
GRUB to find its disks by the names grub-probe saw. Each assignment that
takes effect is commented out, the line kept after the ``#``
(``#GRUB_DISABLE_LINUX_UUID=true  # vmcraft: ...``), so grub-mkconfig
writes ``root=UUID=``.

Name mapping (the guest's names -> libguestfs's, the keys of
``ctx.devices``): ``sdX``/``hdX``/``vdX``/``xvdX`` -> ``/dev/sdX``, same letters
and partition number (``DeviceTable.canonical``); ``nvmeCn1[pP]`` -> disk
number C (``nvme0n1p2`` -> ``/dev/sda2``), other namespaces cannot be told
apart; ``/dev/disk/by-path/*`` and ``/dev/disk/by-id/*`` (``-partN`` for
partition N) -> the only disk, when there is exactly one. by-id names of
device-mapper, LVM and MD devices (``dm-*``, ``lvm-*``, ``md-*``) are stable,
as are ``UUID=``, ``LABEL=``, ``PARTUUID=``, ``PARTLABEL=``, the other
``/dev/disk/by-*`` links and LVM's names (``/dev/mapper/vg-lv``,
``/dev/VG/LV``): none of them is touched.

What cannot be rewritten safely is a finding and stays as it is: a name
this guest has no device for, a by-path/by-id name on a guest with several
disks, two old disks that would become the same one (``/dev/sda1`` and
``/dev/nvme0n1p1`` in one guest), an fstab line whose type is not what the
device holds (the drives were attached in another order), a device with
neither UUID nor PARTUUID. A line with ``nofail`` or ``noauto`` (fstab,
crypttab) cannot stop the boot, so it is rewritten when it can be and
otherwise left without a finding (a CD-ROM at ``/dev/hdc``).

In crypttab a LUKS device is named by its header's ``UUID=``; a plain
dm-crypt device (``plain``, ``swap``, ``tmp``, or one that holds no
``crypto_*`` header) has no UUID of its own, whatever blkid sees on it now
(a ``swap`` entry re-creates the swap inside the mapping at every boot),
so it is named by ``PARTUUID=``.

Lines are edited in place: only the name changes, every other byte of the
file (comments, spacing, options, line endings, the bytes of a file that
is not UTF-8) stays. Each file is written once, through the journal.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from vmcraft.disks.names import DeviceTable, drive_letters
from vmcraft.errors import GuestFileError
from vmcraft.fixers import lines as textlines
from vmcraft.fixers.step import Device, Finding, RepairContext, Step, findings_as_checks
from vmcraft.report import Check, Rewrite, StepReport

__all__ = [
    "CANNOT_TELL",
    "NOT_THIS_GUEST",
    "NO_ROOM",
    "NO_STABLE_ID",
    "NamesRepair",
    "controller_dependent",
    "fixable",
]

CANNOT_TELL = "cannot tell which disk"
NOT_THIS_GUEST = "no such device in this guest"
NO_STABLE_ID = "the device has neither a UUID nor a PARTUUID"
NO_ROOM = "grubenv has no room for the longer name"
_UNFIXABLE = (CANNOT_TELL, NOT_THIS_GUEST, NO_STABLE_ID, NO_ROOM)

FSTAB = "/etc/fstab"
CRYPTTAB = "/etc/crypttab"
DEFAULT_GRUB = "/etc/default/grub"
DEFAULT_GRUB_D = "/etc/default/grub.d"
INITRAMFS_CONF_D = "/etc/initramfs-tools/conf.d"
KERNEL_CMDLINE = "/etc/kernel/cmdline"
BLS_DIRS = ("/boot/loader/entries", "/efi/loader/entries", "/boot/efi/loader/entries")
GRUBENVS = ("/boot/grub2/grubenv", "/boot/grub/grubenv")
DEVICE_MAPS = ("/boot/grub/device.map", "/boot/grub2/device.map")

_GRUBENV_HEADER = "# GRUB Environment Block\n"
_GRUBENV_KEY = "kernelopts="

# -- names ------------------------------------------------------------------

_LETTERED = re.compile(r"^/dev/(sd|hd|vd|xvd)([a-z]+)([0-9]*)$")
_NVME = re.compile(r"^/dev/nvme([0-9]+)n([0-9]+)(?:p([0-9]+))?$")
_BY = re.compile(r"^/dev/disk/by-(path|id)/(.+?)(?:-part([0-9]+))?$")
_STABLE_BY_ID = ("dm-", "lvm-", "md-")
_SD = re.compile(r"^/dev/sd([a-z]+)[0-9]*$")


def controller_dependent(name: str) -> bool:
    """Does ``name`` change when the disk moves to another controller?"""
    if _LETTERED.match(name) or _NVME.match(name):
        return True
    by = _BY.match(name)
    return by is not None and not (by.group(1) == "id" and by.group(2).startswith(_STABLE_BY_ID))


def fixable(finding: Finding) -> bool:
    """Will ``NamesRepair.fix`` resolve this finding (rather than leave it to a person)?"""
    return finding.fixable


_FS_FAMILY = {"ext2": "ext", "ext3": "ext", "ext4": "ext", "msdos": "vfat", "fat": "vfat"}
_ANY_FS = frozenset({"auto", "none", "", "fuseblk"})


def _fs_kind(fstype: str) -> str:
    return "ntfs" if fstype.startswith("ntfs") else _FS_FAMILY.get(fstype, fstype)


def _same_fs(said: str | None, holds: str | None) -> bool:
    """Can a device holding ``holds`` be what fstab's type field ``said`` names?"""
    if said is None or holds is None:
        return True
    kinds = {_fs_kind(t) for t in said.split(",")}
    return bool(kinds & _ANY_FS) or _fs_kind(holds) in kinds


@dataclass(frozen=True)
class _Ref:
    """One controller-dependent name in a file, and where on which line."""

    line: int
    start: int
    end: int
    name: str
    where: str
    crypt: bool = False
    plain: bool = False
    """A plain dm-crypt device (crypttab ``plain``/``swap``/``tmp``)."""
    fstype: str | None = None
    """What the file says the device holds (fstab's third field)."""
    optional: bool = False
    """``nofail`` or ``noauto``: an unresolved name cannot stop the boot."""


class _Resolver:
    """Old guest names -> stable specs, against the guest's devices."""

    def __init__(self, devices: Mapping[str, Device], names: Iterable[str]) -> None:
        self.devices = devices
        letters = sorted({m.group(1) for n in devices if (m := _SD.match(n))})
        self.only_disk = f"/dev/sd{letters[0]}" if len(letters) == 1 else None
        # Two old disks becoming one new disk means the guest had disks this
        # mapping cannot tell apart (sda and nvme0n1): none of them is rewritten.
        claims: dict[str, set[str]] = {}
        for name in names:
            mapped = self._map(name)
            if mapped is not None and mapped[0] is not None:
                claims.setdefault(mapped[1], set()).add(mapped[0])
        self.contested = {new for new, olds in claims.items() if len(olds) > 1}

    def _map(self, name: str) -> tuple[str | None, str, str] | None:
        """(old disk, new disk, new name), or None when the new disk cannot be told."""
        lettered = _LETTERED.match(name)
        if lettered:
            prefix, letters, _ = lettered.groups()
            new = DeviceTable().canonical(name)
            return f"/dev/{prefix}{letters}", f"/dev/sd{letters}", new
        nvme = _NVME.match(name)
        if nvme:
            controller, namespace, part = nvme.groups()
            if int(namespace) != 1:
                return None
            disk = f"/dev/sd{drive_letters(int(controller))}"
            return (
                f"/dev/nvme{int(controller)}n1",
                disk,
                disk + (str(int(part)) if part else ""),
            )
        by = _BY.match(name)
        if by and self.only_disk is not None:
            part = by.group(3)
            return None, self.only_disk, self.only_disk + (str(int(part)) if part else "")
        return None

    def resolve(self, ref: _Ref) -> tuple[str | None, str]:
        """(the stable spec, "") or (None, why not)."""
        mapped = self._map(ref.name)
        if mapped is None or mapped[1] in self.contested:
            return None, CANNOT_TELL
        new = mapped[2]
        device = self.devices.get(new)
        if device is None:
            return None, f"{NOT_THIS_GUEST} ({new})"
        if not _same_fs(ref.fstype, device.fstype):
            return None, f"{CANNOT_TELL}: {new} holds {device.fstype}, the file says {ref.fstype}"
        return _stable_spec(device, ref)


def _stable_spec(device: Device, ref: _Ref) -> tuple[str | None, str]:
    if ref.crypt and (
        ref.plain or (device.fstype is not None and not device.fstype.startswith("crypto_"))
    ):
        # A plain dm-crypt device: whatever UUID blkid sees on it is not its own.
        if device.partuuid:
            return f"PARTUUID={device.partuuid}", ""
        return None, f"{NO_STABLE_ID} (a plain dm-crypt device is named by its PARTUUID)"
    if device.uuid:
        return f"UUID={device.uuid}", ""
    if device.partuuid:
        return f"PARTUUID={device.partuuid}", ""
    return None, f"{NO_STABLE_ID} ({device.name})"


# -- the files --------------------------------------------------------------


@dataclass
class _File:
    """One guest file as read, the names found in it and the other edits it needs."""

    path: str
    """The real path (symlinks resolved inside the guest): what the journal replaces."""
    data: bytes
    lines: list[str]
    strict: bool
    """Decoded as UTF-8 without loss (otherwise surrogate escapes keep the odd bytes)."""
    refs: list[_Ref] = field(default_factory=list)
    comment_out: dict[int, tuple[str, str]] = field(default_factory=dict)
    """Line -> (the finding's what, the note after ``# vmcraft:``)."""
    remove: list[Finding] = field(default_factory=list)
    """Findings that remove the whole file (device.map)."""
    grubenv: bool = False


_CMDLINE_ARG = re.compile(r"""(?<![^\s"'])(root|resume)=([^\s"']+)""")


def _cmdline_refs(line: str, index: int, label: str, start: int = 0) -> list[_Ref]:
    """``root=`` and ``resume=`` arguments in ``line[start:]`` (a command line begins there)."""
    return [
        _Ref(index, start + m.start(2), start + m.end(2), m.group(2), f"{label} {m.group(1)}=")
        for m in _CMDLINE_ARG.finditer(line[start:])
        if controller_dependent(m.group(2))
    ]


_FIRST = re.compile(r"\s*(\S+)")
_SECOND = re.compile(r"\s*\S+\s+(\S+)")
_GRUB_CMDLINE = re.compile(r"\s*(?:export\s+)?(GRUB_CMDLINE_LINUX(?:_DEFAULT)?)=")
_RESUME = re.compile(r"""\s*(?:export\s+)?RESUME=(["']?)([^\s"'#]+)""")
_BLS_OPTIONS = re.compile(r"\s*options\s")
_DEVICE_MAP = re.compile(r"\s*(\([^)]*\))\s+(\S+)")
_GRUB_DISABLE = re.compile(
    r"""\s*(?:export\s+)?(GRUB_DISABLE_LINUX_UUID|GRUB_DISABLE_LINUX_PARTUUID|GRUB_DISABLE_UUID)"""
    r"""=(["']?)([^\s"'#;]*)\2"""
)
_OPTIONAL = frozenset({"nofail", "noauto"})


def _fstab_refs(f: _File) -> None:
    for i, line in enumerate(f.lines):
        fields = line.split()
        if not textlines.active(line) or len(fields) < 3 or not controller_dependent(fields[0]):
            continue
        m = _FIRST.match(line)
        assert m is not None  # noqa: S101 - an active line has a first field
        options = set(fields[3].split(",")) if len(fields) > 3 else set()
        point = "swap" if fields[2] == "swap" else fields[1]
        f.refs.append(
            _Ref(
                i,
                m.start(1),
                m.end(1),
                fields[0],
                f"fstab {point}",
                fstype=fields[2],
                optional=bool(options & _OPTIONAL),
            )
        )


def _crypttab_refs(f: _File) -> None:
    for i, line in enumerate(f.lines):
        fields = line.split()
        if not textlines.active(line) or len(fields) < 2 or not controller_dependent(fields[1]):
            continue
        m = _SECOND.match(line)
        assert m is not None  # noqa: S101 - two fields
        options = set(fields[3].split(",")) if len(fields) > 3 else set()
        plain = bool(options & {"plain", "swap", "tmp"}) or any(
            o.startswith("tmp=") for o in options
        )
        f.refs.append(
            _Ref(
                i,
                m.start(1),
                m.end(1),
                fields[1],
                f"crypttab {fields[0]}",
                crypt=True,
                plain=plain,
                optional=bool(options & _OPTIONAL),
            )
        )


def _resume_refs(f: _File) -> None:
    for i, line in enumerate(f.lines):
        m = _RESUME.match(line)
        if m and controller_dependent(m.group(2)):
            f.refs.append(_Ref(i, m.start(2), m.end(2), m.group(2), "RESUME="))


def _default_grub_refs(f: _File) -> None:
    for i, line in enumerate(f.lines):
        m = _GRUB_CMDLINE.match(line)
        if m:
            f.refs += _cmdline_refs(line, i, m.group(1), m.end())


def _bls_refs(f: _File) -> None:
    for i, line in enumerate(f.lines):
        m = _BLS_OPTIONS.match(line)
        if m:
            f.refs += _cmdline_refs(line, i, "BLS options", m.end())


def _kernel_cmdline_refs(f: _File) -> None:
    for i, line in enumerate(f.lines):
        if textlines.active(line):
            f.refs += _cmdline_refs(line, i, "kernel cmdline")


def _grubenv_refs(f: _File) -> None:
    for i, line in enumerate(f.lines):
        if line.startswith(_GRUBENV_KEY):
            f.refs += _cmdline_refs(line, i, "grubenv kernelopts", len(_GRUBENV_KEY))


def _device_map(f: _File) -> None:
    for line in f.lines:
        m = _DEVICE_MAP.match(line)
        if m and textlines.active(line) and controller_dependent(m.group(2)):
            f.remove.append(
                Finding(
                    Step.NAMES,
                    f"device.map maps {m.group(1)} to {m.group(2)}, "
                    "which changes with the disk controller",
                    f.path,
                    "the file is removed: grub-install and grub-mkconfig find the disks without it",
                )
            )


_LINUX_UUID_NOTE = "grub-mkconfig would write root= as a device name, which changes on KVM"
_UUID_NOTE = "grub.cfg would find its disks by names that change on KVM"


def _grub_disables(files: list[_File]) -> None:
    """Mark the GRUB_DISABLE_* assignments that make grub-mkconfig write device names."""
    assignments: list[tuple[_File, int, str, str]] = []
    for f in files:
        for i, line in enumerate(f.lines):
            m = _GRUB_DISABLE.match(line)
            if m:
                assignments.append((f, i, m.group(1), m.group(3)))

    def last(var: str) -> str | None:
        values = [v for _, _, name, v in assignments if name == var]
        return values[-1] if values else None

    def comment_out(var: str, note: str) -> None:
        for f, i, name, value in assignments:
            if name == var and value == "true":
                f.comment_out[i] = (
                    f"{var}=true makes grub-mkconfig name disks by device names",
                    note,
                )

    if last("GRUB_DISABLE_UUID") == "true":
        # It implies the other two (unless set) and drops `search --fs-uuid`.
        comment_out("GRUB_DISABLE_UUID", _UUID_NOTE)
    linux_uuid = last("GRUB_DISABLE_LINUX_UUID")
    partuuid = last("GRUB_DISABLE_LINUX_PARTUUID")
    # 10_linux: GRUB_DISABLE_LINUX_PARTUUID=${GRUB_DISABLE_LINUX_PARTUUID-true}
    if linux_uuid == "true" and (partuuid is None or partuuid == "true"):
        comment_out("GRUB_DISABLE_LINUX_UUID", _LINUX_UUID_NOTE)


# -- the survey -------------------------------------------------------------


@dataclass
class _Plan:
    """One file's edits: the new text (None: unchanged), its rewrites and findings."""

    file: _File
    new: bytes | None
    rewrites: list[Rewrite]
    findings: list[Finding]

    @property
    def remove(self) -> bool:
        return bool(self.file.remove)


class _Survey:
    def __init__(self, ctx: RepairContext) -> None:
        self.g = ctx.g
        self.seen: set[str] = set()
        self.files: list[_File] = []

    def load(self, path: str, *, grubenv: bool = False) -> _File | None:
        try:
            if not self.g.is_file(path, followsymlinks=True):
                return None
            real = self.g.realpath(path)
            if real in self.seen:
                return None
            data = self.g.read_file(real)
        except GuestFileError:
            return None
        text, strict = textlines.decode(data)
        if grubenv:
            body = text.rstrip("#")
            if not text.startswith(_GRUBENV_HEADER) or not body.endswith("\n"):
                return None
            text = body
        self.seen.add(real)
        f = _File(real, data, text.split("\n"), strict, grubenv=grubenv)
        self.files.append(f)
        return f

    def listing(self, directory: str, suffix: str = "") -> list[str]:
        try:
            if not self.g.is_dir(directory, followsymlinks=True):
                return []
            names = self.g.ls(directory)
        except GuestFileError:
            return []
        return [posixpath.join(directory, n) for n in sorted(names) if n.endswith(suffix)]

    def each(
        self, paths: Iterable[str], parse: Callable[[_File], None], *, grubenv: bool = False
    ) -> list[_File]:
        """Load each of ``paths`` that is a regular file (once) and parse it."""
        loaded = []
        for path in paths:
            f = self.load(path, grubenv=grubenv)
            if f is not None:
                parse(f)
                loaded.append(f)
        return loaded


def _survey(ctx: RepairContext) -> list[_Plan]:
    s = _Survey(ctx)
    s.each([FSTAB], _fstab_refs)
    s.each([CRYPTTAB], _crypttab_refs)
    s.each(s.listing(INITRAMFS_CONF_D), _resume_refs)
    grub_defaults = s.each([DEFAULT_GRUB, *s.listing(DEFAULT_GRUB_D, ".cfg")], _default_grub_refs)
    _grub_disables(grub_defaults)
    s.each([p for d in BLS_DIRS for p in s.listing(d, ".conf")], _bls_refs)
    s.each([KERNEL_CMDLINE], _kernel_cmdline_refs)
    s.each(GRUBENVS, _grubenv_refs, grubenv=True)
    s.each(DEVICE_MAPS, _device_map)
    resolver = _Resolver(ctx.devices, (r.name for f in s.files for r in f.refs))
    return [_plan_file(f, resolver) for f in s.files]


def _plan_file(f: _File, resolver: _Resolver) -> _Plan:
    if f.remove:
        return _Plan(f, None, [], list(f.remove))
    findings: list[Finding] = []
    spans: dict[int, list[tuple[int, int, str]]] = {}
    for ref in f.refs:
        spec, problem = resolver.resolve(ref)
        what = f"{ref.where} names {ref.name}, which changes with the disk controller"
        if spec is not None:
            spans.setdefault(ref.line, []).append((ref.start, ref.end, spec))
            findings.append(Finding(Step.NAMES, what, f.path, f"becomes {spec}"))
        elif not ref.optional:
            findings.append(Finding(Step.NAMES, what, f.path, problem, fixable=False))
    lines = list(f.lines)
    for i, edits in spans.items():
        line = lines[i]
        for start, end, spec in sorted(edits, reverse=True):
            line = line[:start] + spec + line[end:]
        lines[i] = line
    for i, (what, note) in sorted(f.comment_out.items()):
        lines[i] = textlines.commented(lines[i], note)
        findings.append(Finding(Step.NAMES, what, f.path, "becomes a comment"))
    rewrites = [
        Rewrite(f.path, textlines.shown(old), textlines.shown(new))
        for old, new in zip(f.lines, lines, strict=True)
        if old != new
    ]
    if not rewrites:
        return _Plan(f, None, [], findings)
    new = "\n".join(lines).encode(errors="surrogateescape")
    if f.grubenv:
        room = len(f.data) - len(new)
        if room < 0:
            # Keep the block's size or GRUB will not read it: rewrite nothing here.
            unfixed = [
                Finding(Step.NAMES, x.what, x.path, NO_ROOM, fixable=False) if x.fixable else x
                for x in findings
            ]
            return _Plan(f, None, [], unfixed)
        new += b"#" * room
    return _Plan(f, new, rewrites, findings)


# -- the step ---------------------------------------------------------------


class NamesRepair:
    """Controller-dependent disk names -> UUID= / PARTUUID= (see the module docstring)."""

    step = Step.NAMES

    def find(self, ctx: RepairContext) -> list[Finding]:
        return [finding for plan in _survey(ctx) for finding in plan.findings]

    def plan(self, ctx: RepairContext, findings: list[Finding]) -> list[tuple[str, ...]]:
        """No guest command: the step only edits files (the findings say which)."""
        return []

    def fix(self, ctx: RepairContext, findings: list[Finding], report: StepReport) -> None:
        """Rewrite (or remove) every file with something fixable, each once, via the journal.

        The guest is surveyed again rather than trusting ``findings``, so what
        is written always matches the files as they are now.
        """
        journal = ctx.require_journal(self.step)
        for plan in _survey(ctx):
            if plan.remove:
                journal.remove(plan.file.path, self.step.value)
                report.removals.append(plan.file.path)
            elif plan.new is not None:
                if plan.file.strict:
                    ctx.rewrite(report, self.step, plan.file.path, plan.new.decode(), plan.rewrites)
                else:
                    # Not UTF-8: bytes, so the odd bytes are written back as they were.
                    journal.write(plan.file.path, plan.new, self.step.value)
                    report.rewrites.extend(plan.rewrites)

    def check(self, ctx: RepairContext, started: float) -> list[Check]:
        """Whatever ``find`` still finds was not fixed."""
        return findings_as_checks(self.find(ctx))
