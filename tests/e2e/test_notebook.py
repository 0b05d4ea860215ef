"""The example notebook runs, top to bottom, and shows what it says it shows."""

from __future__ import annotations

from pathlib import Path

import pytest

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("leak_check")]

NOTEBOOK = Path(__file__).parents[2] / "docs" / "examples" / "repair-demo-guest.ipynb"


def text_of(cell: dict[str, object]) -> str:
    outputs = cell.get("outputs", [])
    assert isinstance(outputs, list)
    parts = []
    for out in outputs:
        data = out.get("data", {}).get("text/plain") or out.get("text") or ""
        parts.append(data if isinstance(data, str) else "".join(data))
    return "\n".join(parts)


def test_example_notebook_executes(tmp_path: Path) -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    outputs = [text_of(c) for c in code]
    assert "<VMCraft launched drives=[/dev/sda=notebook-demo.qcow2]" in outputs[1]
    assert "<OSInfo /dev/sda2 debian 12." in outputs[2]
    assert "root=/dev/sda2" in outputs[3]
    assert "exit=1" in outputs[4]
    assert "cannot find a device for /" in outputs[4]
    assert "root=UUID=" in outputs[5]
    assert "not launched" in outputs[6]
