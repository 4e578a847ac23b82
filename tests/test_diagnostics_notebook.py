"""The example notebook runs end to end on CPU (toy world)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).parents[1] / "examples" / "toy_selection.ipynb"


@pytest.fixture
def kernel(tmp_path, monkeypatch) -> str:
    """A kernel spec that runs this interpreter (a fresh CI machine may register none, or another python)."""
    spec = tmp_path / "kernels" / "tiplight-test"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "tiplight test", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    return "tiplight-test"


def test_example_notebook_runs(kernel, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name=kernel, timeout=300,
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    assert html.count('class="tiplight-heatmap"') >= 3 and 'data-quadrant="Q' in html
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 2  # heatmap and histogram figures
    text = "".join(o.get("text", "") for o in outputs)
    assert "## Overlap of kept sets (Jaccard)" in text
