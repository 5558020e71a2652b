"""Stale-notebook checks: what can be told from the stored notebooks without running them.

``pytest --nbval-lax`` (pyproject's addopts) executes every notebook and fails on an exception
or a failed ``assert``, but it compares no outputs: a notebook whose stored outputs are missing,
out of date or from cells run out of order still passes it, and readers (GitHub, JupyterLab)
see those stale outputs. This file checks, for every notebook in ``notebooks/``:

* the kernelspec is the one JupyterLab writes (``python3``, "Python 3 (ipykernel)"), so that
  opening the notebook does not mark it modified;
* every non-empty code cell was executed, once, in order, from a fresh kernel (execution counts
  1, 2, 3, ...: what Run All / ``nbconvert --execute`` stores);
* outputs are present and none is an error; a cell that shows a figure stored its image;
* the index (``00_index.ipynb``) lists in its course table exactly the notebooks on disk, and its
  stored output says that no notebook is still to come.

What it cannot catch: stored outputs that differ from what a re-run would print (a number that
moved after a library change, a figure drawn from older code) when the notebook was executed in
order before the change. Only re-executing (``jupyter nbconvert --execute --inplace``) and
reading the diff shows that; the course's claims themselves are the ``assert``s that nbval runs.
"""

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
PATHS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def code_cells(notebook: dict) -> list[dict]:
    return [c for c in notebook["cells"] if c["cell_type"] == "code" and "".join(c["source"])]


def test_there_are_notebooks():
    assert len(PATHS) >= 10 and PATHS[0].name == "00_index.ipynb"


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_kernelspec_is_what_jupyterlab_writes(path):
    spec = load(path)["metadata"].get("kernelspec")
    assert spec == KERNELSPEC, f"{path.name}: kernelspec {spec}, expected {KERNELSPEC}"


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_every_code_cell_executed_in_order(path):
    counts = [c["execution_count"] for c in code_cells(load(path))]
    assert None not in counts, (
        f"{path.name}: cells {[i for i, n in enumerate(counts) if n is None]}"
    )
    assert counts == list(range(1, len(counts) + 1)), (
        f"{path.name}: execution counts {counts}; re-execute it top to bottom "
        "(jupyter nbconvert --to notebook --execute --inplace)"
    )


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_outputs_present_and_no_errors(path):
    cells = code_cells(load(path))
    outputs = [o for c in cells for o in c["outputs"]]
    assert outputs, f"{path.name} has no stored outputs"
    errors = [o.get("ename") for o in outputs if o["output_type"] == "error"]
    assert not errors, f"{path.name} stored errors: {errors}"
    for i, cell in enumerate(cells):
        if re.search(r"^plt\.show\(\)", "".join(cell["source"]), re.M):  # top level only
            images = [o for o in cell["outputs"] if "image/png" in o.get("data", {})]
            assert images, f"{path.name}: code cell {i} shows a figure but stored no image"


def test_index_lists_exactly_the_notebooks_on_disk():
    index = load(NOTEBOOKS / "00_index.ipynb")
    table = "".join(index["cells"][0]["source"])
    listed = re.findall(r"^\| \[(\d\d_\w+)\]\(\1\.ipynb\) \|", table, re.M)
    on_disk = [p.stem for p in PATHS if p.stem != "00_index"]
    assert listed == sorted(listed), f"the course table is out of order: {listed}"
    assert set(listed) == set(on_disk), (
        f"listed but not on disk: {sorted(set(listed) - set(on_disk))}; "
        f"on disk but not listed: {sorted(set(on_disk) - set(listed))}"
    )
    printed = "".join("".join(o.get("text", "")) for c in code_cells(index) for o in c["outputs"])
    assert "still to come: none" in printed, (
        "00_index's stored output names notebooks still to come: re-execute it"
    )
