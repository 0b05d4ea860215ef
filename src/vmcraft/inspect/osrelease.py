"""os-release(5) and the libguestfs names of distributions."""

from __future__ import annotations

import shlex

# os-release ID -> libguestfs's inspect_get_distro name.
DISTRO_NAMES = {
    "debian": "debian",
    "ubuntu": "ubuntu",
    "linuxmint": "linuxmint",
    "kali": "kalilinux",
    "fedora": "fedora",
    "rhel": "rhel",
    "centos": "centos",
    "rocky": "rocky",
    "almalinux": "redhat-based",  # not in libguestfs's documented list
    "ol": "oraclelinux",
    "scientific": "scientificlinux",
    "sles": "sles",
    "sled": "sles",
    "opensuse": "opensuse",
    "opensuse-leap": "opensuse",
    "opensuse-tumbleweed": "opensuse",
    "arch": "archlinux",
    "alpine": "alpinelinux",
    "gentoo": "gentoo",
    "void": "voidlinux",
    "mageia": "mageia",
    "altlinux": "altlinux",
}


def parse_os_release(text: str) -> dict[str, str]:
    values = {}
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, raw = line.partition("=")
        try:
            parts = shlex.split(raw, posix=True)
        except ValueError:
            continue  # unbalanced quotes: skip the line, as systemd does
        values[key.strip()] = parts[0] if parts else ""
    return values


def distro_name(os_release: dict[str, str]) -> str:
    ident = os_release.get("ID", "").lower()
    if ident in DISTRO_NAMES:
        return DISTRO_NAMES[ident]
    for like in os_release.get("ID_LIKE", "").lower().split():
        if like in ("rhel", "fedora", "centos"):
            return "redhat-based"
        if like in ("suse", "opensuse"):
            return "suse-based"
    return "unknown"


def version_numbers(version: str) -> tuple[int, int]:
    """``"12"`` -> (12, 0); ``"22.04"`` -> (22, 4); ``"15.5"`` -> (15, 5)."""
    head = version.strip().split(" ")[0]
    fields = head.split(".")
    numbers = []
    for field in fields[:2]:
        digits = "".join(ch for ch in field if ch.isdigit())
        numbers.append(int(digits) if digits else 0)
    while len(numbers) < 2:
        numbers.append(0)
    return numbers[0], numbers[1]
