"""What opening a real guest disk costs, beside libguestfs on the same images.

On copies of the test fixture's Debian disk (raw and qcow2), in one run:

* ``add_drive_opts`` + ``launch`` + ``mount("/dev/sda2", "/")`` + ``shutdown``;
* one ``command_with_mounts(["grub-mkconfig", "-o", "/boot/grub/grub.cfg"])``
  on a launched, mounted handle;
* the same steps with libguestfs (Debian's python3-guestfs, run by the
  system Python), when its appliance can start here; otherwise the reason.

Run as root: ``python benchmarks/bench_disks.py [--runs N] [--peer-runs M] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import isolate
from tests.fixtures.guestdisk import debian_disk
from vmcraft import VMCraft

MKCONFIG = ["grub-mkconfig", "-o", "/boot/grub/grub.cfg"]

# The peer runs under the system Python, where Debian installs the bindings.
PEER = r"""
import json, os, sys, time
os.environ.setdefault("LIBGUESTFS_BACKEND", "direct")
import guestfs
image, fmt, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
out = {"open": [], "grub": []}
for i in range(runs):
    t = time.perf_counter()
    g = guestfs.GuestFS(python_return_dict=True)
    g.set_backend_settings(["force_tcg"])
    g.add_drive_opts(image, format=fmt, readonly=False)
    g.launch()
    g.mount("/dev/sda2", "/")
    g.shutdown(); g.close()
    out["open"].append(time.perf_counter() - t)
if fmt == "raw":
    g = guestfs.GuestFS(python_return_dict=True)
    g.set_backend_settings(["force_tcg"])
    g.add_drive_opts(image, format=fmt, readonly=False)
    g.launch()
    g.mount("/dev/sda2", "/")
    for i in range(runs):
        t = time.perf_counter()
        g.command(["grub-mkconfig", "-o", "/boot/grub/grub.cfg"])
        out["grub"].append(time.perf_counter() - t)
    lines = g.cat("/boot/grub/grub.cfg").splitlines()
    kernels = [l for l in lines if l.strip().startswith("linux")]
    out["cfg_root"] = kernels[0].split("root=")[1].split()[0] if kernels else None
    g.shutdown(); g.close()
print(json.dumps(out))
"""


def copy(src: Path, dst: Path) -> Path:
    subprocess.run(["cp", "--sparse=always", str(src), str(dst)], check=True)
    dst.chmod(0o644)
    return dst


def open_and_close(image: Path) -> None:
    with VMCraft() as g:
        g.add_drive_opts(image, readonly=False)
        g.launch()
        g.mount("/dev/sda2", "/")


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


def run_peer(images: dict[str, Path], runs: int) -> dict[str, object]:
    python = "/usr/bin/python3"
    probe = subprocess.run([python, "-c", "import guestfs"], capture_output=True, check=False)
    if probe.returncode != 0:
        return {"error": "python3-guestfs is not installed for the system Python"}
    results: dict[str, object] = {}
    for fmt, image in images.items():
        done = subprocess.run(
            [python, "-c", PEER, str(image), fmt, str(runs)],
            capture_output=True,
            text=True,
            check=False,
            timeout=3600,
        )
        if done.returncode != 0:
            tail = done.stderr.strip().splitlines()[-3:]
            return {"error": f"libguestfs failed on {fmt}: {' | '.join(tail)}"}
        results[fmt] = json.loads(done.stdout.strip().splitlines()[-1])
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--peer-runs", type=int, default=3, help="libguestfs runs (0: skip)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    isolate("attaches disks")

    disk = debian_disk()
    with tempfile.TemporaryDirectory(prefix="vmcraft-bench-", dir="/var/tmp") as tmp:
        images = {
            fmt: copy(disk.image(fmt), Path(tmp) / f"guest.{fmt}") for fmt in ("raw", "qcow2")
        }
        samples: dict[str, list[float]] = {f"{fmt}: launch+mount+shutdown": [] for fmt in images}
        samples["raw: command_with_mounts(grub-mkconfig)"] = []
        open_and_close(images["raw"])  # warm the page cache
        for _ in range(args.runs):
            for fmt, image in images.items():
                start = time.perf_counter()
                open_and_close(image)
                samples[f"{fmt}: launch+mount+shutdown"].append(time.perf_counter() - start)
        with VMCraft() as g:
            g.add_drive_opts(images["raw"], readonly=False)
            g.launch()
            g.mount("/dev/sda2", "/")
            for _ in range(args.runs):
                start = time.perf_counter()
                g.command_with_mounts(MKCONFIG)
                samples["raw: command_with_mounts(grub-mkconfig)"].append(
                    time.perf_counter() - start
                )
        peer = run_peer(images, args.peer_runs) if args.peer_runs else {"error": "skipped"}

    print(f"vmcraft: median of {args.runs} runs; libguestfs: median of {args.peer_runs} runs")
    print(f"{os.cpu_count()} cores, kernel {os.uname().release}, no KVM (libguestfs on TCG)")
    print()
    print("| step | vmcraft ms | libguestfs ms |")
    print("|---|---:|---:|")
    peer_cells: dict[str, str] = {}
    if "error" in peer:
        peer_cells = dict.fromkeys(samples, f"n/a ({peer['error']})")
    else:
        for fmt in images:
            data = peer[fmt]
            assert isinstance(data, dict)
            peer_cells[f"{fmt}: launch+mount+shutdown"] = f"{median_ms(data['open']):.0f}"
            if data.get("grub"):
                peer_cells["raw: command_with_mounts(grub-mkconfig)"] = (
                    f"{median_ms(data['grub']):.0f} (its root= {data.get('cfg_root')})"
                )
    for name, values in samples.items():
        print(f"| {name} | {median_ms(values):.0f} | {peer_cells.get(name, '')} |")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "runs": args.runs,
                    "median_ms": {k: median_ms(v) for k, v in samples.items()},
                    "peer": peer,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
