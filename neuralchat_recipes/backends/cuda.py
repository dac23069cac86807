"""NVIDIA GPU: bf16/fp16 autocast, NCCL, torchrun or the deepspeed launcher, bitsandbytes optimizers."""

from __future__ import annotations

from .device import CAPABILITIES, Device


class CudaDevice(Device):
    name = "cuda"
    capabilities = frozenset(CAPABILITIES) - {"compact_lm_head", "retained_freed_memory", "lora_dropout_16bit_draws"}

    def device_problems(self) -> list[str]:
        import torch

        found = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if found < self.hw.devices_per_node:
            return [
                f"hardware {self.hw.name!r} needs {self.hw.devices_per_node} CUDA device(s) per node, "
                f"this machine has {found}; pick a profile that matches it (e.g. hardware=cpu)"
            ]
        return []
