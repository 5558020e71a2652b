"""rnnkit.widgets imports from the checkout and from a built wheel in a fresh environment.

The wheel test must pass wherever the README's test command runs: in a virtual environment
(where a nested venv with system site packages would see the *base* interpreter's packages, not
the outer venv's: no torch) and in a plain interpreter. So the fresh environment is an isolated
venv that reaches the running interpreter's own site directories through a ``.pth`` file: it gets
torch and the other dependencies from wherever they are installed, while its own site-packages,
first on ``sys.path``, holds the wheel. A failing step reports its command, stdout and stderr.
"""

import importlib.metadata
import os
import site
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# pyproject's `license = "MIT"` (a PEP 639 expression) needs setuptools >= 77
SETUPTOOLS_FOR_LICENSE_EXPRESSIONS = 77


def test_widgets_import_from_the_checkout():
    import rnnkit.widgets

    assert Path(rnnkit.widgets.__file__).resolve() == ROOT / "widgets" / "__init__.py"


def _run(command: list, **kw) -> subprocess.CompletedProcess:
    """``command``; on failure an AssertionError with its output (the child's stderr included)."""
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, **kw)
    if result.returncode != 0:
        raise AssertionError(
            f"command failed with exit status {result.returncode}: {' '.join(map(str, command))}"
            f"\n--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
        )
    return result


def _site_directories() -> list[str]:
    """Where the running interpreter finds its installed packages (venv or not)."""
    dirs = [*site.getsitepackages(), sysconfig.get_paths()["purelib"]]
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    return list(dict.fromkeys(d for d in dirs if Path(d).is_dir()))


def _setuptools_major() -> int:
    try:
        return int(importlib.metadata.version("setuptools").split(".")[0])
    except importlib.metadata.PackageNotFoundError:
        return 0


def test_pyproject_asks_for_the_setuptools_its_license_field_needs():
    text = (ROOT / "pyproject.toml").read_text()
    assert 'license = "MIT"' in text
    assert f'requires = ["setuptools>={SETUPTOOLS_FOR_LICENSE_EXPRESSIONS}"]' in text


def _build_wheel(out: Path) -> Path:
    command = [sys.executable, "-m", "pip", "wheel", ROOT, "--no-deps", "-q", "-w", out]
    if _setuptools_major() >= SETUPTOOLS_FOR_LICENSE_EXPRESSIONS:
        command.append("--no-build-isolation")  # offline: the installed setuptools suffices
    _run(command)  # else pip fetches pyproject's build requirements into an isolated build
    return next(out.glob("rnnkit-*.whl"))


@pytest.mark.slow
def test_wheel_installs_widgets_as_a_subpackage(tmp_path):
    wheel = _build_wheel(tmp_path / "dist")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    for folder, package in (("rnnkit", "rnnkit"), ("widgets", "rnnkit/widgets")):
        for source in (ROOT / folder).rglob("*.py"):
            inside = f"{package}/{source.relative_to(ROOT / folder).as_posix()}"
            assert inside in names, f"{inside} is missing from the wheel"
    assert "rnnkit/tasks/data/README.md" in names
    assert any(n.startswith("rnnkit/tasks/data/") and n.endswith(".gz") for n in names)

    env_dir = tmp_path / "env"
    venv.create(env_dir, system_site_packages=False, with_pip=True)
    python = env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    clean_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    child_site = _run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        env=clean_env,
    ).stdout.strip()
    (Path(child_site) / "outer_site_packages.pth").write_text("\n".join(_site_directories()))
    _run([python, "-m", "pip", "install", "-q", "--no-deps", wheel], env=clean_env)
    probe = (
        'import rnnkit, rnnkit.widgets; assert len(rnnkit.tasks.shakespeare("val")) == 55769; '
        "import rnnkit.engines; print(rnnkit.__file__); print(rnnkit.widgets.__file__)"
    )
    result = _run([python, "-c", probe], cwd=tmp_path, env=clean_env)
    core, widgets = result.stdout.split()
    assert Path(core).resolve().is_relative_to(Path(child_site).resolve())
    assert Path(widgets).resolve() == Path(core).resolve().parent / "widgets" / "__init__.py"
