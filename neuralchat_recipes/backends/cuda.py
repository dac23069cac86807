"""NVIDIA GPU backend: bf16/fp16 autocast, NCCL, torchrun or the deepspeed launcher."""

from __future__ import annotations

from .base import Backend


class CudaBackend(Backend):
    device = "cuda"
