"""docs/layout.md names every module and folder of the package, and nothing that is gone."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "src" / "vmcraft"


def _tree_block() -> str:
    text = (REPO / "docs" / "layout.md").read_text()
    return text.split("```", 2)[1]


def test_every_module_and_folder_is_in_layout_doc() -> None:
    block = _tree_block()
    names = set(re.findall(r"[\w.-]+\.(?:py|sh)\b|[\w-]+/", block))
    missing = []
    for path in sorted(PACKAGE.rglob("*")):
        if "__pycache__" in path.parts or (path.name == "__init__.py" and path.parent != PACKAGE):
            continue
        if path.is_dir():
            if f"{path.name}/" not in names:
                missing.append(f"{path.relative_to(PACKAGE)}/")
        elif path.suffix in (".py", ".sh") and path.name not in names:
            missing.append(str(path.relative_to(PACKAGE)))
    assert missing == [], f"docs/layout.md does not mention: {missing}"


def test_layout_doc_names_no_module_that_is_gone() -> None:
    block = _tree_block().split("tests/")[0]
    existing = {p.name for p in PACKAGE.rglob("*") if p.suffix in (".py", ".sh")}
    named = set(re.findall(r"[\w.-]+\.(?:py|sh)\b", block))
    assert named - existing == set()
