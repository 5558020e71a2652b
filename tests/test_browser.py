"""The whole Jupyter layer once, end to end, in a real browser (Debian's Chromium, driven by
Playwright).

* JupyterLab runs a notebook with a TrainingPanel; the test clicks Start, sees the step count
  advance, types a learning rate ten times lower into the slider's readout, sees the lr chart
  rescale to show it, clicks Stop, and checks the status and an idle kernel. Screenshots:
  artifacts/browser_panel.png (the page at the end), artifacts/browser_panel_lr.png (the panel
  after the lr change).
* A stored notebook as GitHub shows it: nbconvert to HTML with the widget-view output type
  ignored and no widget manager (offline: every request but the file itself is refused);
  the widgets must read as their text/HTML fallbacks, never as ``VBox(children=...``.
  Screenshots: artifacts/stored_<notebook>.png.

Every wait is for an event (the server answering, the notebook's kernel idle, an element or a
text appearing, the step count growing, a redraw); the timeouts are only guards against a hang,
generous enough for a cold start on a loaded machine (a first JupyterLab load, a kernel
importing torch), never a speed limit. A failure saves artifacts/browser_panel_failure.png and
reports the cell outputs and the server's log.
"""

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

CHROMIUM = "/usr/bin/chromium"
GUARD_S = 600  # seconds before a wait for an event is called a hang
GUARD_MS = GUARD_S * 1000
KERNEL_IDLE = re.compile(r"^(?!No Kernel).+ \| Idle$")  # the status bar's kernel item
ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "artifacts"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(),
        reason=f"{CHROMIUM} is absent: the browser test needs Debian's Chromium "
        "(apt-get install chromium, as .ci/run does)",
    ),
]

CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]

SETUP = """\
import torch
import rnnkit
from rnnkit.widgets import TrainingPanel

torch.set_num_threads(1)
rnnkit.seed_everything(0)
x, y = rnnkit.tasks.adding_problem(256, 20)
model = rnnkit.SequenceModel(2, 16, 1, cell="lstm")
trainer = rnnkit.Trainer(model, torch.optim.Adam(model.parameters(), lr=1e-2), "mse")
panel = TrainingPanel(
    trainer, (x, y), epochs=1000, batch_size=16, redraw_interval=0.2, render_budget=0.25
)
panel"""


