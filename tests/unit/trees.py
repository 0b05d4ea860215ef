"""Synthetic guest trees for the step tests: files put under ``tmp_path``, and their state."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def put(root: Path, rel: str, text: str | bytes = "", mode: int | None = None) -> Path:
    """Write ``root/rel`` (parents made), text or bytes, with ``mode`` if given."""
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    if mode is not None:
        path.chmod(mode)
    return path


def tree_hashes(root: Path, *, dirs: bool = True) -> dict[str, str]:
    """Every file under ``root`` -> its sha256, symlinks by target, directories as ``dir``."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = "-> " + os.readlink(path)
        elif path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif dirs and path.is_dir():
            out[rel] = "dir"
    return out
