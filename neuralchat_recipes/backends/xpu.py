"""Intel GPU (XPU): intel-extension-for-pytorch devices such as Arc."""

from __future__ import annotations

from .device import Device


class XpuDevice(Device):
    name = "xpu"

    def device_problems(self) -> list[str]:
        import torch

        if not (hasattr(torch, "xpu") and torch.xpu.is_available()):
            return [
                f"hardware {self.hw.name!r} needs an Intel GPU (torch.xpu), and none is available here; "
                "install the XPU build of torch / intel-extension-for-pytorch, or pick hardware=cpu"
            ]
        return []
