"""Booting a guest image under qemu (software emulation) and watching its serial console."""

from __future__ import annotations

import os
import re
import select
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BootResult:
    outcome: str
    """The name of the first pattern seen, or ``timeout``."""
    seconds: float
    transcript: str

    def tail(self, lines: int = 25) -> str:
        return "\n".join(self.transcript.splitlines()[-lines:])


def boot(image: Path, fmt: str, patterns: dict[str, str], timeout: float = 300) -> BootResult:
    """Boot ``image`` on a virtio disk (as a converted VM gets) until a pattern shows."""
    argv = [
        "qemu-system-x86_64",
        "-machine",
        "pc,accel=tcg",
        "-m",
        "1024",
        "-smp",
        "2",
        "-nographic",
        "-no-reboot",
        "-nic",
        "none",
        "-drive",
        f"file={image},format={fmt},if=virtio,cache=unsafe",
    ]
    compiled = {name: re.compile(rx) for name, rx in patterns.items()}
    start = time.monotonic()
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    assert proc.stdout is not None
    out = b""
    try:
        while time.monotonic() - start < timeout:
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            if ready:
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                out += chunk
                text = out.decode(errors="replace")
                for name, rx in compiled.items():
                    if rx.search(text):
                        return BootResult(name, time.monotonic() - start, text)
            elif proc.poll() is not None:
                break
        return BootResult("timeout", time.monotonic() - start, out.decode(errors="replace"))
    finally:
        proc.kill()
        proc.wait()
