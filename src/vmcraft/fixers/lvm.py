"""fix-boot's lvm step: LVM made to look at the disks the guest has on KVM.

LVM finds a volume group by the UUIDs in its physical volumes' metadata,
not by disk names, which is why ``/dev/mapper/VG-LV`` survives a move. What
pins it to the old hardware anyway is in ``/etc/lvm``, and the lvm2 hook of
initramfs-tools copies all of ``/etc/lvm`` into the image (dracut copies
lvm.conf), so a guest so pinned stops in its initramfs: the PV is never
accepted, the VG is never complete, the root never appears.

- ``filter`` and ``global_filter`` (``/etc/lvm/lvm.conf``, ``lvmlocal.conf``,
  ``lvm.conf.d/*.conf``). A filter is judged as LVM judges one: a device is
  accepted when one of its names matches an ``a`` pattern before any ``r``
  pattern, and when no pattern matches at all. The names tried are those
  each PV has on KVM: ``/dev/vdXN`` on virtio-blk, ``/dev/sdXN`` on
  virtio-scsi, with the names that do not change (``/dev/disk/by-id/lvm-pv-
  uuid-*``, ``by-partuuid``, ``by-partlabel``), so a filter written against
  those is left alone. A filter that rejects a PV under either bus is
  **commented out**, the assignment kept after the ``#`` with a note (an
  assignment sharing its line with other settings is replaced by
  ``[ "a|.*|" ]`` instead, which accepts everything, the same as none). It
  is not translated to ``vd`` names: virtio-scsi keeps ``sd``, another disk
  shifts the letters, and no list of names is right on both buses; LVM with
  no filter scans every disk and picks its PVs by UUID.
- the devices file ``/etc/lvm/devices/system.devices`` (LVM 2.03.12 and
  later; RHEL 9's installer writes one). LVM uses only the devices it lists,
  by ids of the old virtual disk: ``IDTYPE=devname`` (its name),
  ``sys_wwid``, ``sys_serial`` (what VMware or Hyper-V reported for it); no
  KVM disk has them. The file is **removed**: without a devices file LVM
  uses every device it sees, as before devices files existed, and
  ``vgimportdevices -a`` on the running guest writes a new one. A file whose
  entries all name ids that survive a move (``mpath_uuid``, ``md_uuid``,
  ``crypt_uuid``, ``lvmlv_uuid``, ``loop_file``) is left alone.
- caches of an old scan: every file in ``/etc/lvm/cache`` (LVM 2.02's
  ``.cache``, the persistent filter's device names) is removed; LVM 2.02
  writes it again on its next scan, 2.03 never reads it.

Every change goes through the journal; the initramfs step then rebuilds the
images, which copy the new files. Lines are edited in place, every other
byte kept.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from vmcraft.errors import GuestFileError, VMCraftError
from vmcraft.fixers import lines as textlines
from vmcraft.fixers.step import Finding, RepairContext, Step, findings_as_checks
from vmcraft.report import Check, Rewrite, StepReport

__all__ = ["CACHE_DIR", "CONFIG_FILES", "DEVICES_FILE", "LvmRepair", "PvNames", "accepts"]

LVM_CONF = "/etc/lvm/lvm.conf"
CONFIG_FILES = (LVM_CONF, "/etc/lvm/lvmlocal.conf")
CONFIG_DIR = "/etc/lvm/lvm.conf.d"
DEVICES_FILE = "/etc/lvm/devices/system.devices"
CACHE_DIR = "/etc/lvm/cache"

_ACCEPT_ALL = '[ "a|.*|" ]'
_NOTE = "rejected the disks' names on KVM; LVM finds its PVs by UUID"
# Device ids in a devices file that are the same on any hypervisor.
_STABLE_IDTYPES = frozenset({"mpath_uuid", "md_uuid", "crypt_uuid", "lvmlv_uuid", "loop_file"})
_KEY = re.compile(r"(?<![\w/])(global_filter|filter)\s*=\s*")
_DISK = re.compile(r"^/dev/sd([a-z]+)([0-9]*)$")


# -- what a filter accepts ------------------------------------------------------


@dataclass(frozen=True)
class PvNames:
    """The names one PV has on one KVM bus: LVM accepts it if any name is accepted."""

    bus: str
    names: tuple[str, ...]

    @property
    def shown(self) -> str:
        return self.names[0]


def _pattern(item: str) -> tuple[bool, re.Pattern[str] | None] | None:
    """(accept?, regex) of one filter item (``a|^/dev/sda|``); regex None: unreadable."""
    if len(item) < 3 or item[0] not in "ar" or item[-1] != item[1]:
        return None
    try:
        return item[0] == "a", re.compile(item[2:-1])
    except re.error:
        return item[0] == "a", None


def accepts(items: Iterable[str], names: Iterable[str]) -> bool:
    """Does a filter of ``items`` accept a device known by ``names``? (LVM's rule)

    The first pattern a name matches decides for that name, a name no
    pattern matches is accepted, and one accepted name accepts the device.
    A pattern this cannot read is taken to reject: the filter is then
    relaxed rather than trusted.
    """
    patterns = [p for p in (_pattern(i) for i in items) if p is not None]
    for name in names:
        verdict = True
        for accept, regex in patterns:
            if regex is None:
                verdict = False
                break
            if regex.search(name):
                verdict = accept
                break
        if verdict:
            return True
    return False


def _kvm_names(ctx: RepairContext) -> list[PvNames]:
    """Each PV of the guest under virtio-blk and virtio-scsi (a first disk's, if none is seen)."""
    pvs: list[tuple[str, dict[str, str]]] = []
    if ctx.g.has_drives:
        for name in [*ctx.g.list_devices(), *ctx.g.list_partitions()]:
            try:
                ids = ctx.g.blkid(name)
            except VMCraftError:
                continue
            if ids.get("TYPE") == "LVM2_member":
                pvs.append((name, ids))
    if not pvs:
        pvs = [(f"/dev/sda{n}", {}) for n in ("", "1", "2", "3", "4")]
    out = []
    for name, ids in pvs:
        m = _DISK.match(name)
        if m is None:
            continue
        stable = []
        if ids.get("UUID"):
            stable.append(f"/dev/disk/by-id/lvm-pv-uuid-{ids['UUID']}")
        if ids.get("PART_ENTRY_UUID"):
            stable.append(f"/dev/disk/by-partuuid/{ids['PART_ENTRY_UUID']}")
        if ids.get("PART_ENTRY_NAME"):
            stable.append(f"/dev/disk/by-partlabel/{ids['PART_ENTRY_NAME']}")
        letters, part = m.groups()
        out.append(PvNames("virtio-blk", (f"/dev/vd{letters}{part}", *stable)))
        out.append(PvNames("virtio-scsi", (name, *stable)))
    return out


# -- reading lvm.conf -----------------------------------------------------------


@dataclass(frozen=True)
class _Assignment:
    """One ``filter = [...]`` in a config file: where it is and what it lists."""

    key: str
    items: tuple[str, ...]
    start: tuple[int, int]
    """(line, column) of the key."""
    end: tuple[int, int]
    """(line, column) just past the value."""


def _code(line: str) -> str:
    """``line`` with its comment blanked out (a ``#`` outside a string starts one)."""
    quoted = False
    for i, ch in enumerate(line):
        if ch == '"' and (i == 0 or line[i - 1] != "\\"):
            quoted = not quoted
        elif ch == "#" and not quoted:
            return line[:i] + " " * (len(line) - i)
    return line


def _assignments(lines: list[str]) -> list[_Assignment]:
    code = [_code(ln) for ln in lines]
    found = []
    i = 0
    while i < len(code):
        m = _KEY.search(code[i])
        if m is None:
            i += 1
            continue
        parsed = _value(code, i, m.end())
        if parsed is None:
            i += 1
            continue
        items, end = parsed
        found.append(_Assignment(m.group(1), items, (i, m.start()), end))
        i = end[0] if end[0] > i else i + 1
    return found


def _value(code: list[str], line: int, col: int) -> tuple[tuple[str, ...], tuple[int, int]] | None:
    """The strings of the value starting at (line, col), and where it ends; None if not a list."""
    items: list[str] = []
    text = code[line][col:]
    if text.startswith('"'):
        m = re.match(r'"((?:[^"\\]|\\.)*)"', text)
        return ((m.group(1),), (line, col + m.end())) if m else None
    if not text.startswith("["):
        return None
    at = col + 1
    while line < len(code):
        text = code[line]
        while at < len(text):
            ch = text[at]
            if ch == "]":
                return tuple(items), (line, at + 1)
            if ch == '"':
                m = re.match(r'"((?:[^"\\]|\\.)*)"', text[at:])
                if m is None:
                    return None
                items.append(m.group(1))
                at += m.end()
                continue
            at += 1
        line, at = line + 1, 0
    return None


def _relaxed(lines: list[str], a: _Assignment) -> tuple[list[str], str]:
    """``lines`` with assignment ``a`` made harmless, and how (for the finding)."""
    (first, start), (last, end) = a.start, a.end
    if not lines[first][:start].strip() and not _code(lines[last][end:]).strip():
        commented = [
            textlines.commented(lines[i], _NOTE if i == first else None)
            for i in range(first, last + 1)
        ]
        return [*lines[:first], *commented, *lines[last + 1 :]], "becomes a comment"
    # It shares a line with other settings (``devices { filter = [...] }``):
    # commenting that line out would take them too.
    joined = lines[first][:start] + f"{a.key} = {_ACCEPT_ALL}" + lines[last][end:]
    return [*lines[:first], joined, *lines[last + 1 :]], f"becomes {_ACCEPT_ALL}"


# -- the survey -----------------------------------------------------------------


@dataclass
class _Edit:
    """One config file and its relaxed text (``new`` None: nothing to change)."""

    path: str
    lines: list[str]
    new: list[str] | None = None
    findings: list[Finding] = field(default_factory=list)

    @property
    def rewrites(self) -> list[Rewrite]:
        if self.new is None:
            return []
        old, new = self.lines, self.new
        if len(old) == len(new):
            return [
                Rewrite(self.path, a.rstrip("\r"), b.rstrip("\r"))
                for a, b in zip(old, new, strict=True)
                if a != b
            ]
        return [Rewrite(self.path, "\n".join(old), "\n".join(new))]


@dataclass
class _Survey:
    edits: list[_Edit] = field(default_factory=list)
    removals: list[tuple[str, list[Finding]]] = field(default_factory=list)

    @property
    def findings(self) -> list[Finding]:
        return [f for e in self.edits for f in e.findings] + [
            f for _, found in self.removals for f in found
        ]


def _read(ctx: RepairContext, path: str) -> tuple[str, str] | None:
    """(real path, text) of a guest file, or None when it is not a regular file."""
    try:
        if not ctx.g.is_file(path, followsymlinks=True):
            return None
        real = ctx.g.realpath(path)
        return real, ctx.g.read_file(real).decode(errors="surrogateescape")
    except GuestFileError:
        return None


def _listing(ctx: RepairContext, directory: str, suffix: str = "") -> list[str]:
    try:
        if not ctx.g.is_dir(directory, followsymlinks=True):
            return []
        names = ctx.g.ls(directory)
    except GuestFileError:
        return []
    return [posixpath.join(directory, n) for n in sorted(names) if n.endswith(suffix)]


def _config_edit(path: str, text: str, pvs: list[PvNames]) -> _Edit:
    edit = _Edit(path, text.split("\n"))
    lines = edit.lines
    for a in reversed(_assignments(lines)):  # from the end: earlier positions stay valid
        rejected = [pv for pv in pvs if not accepts(a.items, pv.names)]
        if not rejected:
            continue
        lines, how = _relaxed(lines, a)
        names = ", ".join(sorted({f"{pv.shown} ({pv.bus})" for pv in rejected}))
        edit.findings.insert(
            0,
            Finding(
                Step.LVM,
                f"{a.key} in {posixpath.basename(path)} rejects {names}",
                path,
                f"{a.key} = [ {', '.join(repr(i) for i in a.items)} ] {how}",
            ),
        )
    if lines != edit.lines:
        edit.new = lines
    return edit


def _pinned_devices(path: str, text: str) -> list[Finding]:
    found = []
    for line in text.splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        idtype = fields.get("IDTYPE")
        if line.lstrip().startswith("#") or idtype is None or idtype in _STABLE_IDTYPES:
            continue
        found.append(
            Finding(
                Step.LVM,
                f"the devices file lists PV {fields.get('PVID', '?')} by "
                f"{idtype}={fields.get('IDNAME', '')}, which no KVM disk has",
                path,
                "the file is removed: LVM then uses every disk it sees",
            )
        )
    return found


def _survey(ctx: RepairContext) -> _Survey:
    survey = _Survey()
    pvs = _kvm_names(ctx)
    seen: set[str] = set()
    for path in [*CONFIG_FILES, *_listing(ctx, CONFIG_DIR, ".conf")]:
        got = _read(ctx, path)
        if got is None or got[0] in seen:
            continue
        seen.add(got[0])
        survey.edits.append(_config_edit(*got, pvs))
    got = _read(ctx, DEVICES_FILE)
    if got is not None:
        pinned = _pinned_devices(*got)
        if pinned:
            survey.removals.append((got[0], pinned))
    for path in _listing(ctx, CACHE_DIR):
        if ctx.g.is_file(path):
            what = "a cache of an old scan names the old disks"
            detail = "removed: LVM scans again"
            survey.removals.append((path, [Finding(Step.LVM, what, path, detail)]))
    return survey


# -- the step -------------------------------------------------------------------


class LvmRepair:
    """LVM filters, devices file and caches pinned to the old disks (see the module docstring)."""

    step = Step.LVM

    def find(self, ctx: RepairContext) -> list[Finding]:
        return _survey(ctx).findings

    def plan(self, ctx: RepairContext, findings: list[Finding]) -> list[tuple[str, ...]]:
        """No guest command: the step edits and removes files (the findings say which)."""
        return []

    def fix(self, ctx: RepairContext, findings: list[Finding], report: StepReport) -> None:
        """Relax each filter and remove the pinned files, once each, through the journal."""
        journal = ctx.require_journal(self.step)
        survey = _survey(ctx)
        for edit in survey.edits:
            if edit.new is not None:
                new = "\n".join(edit.new).encode(errors="surrogateescape")
                journal.write(edit.path, new, self.step.value)
                report.rewrites.extend(edit.rewrites)
        for path, _ in survey.removals:
            journal.remove(path, self.step.value)
            report.removals.append(path)

    def check(self, ctx: RepairContext, started: float) -> list[Check]:
        """Whatever ``find`` still finds was not fixed."""
        return findings_as_checks(self.find(ctx))
