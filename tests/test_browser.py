"""The whole Jupyter layer once, end to end: JupyterLab in a real browser (Debian's Chromium,
driven by Playwright) runs a notebook with a TrainingPanel; the test clicks Start, sees the
step count advance, clicks Stop, and checks the status and an idle kernel. A screenshot is
saved to artifacts/browser_panel.png.

Every wait is for an event (the server answering, an element or a text appearing, the step
count growing); the timeouts are only guards against a hang, generous enough for a cold start
on a loaded machine (a first JupyterLab load, a kernel importing torch), never a speed limit."""

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
panel = TrainingPanel(trainer, (x, y), epochs=1000, batch_size=16, redraw_interval=0.2)
panel"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def _wait_for_notebook_kernel(base: str, token: str) -> None:
    """Until the server reports a kernel for panel.ipynb, started and idle: on a cold start the
    page's execution indicator can read idle before the notebook has a kernel at all, and a Run
    All then waits on a kernel that is still being chosen."""
    deadline = time.monotonic() + GUARD_S
    while True:
        sessions = _get_json(f"{base}/api/sessions?token={token}")
        states = [
            (s.get("kernel") or {}).get("execution_state")
            for s in sessions
            if s.get("path", "").endswith("panel.ipynb")
        ]
        if "idle" in states:
            return
        assert time.monotonic() < deadline, f"no idle kernel for panel.ipynb: {sessions}"
        time.sleep(0.25)


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
            idle = page.locator('.jp-Notebook-ExecutionIndicator[data-status="idle"]')
            idle.wait_for(timeout=GUARD_MS)
            _wait_for_notebook_kernel(base, token)

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

            page.locator("button.widget-button", has_text="Stop").click()
            page.locator(".widget-html-content", has_text="stopped").wait_for(timeout=GUARD_MS)
            summary = page.get_by_text("rnnkit training run: stopped")
            summary.wait_for(timeout=GUARD_MS)  # the static summary written under the panel
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
