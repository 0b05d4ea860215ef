"""The installed version, from the package metadata (pyproject.toml is the one source)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def package_version() -> str:
    try:
        return version("vmcraft")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"
