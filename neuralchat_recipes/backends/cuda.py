"""NVIDIA GPU backend: bf16/fp16 autocast, NCCL, torchrun or the deepspeed launcher."""

from __future__ import annotations

from .base import Backend


class CudaBackend(Backend):
    device = "cuda"

    def device_problems(self) -> list[str]:
        import torch

        found = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if found < self.hw.devices_per_node:
            return [f"hardware {self.hw.name!r} needs {self.hw.devices_per_node} CUDA device(s) per node, "
                    f"this machine has {found}; pick a profile that matches it (e.g. hardware=cpu)"]
        return []
