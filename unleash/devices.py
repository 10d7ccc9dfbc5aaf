"""Choosing where to compute: `auto`, `cpu`, `cuda`, `cuda:N`, `mps`."""
from __future__ import annotations

import torch

from .errors import UserError
from .preflight import NO_CUDA, NO_MPS, check_device


def resolve_device(name: str = "auto") -> torch.device:
    name = check_device(name)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
            raise UserError(NO_MPS)
        return torch.device("mps")
    if not torch.cuda.is_available():  # cuda or cuda:N (check_device)
        raise UserError(NO_CUDA.format(name))
    device = torch.device(name)
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"device '{name}' does not exist: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def list_devices() -> list[dict]:
    """What a device selector offers: the CPU and each CUDA GPU with its name and memory."""
    devices = [{"id": "cpu", "name": "CPU", "memory_gb": None, "free_gb": None}]
    for index in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        free, total = torch.cuda.mem_get_info(index)
        devices.append({"id": f"cuda:{index}", "name": torch.cuda.get_device_name(index),
                        "memory_gb": round(total / 2**30, 1), "free_gb": round(free / 2**30, 1)})
    return devices


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)
