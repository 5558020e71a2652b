"""rnnkit.widgets imports from the checkout and from a built wheel in a fresh environment."""

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_widgets_import_from_the_checkout():
    import rnnkit.widgets

    assert Path(rnnkit.widgets.__file__).resolve() == ROOT / "widgets" / "__init__.py"


@pytest.mark.slow
def test_wheel_installs_widgets_as_a_subpackage(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(ROOT),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
        ],
        check=True,
    )
    wheel = next((tmp_path / "dist").glob("rnnkit-*.whl"))
    env_dir = tmp_path / "env"
    venv.create(env_dir, system_site_packages=True, with_pip=True)
    python = env_dir / "bin" / "python"
    clean_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True, env=clean_env
    )
    probe = (
        'import rnnkit, rnnkit.widgets; assert len(rnnkit.tasks.shakespeare("val")) == 55769; '
        "print(rnnkit.__file__); print(rnnkit.widgets.__file__)"
    )
    result = subprocess.run(
        [python, "-c", probe],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        env=clean_env,
    )
    core, widgets = result.stdout.split()
    site = env_dir.resolve()
    assert Path(core).resolve().is_relative_to(site)
    assert Path(widgets).resolve() == Path(core).resolve().parent / "widgets" / "__init__.py"