# Rows of the chart's right third (the lr panel) that hold a horizontal run of the lr line's
# green (tab:green): one level per learning rate the line shows inside the axis.
LR_LEVELS = """img => {
  const canvas = document.createElement("canvas");
  canvas.width = img.naturalWidth;
  canvas.height = img.naturalHeight;
  const context = canvas.getContext("2d");
  context.drawImage(img, 0, 0);
  const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
  const levels = [];
  for (let y = 0; y < canvas.height; y++) {
    let green = 0;
    for (let x = Math.floor((canvas.width * 2) / 3); x < canvas.width; x++) {
      const i = (y * canvas.width + x) * 4;
      if (Math.abs(data[i] - 44) < 40 && Math.abs(data[i + 1] - 160) < 40 && data[i + 2] < 90) {
        green++;
      }
    }
    if (green >= 10 && (levels.length === 0 || y - levels[levels.length - 1] > 6)) levels.push(y);
  }
  return levels;
}"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


@pytest.fixture
def lab(tmp_path):
    """A JupyterLab server on 127.0.0.1 with a fresh root holding panel.ipynb."""
    root = tmp_path / "root"
    root.mkdir()
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(SETUP)]
    notebook.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(notebook, root / "panel.ipynb")
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    for var, sub in [
        ("JUPYTER_RUNTIME_DIR", "runtime"),
        ("JUPYTERLAB_WORKSPACES_DIR", "workspaces"),
        ("JUPYTERLAB_SETTINGS_DIR", "settings"),
    ]:
        env[var] = str(tmp_path / sub)
    log = open(tmp_path / "lab.log", "w")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--ServerApp.open_browser=False",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={port}",
            "--ServerApp.port_retries=0",
            "--allow-root",  # CI containers run as root
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={root}",
            "--LabApp.news_url=",
            "--LabApp.extension_manager=readonly",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + GUARD_S
        while True:
            try:
                _get_json(f"{base}/api/status?token={token}")
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    pytest.fail(f"jupyter lab did not start:\n{(tmp_path / 'lab.log').read_text()}")
                time.sleep(0.25)
        yield base, token
    finally:
        server.terminate()  # shuts its kernels down
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def test_panel_in_jupyterlab(lab, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    base, token = lab
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 900},
        )
        context.set_default_timeout(GUARD_MS)  # clicks and reads wait for their element too
        page = context.new_page()
        try:
            page.goto(f"{base}/lab/tree/panel.ipynb?token={token}", timeout=GUARD_MS)
            # On a cold start the toolbar's execution indicator reads idle before the notebook
            # has a kernel at all; the status bar says "<kernel name> | Idle" only once the
            # notebook's kernel is connected and idle, so Run All is not sent to a kernel still
            # being chosen.
            kernel_idle = page.locator(".jp-StatusBar-TextItem", has_text=KERNEL_IDLE)
            kernel_idle.wait_for(timeout=GUARD_MS)
            idle = page.locator('.jp-Notebook-ExecutionIndicator[data-status="idle"]')
            idle.wait_for(timeout=GUARD_MS)

            # Focus the notebook first: Run All acts on the notebook that has the focus.
            page.locator(".jp-Notebook .jp-Cell .jp-InputPrompt").first.click()
            page.get_by_role("menuitem", name="Run", exact=True).click()
            page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
            # The cell has run when its prompt shows its execution count.
            page.locator(".jp-Cell .jp-InputPrompt", has_text="[1]").wait_for(timeout=GUARD_MS)
            start = page.locator("button.widget-button", has_text="Start")
            start.wait_for(timeout=GUARD_MS)
            idle.wait_for(timeout=GUARD_MS)  # the cell has run; training has not started
            status = page.locator(".widget-html-content", has_text="step")
            assert "idle" in status.inner_text()

            start.click()

            def step() -> int:
                match = re.search(r"step (\d+)", status.inner_text())
                return int(match.group(1)) if match else -1

            page.wait_for_function(
                "el => el.textContent.includes('running')"
                " && Number((el.textContent.match(/step (\\d+)/) || [0, -1])[1]) >= 5",
                arg=status.element_handle(),
                timeout=GUARD_MS,
            )
            first = step()
            page.wait_for_function(
                "([el, n]) => Number((el.textContent.match(/step (\\d+)/) || [0, -1])[1]) > n",
                arg=[status.element_handle(), first],
                timeout=GUARD_MS,
            )
            # The first live draw comes a redraw interval after the start, however fast the steps.
            chart = page.locator(".widget-image")
            page.wait_for_function(
                "img => img.naturalWidth > 0", arg=chart.element_handle(), timeout=GUARD_MS
            )
            idle.wait_for(timeout=GUARD_MS)  # training in the background leaves the kernel free
            live_size = chart.bounding_box()

            # Type a learning rate ten times lower into the slider's readout, as a user would;
            # the lr panel must rescale to show the drop (the old chart sent it off the axis).
            drawn = chart.get_attribute("src")
            readout = page.locator(".widget-slider", has_text="learning rate").locator(
                ".widget-readout"
            )
            readout.click()
            page.keyboard.press("Control+A")
            page.keyboard.type("1.00e-3")
            page.keyboard.press("Enter")
            page.wait_for_function(
                "([img, old]) => img.src !== old && img.naturalWidth > 0",
                arg=[chart.element_handle(), drawn],
                timeout=GUARD_MS,
            )
            page.wait_for_function(  # a redraw with steps at the new lr in it
                "([img, old]) => img.src !== old",
                arg=[chart.element_handle(), chart.get_attribute("src")],
                timeout=GUARD_MS,
            )
            levels = page.evaluate(LR_LEVELS, chart.element_handle())
            panel_box = page.locator(".jp-OutputArea-output", has=chart).first
            panel_box.screenshot(path=str(ARTIFACTS / "browser_panel_lr.png"))
            assert len(levels) >= 2, f"the lr line shows {levels}: the drop is off the axis"
            checkbox = page.locator(".widget-checkbox", has_text="clip").bounding_box()
            clip_slider = page.locator(".widget-slider", has_text="max grad norm").bounding_box()
            gap = clip_slider["x"] - (checkbox["x"] + checkbox["width"])
            assert gap < 40, f"{gap:.0f} px between the clip box and its slider"

            page.locator("button.widget-button", has_text="Stop").click()
            page.locator(".widget-html-content", has_text="stopped").wait_for(timeout=GUARD_MS)
            summary = page.get_by_text("rnnkit training run: stopped")
            summary.wait_for(timeout=GUARD_MS)  # the static summary written under the panel
            page.get_by_text("lr set during training: 0.001 at step").wait_for(timeout=GUARD_MS)
            final = page.locator(".jp-RenderedImage img").last
            final.wait_for(timeout=GUARD_MS)
            final_size = final.bounding_box()
            assert (final_size["width"], final_size["height"]) == (
                live_size["width"],
                live_size["height"],
            ), "the final chart has the live chart's size"
            assert start.is_enabled()
            idle.wait_for(timeout=GUARD_MS)
            kernels = _get_json(f"{base}/api/kernels?token={token}")
            assert [k["execution_state"] for k in kernels] == ["idle"]
        except Exception as exc:
            page.screenshot(path=str(ARTIFACTS / "browser_panel_failure.png"), full_page=True)
            outputs = page.locator(".jp-OutputArea").all_inner_texts()
            raise AssertionError(
                f"{exc}\n--- cell outputs ---\n{outputs}\n--- jupyter lab log ---\n"
                f"{(tmp_path / 'lab.log').read_text()[-4000:]}"
            ) from exc
        finally:
            page.screenshot(path=str(ARTIFACTS / "browser_panel.png"), full_page=True)
            context.close()
    shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)


def _without_widget_views(notebook):
    """The notebook as a front-end without a widget manager reads it (GitHub)."""
    notebook.metadata.pop("widgets", None)
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            output.get("data", {}).pop("application/vnd.jupyter.widget-view+json", None)
    return notebook


def render_offline(notebook_path: Path, html_path: Path, screenshot: Path) -> str:
    """nbconvert ``notebook_path`` to HTML without widget views; screenshot it in Chromium
    with every request but the page itself refused. Returns the page's visible text."""
    from nbconvert import HTMLExporter

    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    notebook = _without_widget_views(nbformat.read(notebook_path, as_version=4))
    body, _ = HTMLExporter(template_name="lab").from_notebook_node(notebook)
    html_path.write_text(body, encoding="utf-8")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS
        )
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.route(
                "**/*",
                lambda route: (
                    route.continue_() if route.request.url.startswith("file:") else route.abort()
                ),
            )
            page.goto(html_path.as_uri(), wait_until="load", timeout=GUARD_MS)
            page.screenshot(path=str(screenshot), full_page=True)
            return page.inner_text("body")
        finally:
            browser.close()


