"""What the enhanced chroot costs per command, beside its peers, on one guest root.

Measures, interleaved round by round on the same debootstrapped root (an
overlay on the test fixture's cached tree) and in a private mount
namespace:

* ``command(["/bin/true"])``: the bare chroot, the baseline;
* ``command_with_mounts(["/bin/true"])`` with the ``mountpoint -q`` check
  and with the in-process mountinfo check;
* eight ``command_with_mounts`` calls inside one held mounter
  (``hold_mounts``), per command, and the whole batch with its mounts;
* peers: ``arch-chroot ROOT /bin/true`` and the seed's steps as processes
  (``mountpoint -q``, ``mount --bind``, ``chroot``, ``umount`` x3).

Run as root: ``python benchmarks/bench_chroot.py [--runs N] [--json FILE] [--check]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import isolate
from tests.fixtures.guestroot import minbase_root
from vmcraft import VMCraft
from vmcraft.mount import syscalls

TRUE = ["/bin/true"]


@contextmanager
def overlay_root() -> Iterator[Path]:
    lower = minbase_root()
    with tempfile.TemporaryDirectory(prefix="vmcraft-bench-") as tmp:
        top = Path(tmp)
        for d in ("upper", "work", "root"):
            (top / d).mkdir()
        syscalls.mount(
            "overlay",
            os.fspath(top / "root"),
            "overlay",
            0,
            f"lowerdir={lower},upperdir={top / 'upper'},workdir={top / 'work'}",
        )
        try:
            yield top / "root"
        finally:
            syscalls.umount(os.fspath(top / "root"), syscalls.MNT_DETACH)


def seed_steps(root: Path) -> None:
    """The seed's sequence, each step a process, as its library runs it."""
    mounted = []
    try:
        for fs in ("proc", "dev", "sys"):
            target = os.fspath(root / fs)
            if subprocess.run(["mountpoint", "-q", target], check=False).returncode != 0:
                subprocess.run(["mount", "--bind", f"/{fs}", target], check=True)
                mounted.append(target)
        subprocess.run(["chroot", os.fspath(root), *TRUE], check=True)
    finally:
        for target in reversed(mounted):
            subprocess.run(["umount", target], check=False)


def measure(runs: int) -> tuple[dict[str, list[float]], list[float]]:
    """Seconds per call of each case, interleaved round by round."""
    with overlay_root() as root:
        spawn = VMCraft.from_root(root, mount_check="mountpoint")
        inproc = VMCraft.from_root(root, mount_check="mountinfo")

        def held_batch() -> None:
            with spawn.hold_mounts():
                for _ in range(8):
                    spawn.command_with_mounts(TRUE)

        per_held_command: list[float] = []

        def held_eight_each() -> None:
            with spawn.hold_mounts():
                for _ in range(8):
                    start = time.perf_counter()
                    spawn.command_with_mounts(TRUE)
                    per_held_command.append(time.perf_counter() - start)

        cases: dict[str, Callable[[], object]] = {
            "command (bare chroot)": lambda: spawn.command(TRUE),
            "command_with_mounts, mountpoint -q check": lambda: spawn.command_with_mounts(TRUE),
            "command_with_mounts, mountinfo check": lambda: inproc.command_with_mounts(TRUE),
            "8 x command_with_mounts in one held mounter (batch)": held_batch,
            "peer: arch-chroot ROOT /bin/true": lambda: subprocess.run(
                ["arch-chroot", os.fspath(root), *TRUE], check=True, stdout=subprocess.DEVNULL
            ),
            "peer: seed's steps as processes": lambda: seed_steps(root),
        }
        samples: dict[str, list[float]] = {name: [] for name in cases}
        for fn in cases.values():  # warm-up: page cache, imports
            fn()
        for _ in range(runs):
            for name, fn in cases.items():
                start = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - start)
            held_eight_each()

    return samples, per_held_command


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50, help="rounds (each case once a round)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()
    if args.runs < 30:
        parser.error("--runs must be at least 30")
    isolate("mounts")

    samples, per_held_command = measure(args.runs)
    med = {name: statistics.median(vals) * 1000 for name, vals in samples.items()}
    held_each = statistics.median(per_held_command) * 1000
    base = med["command (bare chroot)"]
    rows = [(name, med[name], med[name] - base) for name in samples if "batch" not in name]
    rows.insert(
        3, ("command_with_mounts inside the held mounter (each)", held_each, held_each - base)
    )
    batch = med["8 x command_with_mounts in one held mounter (batch)"]
    targets = {
        "command_with_mounts, mountpoint -q check": 10.0,
        "command_with_mounts, mountinfo check": 1.0,
        "command_with_mounts inside the held mounter (each)": 1.0,
    }
    print(f"median of {args.runs} runs, {os.cpu_count()} cores, kernel {os.uname().release}")
    print(f"arch-chroot: {shutil.which('arch-chroot')}")
    print()
    print("| case | median ms | over bare chroot ms | target | met |")
    print("|---|---:|---:|---:|---|")
    verdicts = {}
    for name, ms, over in rows:
        target = targets.get(name)
        met = "" if target is None else ("yes" if over <= target else "NO")
        verdicts[name] = met
        shown = "" if target is None else f"<= {target:g}"
        print(f"| {name} | {ms:.2f} | {over:+.2f} | {shown} | {met} |")
    print(
        f"| 8 x command_with_mounts, held mounter, whole batch | {batch:.2f} | "
        f"{batch - 8 * base:+.2f} (vs 8 bare) | | |"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "runs": args.runs,
                    "median_ms": med | {"held, each": held_each},
                    "targets_met": verdicts,
                },
                indent=2,
            )
        )
    return 1 if args.check and "NO" in verdicts.values() else 0


if __name__ == "__main__":
    sys.exit(main())
