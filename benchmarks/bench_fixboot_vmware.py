"""fix-boot of VMware-shaped guest (a) beside the guest tools it runs, timed bare.

Each run takes a fresh copy of guest (a) (``tests.fixtures.vmwareguest.BIOS_GPT``)
and times, as a user runs them, each as its own process:

* ``vmcraft check IMAGE`` on the broken guest;
* ``vmcraft fix-boot IMAGE`` (its peak RSS from ``wait4``);
* ``vmcraft fix-boot IMAGE`` again, on the repaired guest (it changes nothing);
* ``vmcraft check IMAGE`` on the repaired guest;
* the guest commands that fix-boot ran (from its report), then also the
  ``lsinitramfs`` listings it checks images with (each image before and
  after), *bare*: the raw
  image on a loop device, its root mounted, /proc, /sys and /dev bound, and
  each command run with ``chroot`` one after the other, as a person would by
  hand. That is the floor: what fix-boot adds over it is inspection, the
  checks, the journal and the sandbox.

Medians over the runs. Run as root:
``python benchmarks/bench_fixboot_vmware.py [--runs N] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import isolate
from tests.conftest import writable_copy
from tests.fixtures.vmwareguest import BIOS_GPT, partition_offset, vmware_guest_facts


@dataclass(frozen=True)
class Timed:
    seconds: float
    max_rss_mib: float
    stdout: str
    returncode: int


def timed(argv: list[str]) -> Timed:
    """Run ``argv``; its wall time and its own peak RSS (``wait4``: this child only)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    assert proc.stdout is not None
    out = proc.stdout.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Timed(time.perf_counter() - start, usage.ru_maxrss / 1024, out, proc.returncode)


def vmcraft(*args: str) -> Timed:
    return timed([sys.executable, "-m", "vmcraft", *args])


def _run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip()


@contextlib.contextmanager
def bare_root(image: Path, partition: int) -> Iterator[Path]:
    """The image's root on a loop device, with /proc, /sys and /dev: by hand, no vmcraft."""
    offset = partition_offset(image, partition)
    loop = _run("losetup", "--find", "--show", "--offset", str(offset), str(image))
    mnt = Path(tempfile.mkdtemp(prefix="vmcraft-bare-"))
    mounted: list[Path] = []
    try:
        _run("mount", loop, str(mnt))
        mounted.append(mnt)
        for sub in ("proc", "sys", "dev"):
            _run("mount", "--bind", f"/{sub}", str(mnt / sub))
            mounted.append(mnt / sub)
        yield mnt
    finally:
        for point in reversed(mounted):
            _run("umount", str(point))
        _run("losetup", "-d", loop)
        mnt.rmdir()


def guest_commands(report: dict[str, object]) -> list[list[str]]:
    """Every command fix-boot ran in the guest, in order, from its JSON report."""
    commands = []
    for key in ("names", "drivers", "initramfs", "bootloader", "grub_install", "uefi"):
        step = report.get(key)
        if isinstance(step, dict):
            commands += [list(a["cmd"]) for a in step.get("attempts", [])]
    return commands


def in_chroot(root: Path, commands: list[list[str]]) -> None:
    """Each command with plain chroot(8), output discarded, as by hand."""
    for command in commands:
        subprocess.run(
            ["chroot", str(root), *command],
            check=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"},
        )


def print_table(
    runs: int,
    med: dict[str, float],
    phases: dict[str, list[float]],
    peak: list[float],
    commands: list[list[str]],
) -> None:
    print(f"guest (a), median of {runs} runs, {os.cpu_count()} cores")
    print(f"guest commands: {'; '.join(' '.join(c) for c in commands)}")
    print()
    print("| case | s |")
    print("|---|---:|")
    for case, value in med.items():
        print(f"| {case} | {value:.2f} |")
    print(f"| fix-boot / bare tools | {med['fix-boot'] / med['bare tools']:.2f} x |")
    ratio = med["fix-boot"] / med["bare tools and listings"]
    print(f"| fix-boot / bare tools and listings | {ratio:.2f} x |")
    for phase, values in phases.items():
        print(f"| fix-boot phase: {phase} | {statistics.median(values):.2f} |")
    print(f"| fix-boot peak RSS (the vmcraft process) | {statistics.median(peak):.0f} MiB |")
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"| (this benchmark's own peak RSS) | {own:.0f} MiB |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    isolate("attaches disks")

    facts = vmware_guest_facts(BIOS_GPT)
    cases = (
        "check, broken",
        "fix-boot",
        "fix-boot, second run",
        "check, repaired",
        "bare tools",
        "bare tools and listings",
    )
    seconds: dict[str, list[float]] = {c: [] for c in cases}
    peak: list[float] = []
    phases: dict[str, list[float]] = {}
    commands: list[list[str]] = []
    with tempfile.TemporaryDirectory(prefix="vmcraft-bench-", dir="/var/tmp") as tmp:
        for run in range(args.runs):
            image = writable_copy(facts.raw, Path(tmp) / f"run{run}.raw")
            # A user's disk is not a file just written: with the copy's pages
            # still dirty, attaching it writable waits for them (0.5 s here).
            os.sync()
            check = vmcraft("check", str(image), "--json")
            seconds["check, broken"].append(check.seconds)
            fixed = vmcraft("fix-boot", str(image), "--json")
            if fixed.returncode != 0:
                print(fixed.stdout, file=sys.stderr)
                return 1
            seconds["fix-boot"].append(fixed.seconds)
            peak.append(fixed.max_rss_mib)
            report = json.loads(fixed.stdout)
            commands = guest_commands(report)
            # fix-boot lists each image with the guest's lister before and after.
            listings = [
                ["lsinitramfs", f"/boot/initrd.img-{kernel}"]
                for kernel in report["guest"]["kernels"]
            ] * 2
            for phase, value in report["analysis"]["timings"].items():
                phases.setdefault(phase, []).append(value)
            again = vmcraft("fix-boot", str(image), "--json")
            assert json.loads(again.stdout)["plan"] == [], "the second run must change nothing"
            seconds["fix-boot, second run"].append(again.seconds)
            seconds["check, repaired"].append(vmcraft("check", str(image), "--json").seconds)
            with bare_root(image, facts.root_partition) as root:
                start = time.perf_counter()
                in_chroot(root, commands)
                seconds["bare tools"].append(time.perf_counter() - start)
                in_chroot(root, listings)
                seconds["bare tools and listings"].append(time.perf_counter() - start)
            image.unlink()

    med = {c: statistics.median(v) for c, v in seconds.items()}
    print_table(args.runs, med, phases, peak, commands)
    if args.json:
        args.json.write_text(
            json.dumps(
                {"runs": args.runs, "median_s": med, "peak_rss_mib": peak, "commands": commands},
                indent=2,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
