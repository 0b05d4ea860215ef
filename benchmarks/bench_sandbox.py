"""What the sandbox around each guest command costs, beside today's chroot and its peers.

Measures, interleaved round by round on the same debootstrapped root (an
overlay on the test fixture's cached tree) and in a private mount
namespace, ``/bin/true`` in the guest:

* ``command()`` in the enhanced chroot (a bare ``chroot(8)``: the baseline
  the issue's 3 ms is counted from) and ``command_with_mounts()``;
* ``command()`` in vmcraft's sandbox (``isolation="sandbox"``), and the same
  bubblewrap command line run directly (what the Python around it costs);
* ``systemd-nspawn --register=no --keep-unit --private-network``.

Run as root: ``python benchmarks/bench_sandbox.py [--runs N] [--json FILE]``.
docs/sandbox.md has the figures and why bubblewrap.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_chroot import overlay_root
from benchmarks.common import isolate
from vmcraft import VMCraft
from vmcraft.chroot.run import guest_environment
from vmcraft.mount import syscalls
from vmcraft.sandbox import seccomp
from vmcraft.sandbox.bwrap import Sandbox

TRUE = ["/bin/true"]
NSPAWN = ["systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "--private-network"]


def run_quiet(argv: Sequence[str], *, pass_fds: Sequence[int] = ()) -> None:
    done = subprocess.run(
        list(argv),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=guest_environment(),
        pass_fds=tuple(pass_fds),
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} exited {done.returncode}: {done.stderr[-300:]!r}")


def run_bwrap(root: Path) -> None:
    fd = seccomp.program_fd()
    try:
        run_quiet(Sandbox(os.fspath(root)).argv(TRUE, seccomp_fd=fd), pass_fds=(fd,))
    finally:
        os.close(fd)


@contextmanager
def nspawn_run_dir() -> Iterator[None]:
    """nspawn refuses to clean its propagation directory on a disk /run: give it a tmpfs."""
    path = Path("/run/systemd/nspawn")
    made = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    syscalls.mount("tmpfs", os.fspath(path), "tmpfs", syscalls.MS_NOSUID, "mode=0755")
    try:
        yield
    finally:
        syscalls.umount(os.fspath(path), syscalls.MNT_DETACH)
        if made:
            path.rmdir()


def measure(runs: int) -> dict[str, list[float]]:
    """Seconds per call of each case, interleaved round by round."""
    with overlay_root() as root, nspawn_run_dir():
        host = VMCraft.from_root(root)
        sandboxed = VMCraft.from_root(root, isolation="sandbox")
        cases: dict[str, Callable[[], object]] = {
            "command(), enhanced chroot": lambda: host.command(TRUE),
            "command_with_mounts(), enhanced chroot": lambda: host.command_with_mounts(TRUE),
            "command(), sandbox": lambda: sandboxed.command(TRUE),
            "bwrap, the sandbox's argv run directly": lambda: run_bwrap(root),
        }
        if shutil.which("systemd-nspawn"):
            cases["systemd-nspawn"] = lambda: run_quiet([*NSPAWN, "-D", os.fspath(root), *TRUE])
        samples: dict[str, list[float]] = {name: [] for name in cases}
        for fn in cases.values():  # warm-up: page cache, imports
            fn()
        for _ in range(runs):
            for name, fn in cases.items():
                start = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - start)
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50, help="rounds (each case once a round)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.runs < 30:
        parser.error("--runs must be at least 30")
    if shutil.which("bwrap") is None:
        print("bwrap is missing: apt-get install -y bubblewrap", file=sys.stderr)
        return 2
    isolate("sandboxes")
    samples = measure(args.runs)
    med = {name: statistics.median(vals) * 1000 for name, vals in samples.items()}
    base = med["command(), enhanced chroot"]
    print(f"median of {args.runs} runs, {os.cpu_count()} cores, kernel {os.uname().release}")
    for name, value in med.items():
        print(f"  {name:<42} {value:8.2f} ms  ({value - base:+.2f} over command())")
    if args.json:
        args.json.write_text(json.dumps({"runs": args.runs, "median_ms": med}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
