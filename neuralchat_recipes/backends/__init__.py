"""Hardware backends: everything that differs between CPU, CUDA, XPU and Gaudi.

A stage never asks which device it is on; it asks its backend for precision, the trainer
extras, the launch command and (at run time) the trainer classes. The plan-time half of
every backend is pure Python (no torch import), so ``mode=plan`` can show the exact Gaudi
launch on a machine without Habana's stack.
"""

from __future__ import annotations

from .base import Backend
from .cpu import CpuBackend
from .cuda import CudaBackend
from .gaudi import GaudiBackend
from .xpu import XpuBackend

BACKENDS: dict[str, type[Backend]] = {
    "cpu": CpuBackend,
    "cuda": CudaBackend,
    "xpu": XpuBackend,
    "hpu": GaudiBackend,
}


def get_backend(hardware) -> Backend:
    return BACKENDS[hardware.device](hardware)


__all__ = ["Backend", "BACKENDS", "get_backend"]