STORED = {
    "11_training_controls.ipynb": [
        "TrainingPanel: SequenceModel",
        "rnnkit training run: finished at epoch 4/4",
        "GradientFlowExplorer: cell rnn",
        "PaddingExplorer: lengths long-tailed",
        "HiddenStateExplorer: sequence 0",
    ],
    "04_choosing_size.ipynb": ["Sweep controls: layers (1, 2)"],
}


@pytest.mark.parametrize("name", sorted(STORED))
def test_stored_notebook_reads_well_without_a_kernel(name, tmp_path):
    ARTIFACTS.mkdir(exist_ok=True)
    stem = name.split(".")[0]
    text = render_offline(
        ROOT / "notebooks" / name,
        tmp_path / f"{stem}.html",
        ARTIFACTS / f"stored_{stem}.png",
    )
    assert "VBox(children" not in text and "HBox(children" not in text
    for expected in STORED[name]:
        assert expected in text, f"{expected!r} is not shown"
    for cell in nbformat.read(ROOT / "notebooks" / name, as_version=4).cells:
        if "TrainingPanel(" not in cell.source or not cell.get("outputs"):
            continue
        # a panel's fallback repeats no chart: the run's one PNG is the output of its own
        fallback = [
            o["data"]["text/html"] for o in cell.outputs if "text/html" in o.get("data", {})
        ]
        pngs = [o for o in cell.outputs if "image/png" in o.get("data", {})]
        assert fallback and all("<img" not in page for page in fallback)
        assert len(pngs) <= 1
