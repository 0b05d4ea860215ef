"""Shared by the unit tests."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest
import structlog


@pytest.fixture(autouse=True)
def _restore_cli_state() -> Iterator[None]:
    """``cli.main()`` configures structlog and takes SIGTERM: give the next test its own."""
    saved = structlog.get_config()
    sigterm = signal.getsignal(signal.SIGTERM)
    yield
    structlog.reset_defaults()
    structlog.configure(**saved)
    signal.signal(signal.SIGTERM, sigterm)
