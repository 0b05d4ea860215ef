"""``vmcraft doctor``: what this host offers, and what vmcraft does where it lacks something.

``check_host()`` probes without changing the host (checks.py) and returns a
:class:`HostReport` (report.py): one :class:`Probe` per feature, with what
was found, how, and the fallback the code takes without it. ``usable`` is
false only when a required feature (root, loop devices, qemu-img, blkid)
is missing: then nothing can be attached, and the CLI exits non-zero.
"""

from __future__ import annotations

from vmcraft.doctor.checks import check_host
from vmcraft.doctor.report import Feature, HostReport, Probe, Severity

__all__ = ["Feature", "HostReport", "Probe", "Severity", "check_host"]
