"""Developer sessions: ``nox -s tests lint typecheck bench``."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.default_venv_backend = "venv"

SOURCES = ["src", "tests", "benchmarks", "noxfile.py"]


@nox.session
def tests(session: nox.Session) -> None:
    """The whole suite; as root the integration tests really mount."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def matrix(session: nox.Session) -> None:
    """Every guest x hardware boot, before and after fix-boot (needs root; ~20 minutes)."""
    session.install("-e", ".[test]")
    session.run(
        "python",
        "-m",
        "pytest",
        "-m",
        "",
        "tests/e2e/test_vmware_guests_baseline.py",
        "tests/e2e/test_vmware_repair.py",
        "tests/e2e/test_vmware_repair_lvm.py",
        "tests/e2e/test_vmware_repair_nic.py",
        *session.posargs,
    )


@nox.session(name="matrix-table")
def matrix_table(session: nox.Session) -> None:
    """The boot matrix as one table: guest x hardware x before/after (needs root; ~40 min)."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "tests.matrix", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", *SOURCES)
    session.run("ruff", "format", "--check", *SOURCES)


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".[dev]")
    session.run("mypy")


@nox.session
def bench(session: nox.Session) -> None:
    """Per-command cost of the enhanced chroot beside its peers (needs root)."""
    session.install("-e", ".")
    session.run("python", "benchmarks/bench_chroot.py", *session.posargs)
    session.run("python", "benchmarks/bench_disks.py")


@nox.session(name="bench-fixboot")
def bench_fixboot(session: nox.Session) -> None:
    """fix-boot of guest (a) beside its guest tools run bare, check, peak memory (needs root)."""
    session.install("-e", ".[test]")
    session.run("python", "benchmarks/bench_fixboot_vmware.py", *session.posargs)
