"""Seeds and random-number-generator states: reproducible runs and exact resume.

A run is reproducible when every generator it draws from starts from a known state: Python's
``random``, NumPy's global generator, torch's CPU generator and each CUDA device's generator.
:func:`seed_everything` seeds them all; :func:`get_rng_state` / :func:`set_rng_state` capture and
restore them in a form that ``torch.load(weights_only=True)`` accepts (tensors, ints, tuples),
which is what checkpoints store.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed ``random``, NumPy, torch (CPU and every CUDA device) with ``seed``.

    ``deterministic=True`` also asks for bit-reproducible kernels:
    ``torch.use_deterministic_algorithms(True)`` (an operation without a deterministic
    implementation then raises), ``torch.backends.cudnn.deterministic = True``,
    ``torch.backends.cudnn.benchmark = False`` and ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (cuBLAS
    needs a fixed workspace to be deterministic; set before the first cuBLAS call).
    ``deterministic=False`` seeds only and leaves those flags as they are. On CPU, seeding alone
    makes two runs of the same program bit-identical.
    """
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds every CUDA device too
    if deterministic:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def get_rng_state() -> dict:
    """The states of all global generators, as tensors and plain Python values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore the generators from :func:`get_rng_state`'s dict (CUDA where saved and present)."""
    random.setstate(_as_tuples(state["python"]))
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["kind"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        saved = state["cuda"]
        if len(saved) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(saved)
        else:  # another number of devices: restore those both have
            for index, device_state in enumerate(saved[: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(device_state, index)


def _as_tuples(value):
    # random.setstate needs tuples; a state that went through a list-producing format is fixed.
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuples(v) for v in value)
    return value
