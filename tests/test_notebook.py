"""notebooks/quickstart.ipynb runs from top to bottom (on a small budget) and is committed
without outputs."""

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "quickstart.ipynb"


def test_quickstart_is_committed_without_outputs():
    nbformat = pytest.importorskip("nbformat", reason="needs nbformat (pip install 'lightning_ssr[dev]')")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


def test_quickstart_runs_every_cell(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat", reason="needs nbformat (pip install 'lightning_ssr[dev]')")
    nbclient = pytest.importorskip("nbclient", reason="needs nbclient (pip install 'lightning_ssr[dev]')")
    pytest.importorskip("ipykernel", reason="needs ipykernel (pip install 'lightning_ssr[dev]')")
    monkeypatch.setenv("QUICKSTART_EPOCHS", "2")  # the kernel inherits it: a small budget
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": tmp_path}})
    client.execute()  # raises CellExecutionError, naming the cell, if any cell fails
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "reloaded model gives identical outputs: True" in text
    shown = text + "".join(o.get("data", {}).get("text/plain", "") for c in nb.cells if c.cell_type == "code"
                           for o in c.outputs)  # (what Rich's live display writes lands in display data)
    assert "ipywidgets" not in shown and "Warning" not in shown  # quiet: no install tip, no warning
    assert "ONNX Runtime vs PyTorch" in text and "fewer MACs" in text
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert images, "the per-layer filter plot was not displayed"
