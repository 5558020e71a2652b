"""What this environment runs rnnkit on: versions, device, threads, cuDNN."""

from __future__ import annotations

import platform

import torch


def environment() -> dict[str, str]:
    """Versions of rnnkit, torch and Python, the device, thread count and cuDNN availability."""
    from rnnkit import __version__

    if torch.cuda.is_available():
        device = f"cuda ({torch.cuda.get_device_name(0)})"
    else:
        device = "cpu"
    cudnn = torch.backends.cudnn.is_available()
    return {
        "rnnkit": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": device,
        "threads": str(torch.get_num_threads()),
        "cudnn": f"available ({torch.backends.cudnn.version()})" if cudnn else "not available",
    }


def format_environment() -> str:
    """:func:`environment` as aligned ``key: value`` lines."""
    env = environment()
    width = max(map(len, env))
    return "\n".join(f"{key:<{width}} : {value}" for key, value in env.items())
