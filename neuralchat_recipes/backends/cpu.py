"""Xeon CPU backend: fp32 unless the CPU has native bf16 (AMX / AVX512-BF16); DDP over oneCCL."""

from __future__ import annotations

import importlib.util
import logging
from functools import lru_cache
from typing import Any

from .base import Backend

@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_native_bf16(flags: frozenset[str] | None = None) -> bool:
    """bf16 math is fast only with AMX or AVX512-BF16; elsewhere it is emulated and slower than fp32."""
    flags = cpu_flags() if flags is None else flags
    return bool({"amx_bf16", "avx512_bf16"} & flags)


class CpuBackend(Backend):
    device = "cpu"
    has_bitsandbytes = False

    def precision(self) -> str:
        if self.hw.precision == "auto":
            return "bf16" if cpu_has_native_bf16() else "fp32"
        return self.hw.precision

    def training_extras(self, stage, zero: bool) -> dict[str, Any]:
        extras = super().training_extras(stage, zero)
        extras["use_cpu"] = True
        return extras

    def env(self, stage, zero_stage, model) -> dict[str, str]:
        env = super().env(stage, zero_stage, model)
        if self.hw.ccl_worker_count:
            env["CCL_WORKER_COUNT"] = str(self.hw.ccl_worker_count)
        if self.hw.num_nodes > 1 or self.hw.launcher == "mpirun":
            # MPI starts the ranks but torch.distributed still meets at rank 0's address (env:// rendezvous)
            local = "127.0.0.1" if self.hw.num_nodes == 1 else "<node0 address: set hardware.master_addr>"
            env["MASTER_ADDR"] = self.hw.master_addr or local
            env["MASTER_PORT"] = str(self.hw.master_port)
        return env

    def runtime_training_kwargs(self, args: dict[str, Any]) -> dict[str, Any]:
        kwargs = super().runtime_training_kwargs(args)
        if kwargs.get("ddp_backend") == "ccl" and importlib.util.find_spec("oneccl_bindings_for_pytorch") is None:
            logging.getLogger("neuralchat_recipes").warning(
                "ddp_backend ccl: oneccl_bindings_for_pytorch is not installed here, using gloo (slower on Xeon); "
                "install Intel's oneCCL bindings (docker/Dockerfile.xeon has them) for oneCCL")
            kwargs["ddp_backend"] = "gloo"
        return kwargs
