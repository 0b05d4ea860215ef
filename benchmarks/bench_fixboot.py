"""fix-boot on the demo guest, phase by phase, and the boot that proves it.

For each run: a fresh copy of the demo Debian disk (qcow2) broken as a
VMware conversion leaves it, ``fix_boot`` on it (its phase timings from the
report), then a boot under qemu (software emulation, no KVM here) until the
guest's ``login:`` prompt. Medians over the runs.

Run as root: ``python benchmarks/bench_fixboot.py [--runs N] [--json FILE]``.
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
from vmcraft.fixers.fixboot import fix_boot

PHASES = ("inspect", "mount", "initramfs", "bootloader", "regen_initramfs_and_bootloader", "total")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    isolate("attaches disks")

    phases: dict[str, list[float]] = {p: [] for p in PHASES}
    boots: list[float] = []
    with tempfile.TemporaryDirectory(prefix="vmcraft-bench-", dir="/var/tmp") as tmp:
        for run in range(args.runs):
            image = prepare_demo_image(Path(tmp) / f"run{run}.qcow2")
            report = fix_boot(image)
            if not report.success:
                print(report.to_json(), file=sys.stderr)
                return 1
            for phase in PHASES:
                phases[phase].append(report.timings.get(phase, 0.0))
            start = time.monotonic()
            result = boot(image, "qcow2", {"login": r"login:"}, timeout=600)
            if result.outcome != "login":
                print(result.tail(), file=sys.stderr)
                return 1
            boots.append(time.monotonic() - start)
            image.unlink()

    print(f"median of {args.runs} runs, {os.cpu_count()} cores, qemu TCG (no KVM)")
    print()
    print("| phase | median s |")
    print("|---|---:|")
    for phase, values in phases.items():
        print(f"| fix-boot: {phase} | {statistics.median(values):.2f} |")
    print(f"| boot to login: (after the fix) | {statistics.median(boots):.1f} |")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "runs": args.runs,
                    "median_s": {p: statistics.median(v) for p, v in phases.items()}
                    | {"boot_to_login": statistics.median(boots)},
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
