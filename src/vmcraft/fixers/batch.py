"""fix-boot on many images at once: one child process per image, ``jobs`` at a time.

A process per image, not a thread: each repair attaches disks, mounts and
runs guest tools as it does alone, so one image's failure, hang or crash
(even a segfault in a guest tool's library) stays with that image, and what
one leaves behind is its own process's to clean up. The child is this
module run as ``python -m vmcraft.fixers.batch``: it reads its job (image,
format, options, report path) pickled on stdin from this same code, runs
:func:`vmcraft.fixers.fixboot.fix_boot`, and prints the report as JSON.

Children run in sessions of their own, so a terminal's Ctrl-C reaches only
the parent, which starts no further image, forwards one SIGINT to each
running child (each ends its guest command, puts back what its run
changed, and releases its disks, as a Ctrl-C does to a single fix-boot),
waits for all of them, and raises KeyboardInterrupt. A second Ctrl-C
while it waits sends SIGTERM, which a child honours the same way.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmcraft.errors import ExitCode, UsageError
from vmcraft.fixers.fixboot import FixBootOptions, fix_boot
from vmcraft.log import get_logger
from vmcraft.signals import terminate_as_interrupt

log = get_logger(__name__)


@dataclass(frozen=True)
class Job:
    """What one child repairs, and how."""

    image: str
    format: str | None
    options: FixBootOptions
    report_path: str | None


@dataclass(frozen=True)
class BatchResult:
    """How one image's repair ended."""

    image: str
    exit_code: int
    report: dict[str, Any] | None
    """The image's fix-boot report (as ``--json`` prints it); None if the child gave none."""
    error: str | None
    seconds: float

    @property
    def success(self) -> bool:
        return self.exit_code == 0 and self.report is not None and bool(self.report["success"])

    def to_dict(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "success": self.success,
            "exit_code": self.exit_code,
            "error": self.error,
            "seconds": round(self.seconds, 3),
            "report": self.report,
        }


def default_jobs() -> int:
    """One image per core this process may run on."""
    return max(1, len(os.sched_getaffinity(0)))


def report_file(report_dir: Path, image: str, taken: set[str]) -> Path:
    """``DIR/<image name>.json``; images of the same name in different folders get ``-2``..."""
    stem = Path(image).name
    name, n = f"{stem}.json", 1
    while name in taken:
        n += 1
        name = f"{stem}-{n}.json"
    taken.add(name)
    return report_dir / name


class _Children:
    """The running children, so a Ctrl-C can reach each one exactly once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen[bytes]] = set()
        self.stopping = False

    def start(self, argv: list[str]) -> subprocess.Popen[bytes] | None:
        with self._lock:
            if self.stopping:
                return None
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
            self._running.add(proc)
            return proc

    def done(self, proc: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._running.discard(proc)

    def signal_all(self, signum: int) -> None:
        with self._lock:
            self.stopping = True
            for proc in self._running:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signum)


def _run_one(children: _Children, job: Job) -> BatchResult | None:
    start = time.perf_counter()
    proc = children.start([sys.executable, "-m", "vmcraft.fixers.batch"])
    if proc is None:
        return None  # stopped before this image began: it was not touched
    try:
        out, err = proc.communicate(pickle.dumps(job))
    finally:
        children.done(proc)
    seconds = time.perf_counter() - start
    report: dict[str, Any] | None = None
    with contextlib.suppress(ValueError):
        report = json.loads(out)
    error = None
    if report is not None:
        error = report.get("error")
    if proc.returncode != 0 and error is None:
        lines = err.decode(errors="replace").strip().splitlines()
        error = lines[-1] if lines else f"exited with status {proc.returncode}"
    return BatchResult(job.image, proc.returncode, report, error, seconds)


def fix_boot_many(
    images: Sequence[str | os.PathLike[str]],
    *,
    format: str | None = None,
    options: FixBootOptions | None = None,
    jobs: int | None = None,
    report_dir: str | os.PathLike[str] | None = None,
    on_done: Callable[[BatchResult], None] | None = None,
) -> list[BatchResult]:
    """fix-boot on every image, ``jobs`` at a time; results in the images' order.

    One image failing does not stop the others. ``on_done`` is called (from
    a worker thread, one call at a time) as each image ends. With
    ``report_dir`` each image's report is written there as
    ``<image name>.json``. Ctrl-C stops every image (see the module's
    docstring) and is raised once all have ended.
    """
    if not images:
        raise UsageError("fix-boot: no image given")
    jobs = default_jobs() if jobs is None else jobs
    if jobs < 1:
        raise UsageError(f"--jobs must be at least 1, not {jobs}")
    options = options or FixBootOptions()
    taken: set[str] = set()
    folder = Path(report_dir) if report_dir is not None else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    work = [
        Job(
            os.fspath(image),
            format,
            options,
            os.fspath(report_file(folder, os.fspath(image), taken)) if folder else None,
        )
        for image in images
    ]
    children = _Children()
    report_lock = threading.Lock()

    def one(job: Job) -> BatchResult | None:
        result = _run_one(children, job)
        if result is not None and on_done is not None:
            with report_lock:
                on_done(result)
        return result

    pool = ThreadPoolExecutor(max_workers=min(jobs, len(work)), thread_name_prefix="fix-boot")
    futures = [pool.submit(one, job) for job in work]
    try:
        results = [future.result() for future in futures]
    except KeyboardInterrupt:
        log.warning("batch.interrupted", running="forwarding SIGINT")
        children.signal_all(signal.SIGINT)
        _wait_all(pool, children)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return [r for r in results if r is not None]


def _wait_all(pool: ThreadPoolExecutor, children: _Children) -> None:
    """Wait until every child has ended; another Ctrl-C meanwhile sends them SIGTERM."""
    while True:
        try:
            pool.shutdown(wait=True, cancel_futures=True)
            return
        except KeyboardInterrupt:
            children.signal_all(signal.SIGTERM)


def _child() -> int:
    """One image: the job from stdin, the report as JSON on stdout, its exit code."""
    terminate_as_interrupt()
    job = pickle.loads(sys.stdin.buffer.read())  # noqa: S301 - written by the parent, this code
    if not isinstance(job, Job):
        print("vmcraft batch child: not a job", file=sys.stderr)
        return ExitCode.USAGE
    try:
        report = fix_boot(
            job.image,
            format=job.format,
            options=job.options,
            report_path=job.report_path,
            raise_error=False,
        )
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    sys.stdout.write(report.to_json() + "\n")
    return report.exit_code


if __name__ == "__main__":
    # Through the module's own name: the parent pickled vmcraft.fixers.batch.Job,
    # which is not this __main__'s Job.
    from vmcraft.fixers.batch import _child as child

    sys.exit(child())
