"""Test-session set-up shared by every test.

As root, the whole session moves into a private mount namespace before any
test runs: a bug that mounts onto a wrong path then costs a test, not the
machine. The tests still check the namespace's own mount table before and
after each test, so a leak fails the test instead of vanishing with the
namespace.
"""

from __future__ import annotations

import os

import pytest

from vmcraft import syscalls

IS_ROOT = os.geteuid() == 0


def pytest_configure(config: pytest.Config) -> None:
    if not IS_ROOT:
        return
    syscalls.unshare(syscalls.CLONE_NEWNS)
    syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if IS_ROOT:
        return
    skip = pytest.mark.skip(reason="needs root: it really mounts and chroots (CI runs as root)")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)
