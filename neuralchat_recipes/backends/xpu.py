"""Intel GPU (XPU) backend: intel-extension-for-pytorch devices such as Arc."""

from __future__ import annotations

from .cpu import BITSANDBYTES_OPTIMS
from .base import Backend


class XpuBackend(Backend):
    device = "xpu"

    def resolve_optim(self, optim: str, notes: list[str]) -> str:
        if optim in BITSANDBYTES_OPTIMS:
            notes.append(f"optim {optim} needs bitsandbytes on CUDA; using adamw_torch on xpu")
            return "adamw_torch"
        return optim

    def device_problems(self) -> list[str]:
        import torch

        if not (hasattr(torch, "xpu") and torch.xpu.is_available()):
            return [f"hardware {self.hw.name!r} needs an Intel GPU (torch.xpu), and none is available here; "
                    "install the XPU build of torch / intel-extension-for-pytorch, or pick hardware=cpu"]
        return []
