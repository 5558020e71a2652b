"""Fixtures for the whole suite, and the mode of Triton's own functions.

Without a CUDA device, ``tests/test_triton_engine.py`` runs rnnkit's kernels in Triton's CPU
interpreter. Triton fixes the mode of ``triton.language``'s functions (``tl.sum``, which the
kernels call) when it is first imported, and torch imports it early (creating an optimizer does),
so triton is imported here, under ``TRITON_INTERPRET=1``, before any test runs. The variable is
put back afterwards: subprocesses and notebooks see the environment they were given.
"""

import importlib.util
import os

import pytest
import torch

if not torch.cuda.is_available() and importlib.util.find_spec("triton") is not None:
    _before = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    import triton.language  # noqa: F401

    if _before is None:
        del os.environ["TRITON_INTERPRET"]
    else:
        os.environ["TRITON_INTERPRET"] = _before


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """One intra-op thread for the test: small kernels on a shared two-core machine run slower
    with threads waiting for each other than with one. (For speed only; nothing is timed.)"""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
