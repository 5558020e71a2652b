"""The IPython extension in a real InteractiveShell."""

import platform

import pytest
import torch
from IPython.core.error import UsageError
from IPython.testing.globalipapp import get_ipython

import rnnkit


@pytest.fixture(scope="module")
def ip():
    shell = get_ipython()
    shell.run_line_magic("load_ext", "rnnkit")
    return shell


def test_load_twice_is_harmless(ip):
    ip.run_line_magic("load_ext", "rnnkit")
    ip.run_line_magic("reload_ext", "rnnkit")
    assert "rnnkit" in ip.magics_manager.magics["line"]


def test_info_prints_versions_device_threads_cudnn(ip, capsys):
    ip.run_line_magic("rnnkit", "info")
    out = capsys.readouterr().out
    assert rnnkit.__version__ in out
    assert torch.__version__ in out
    assert platform.python_version() in out
    assert "device" in out and ("cpu" in out or "cuda" in out)
    assert f"threads : {torch.get_num_threads()}" in out
    assert "cudnn" in out


def test_bad_subcommand_is_a_usage_error(ip):
    with pytest.raises(UsageError, match="unknown subcommand 'fly'"):
        ip.run_line_magic("rnnkit", "fly")
    with pytest.raises(UsageError, match="needs a subcommand"):
        ip.run_line_magic("rnnkit", "")


def test_unload(ip):
    ip.run_line_magic("unload_ext", "rnnkit")
    assert "rnnkit" not in ip.magics_manager.magics["line"]
    ip.run_line_magic("load_ext", "rnnkit")
    assert "rnnkit" in ip.magics_manager.magics["line"]
