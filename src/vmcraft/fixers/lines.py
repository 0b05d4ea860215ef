"""Editing guest configuration files line by line, the same way in every step.

The steps that rewrite text files (names, lvm, network) read bytes that may
not be UTF-8 and may end lines in CRLF; what they write back must keep both
byte for byte outside the lines they change, and mark each changed line so
a person reading the guest later knows who changed it and why.
"""

from __future__ import annotations


def decode(data: bytes) -> tuple[str, bool]:
    """The file as text, and whether it was valid UTF-8 (else odd bytes survive a round trip)."""
    try:
        return data.decode(), True
    except UnicodeDecodeError:
        return data.decode(errors="surrogateescape"), False


def shown(line: str) -> str:
    """A line as the report shows it (no CR; odd bytes replaced)."""
    return line.rstrip("\r").encode(errors="surrogateescape").decode(errors="replace")


def commented(line: str, note: str | None) -> str:
    """``line`` turned into a comment, with ``# vmcraft: note`` after it; a CR stays last."""
    body, cr = (line[:-1], "\r") if line.endswith("\r") else (line, "")
    return f"#{body}" + (f"  # vmcraft: {note}" if note else "") + cr


def active(line: str, comments: str = "#") -> bool:
    """Neither blank nor a comment (``comments``: the characters that start one)."""
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith(tuple(comments))
