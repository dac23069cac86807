"""Hardware: devices (named capabilities, precision, trainer classes) and launchers (how processes start), apart.

A stage never asks which device it is on: it asks its device for a capability (``device.can(...)``),
for precision and for trainer classes; launchers build the commands. The plan-time half of every
device is pure Python, so ``mode=plan`` shows the exact Gaudi launch on a machine without Habana's stack.
"""

from __future__ import annotations

from .cpu import CpuDevice
from .cuda import CudaDevice
from .device import CAPABILITIES, Device, DeviceArgs
from .gaudi import GaudiDevice
from .launchers import launch_spec, launcher_for, missing_programs
from .xpu import XpuDevice

DEVICES: dict[str, type[Device]] = {cls.name: cls for cls in (CpuDevice, CudaDevice, XpuDevice, GaudiDevice)}


def get_device(hardware) -> Device:
    return DEVICES[hardware.device](hardware)


def runtime_problems(hardware, launchers: set[str]) -> list[str]:
    """What this machine lacks to run the profile: launcher programs, the device's software stack."""
    return missing_programs(hardware, launchers) + get_device(hardware).device_problems()


__all__ = [
    "CAPABILITIES",
    "DEVICES",
    "Device",
    "DeviceArgs",
    "get_device",
    "launch_spec",
    "launcher_for",
    "runtime_problems",
]
