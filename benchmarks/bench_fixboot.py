"""fix-boot on the demo guest, phase by phase, and the boot that proves it.

For each run: a fresh copy of the demo Debian disk (qcow2) broken as a
VMware conversion leaves it, ``fix_boot`` on it (its phase timings from the
report), then a boot under qemu (software emulation, no KVM here) until the
guest's ``login:`` prompt. Each run repairs one copy with its guest commands
in the sandbox (the default) and one in the enhanced chroot
(``isolation="host"``), interleaved. Medians over the runs.

Run as root: ``python benchmarks/bench_fixboot.py [--runs N] [--json FILE] [--no-boot]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import isolate
from tests.boot import boot
from vmcraft.demo.run import prepare_demo_image
from vmcraft.fixers.fixboot import FixBootOptions, fix_boot
from vmcraft.sandbox.isolation import Isolation

PHASES = ("inspect", "mount", "initramfs", "bootloader", "regen_initramfs_and_bootloader", "total")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--no-boot", action="store_true", help="skip the boots to login:")
    args = parser.parse_args()
    isolate("attaches disks")

    modes = (Isolation.SANDBOX, Isolation.HOST)
    phases: dict[Isolation, dict[str, list[float]]] = {m: {p: [] for p in PHASES} for m in modes}
    boots: list[float] = []
    with tempfile.TemporaryDirectory(prefix="vmcraft-bench-", dir="/var/tmp") as tmp:
        for run in range(args.runs):
            for mode in modes:
                image = prepare_demo_image(Path(tmp) / f"run{run}-{mode}.qcow2")
                report = fix_boot(image, options=FixBootOptions(isolation=mode))
                if not report.success:
                    print(report.to_json(), file=sys.stderr)
                    return 1
                for phase in PHASES:
                    phases[mode][phase].append(report.timings.get(phase, 0.0))
                if mode is Isolation.SANDBOX and not args.no_boot:
                    start = time.monotonic()
                    result = boot(image, "qcow2", {"login": r"login:"}, timeout=600)
                    if result.outcome != "login":
                        print(result.tail(), file=sys.stderr)
                        return 1
                    boots.append(time.monotonic() - start)
                image.unlink()

    med = {m: {p: statistics.median(v) for p, v in phases[m].items()} for m in modes}
    print(f"median of {args.runs} runs, {os.cpu_count()} cores, qemu TCG (no KVM)")
    print()
    print("| phase | sandbox s | enhanced chroot s |")
    print("|---|---:|---:|")
    for phase in PHASES:
        print(f"| fix-boot: {phase} | {med[modes[0]][phase]:.2f} | {med[modes[1]][phase]:.2f} |")
    ratio = med[Isolation.SANDBOX]["total"] / med[Isolation.HOST]["total"]
    print(f"| sandbox / enhanced chroot, total | {ratio:.3f} | |")
    if boots:
        print(f"| boot to login: (after the fix) | {statistics.median(boots):.1f} | |")
    if args.json:
        args.json.write_text(
            json.dumps({"runs": args.runs, "median_s": med, "boot_s": boots}, indent=2) + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
