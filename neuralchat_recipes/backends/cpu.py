"""Xeon CPU backend: fp32 unless the CPU has native bf16 (AMX / AVX512-BF16); DDP over oneCCL."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import platform
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

from .device import CAPABILITIES, Device, DeviceArgs


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


# Below this size a model trains slower in bf16 than in fp32 even on a CPU with native bf16: the casts cost more
# than its small matmuls save. bench/precision.py on this machine's AVX512-BF16 EPYC, bf16 / fp32 SFT tokens/s:
# the 150k-parameter demo model 0.66, the 20.3M bench model 1.54, SmolLM2-135M 1.49. The crossover lies between
# the first two; 10M is a guess inside that gap, not a measured point. Models of unknown size get bf16.
BF16_MIN_PARAMS_BILLION = 0.01

# glibc's mallopt parameters (malloc.h) and their defaults
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
DEFAULT_THRESHOLD = 128 * 1024
KEEP = 2**31 - 1  # the largest value mallopt takes (an int)


@contextlib.contextmanager
def retained_freed_memory() -> Iterator[bool]:
    """While training on the CPU, glibc's malloc keeps freed memory for the next step.

    By default glibc gives every block above a (dynamic, at most 32 MB) threshold its own mmap and
    returns it to the OS when freed, so each step maps its large activations afresh and the kernel
    zero-fills every page on first touch: 30-40% of an SFT step of the benchmark model here
    (bench/). With both thresholds at their maximum, large blocks come from the heap and stay
    there for reuse (peak RSS grows by what fragmentation holds, ~10% there). Afterwards the
    defaults come back and the heap is trimmed. Yields whether it applied (glibc only)."""
    if platform.libc_ver()[0] != "glibc":
        yield False
        return
    import ctypes

    libc = ctypes.CDLL(None)
    applied = bool(libc.mallopt(M_MMAP_THRESHOLD, KEEP) and libc.mallopt(M_TRIM_THRESHOLD, KEEP))
    try:
        yield applied
    finally:
        libc.mallopt(M_MMAP_THRESHOLD, DEFAULT_THRESHOLD)
        libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_THRESHOLD)
        libc.malloc_trim(0)


class CpuDevice(Device):
    name = "cpu"
    # TRL's compact LM head path is safe here: shapes change from batch to batch on a CPU anyway
    # (DeepSpeed 0.19's tensor-parallel inference segfaults on this CPU path: generation runs in one process)
    capabilities = frozenset(CAPABILITIES) - {"bitsandbytes", "tensor_parallel_generation"}

    def precision(self, params_billion: float | None = None) -> str:
        """auto: bf16 where the CPU has it natively (AMX / AVX512-BF16) and the model is big enough for its
        matmuls to outweigh bf16's conversions; fp32 otherwise (BF16_MIN_PARAMS_BILLION: measured in bench/)."""
        if self.hw.precision != "auto":
            return self.hw.precision
        small = params_billion is not None and params_billion < BF16_MIN_PARAMS_BILLION
        return "bf16" if cpu_has_native_bf16() and not small else "fp32"

    def training_args(self, stage, distributed: bool) -> DeviceArgs:
        return super().training_args(stage, distributed).model_copy(update={"use_cpu": True})

    def env(self, zero_stage, model) -> dict[str, str]:
        env = super().env(zero_stage, model)
        if self.hw.ccl_worker_count:
            env["CCL_WORKER_COUNT"] = str(self.hw.ccl_worker_count)
        if self.hw.num_nodes > 1 or self.hw.launcher == "mpirun":
            # MPI starts the ranks but torch.distributed still meets at rank 0's address (env:// rendezvous)
            local = "127.0.0.1" if self.hw.num_nodes == 1 else "<node0 address: set hardware.master_addr>"
            env["MASTER_ADDR"] = self.hw.master_addr or local
            env["MASTER_PORT"] = str(self.hw.master_port)
        return env

    def stage_memory(self) -> contextlib.AbstractContextManager:
        return retained_freed_memory() if self.hw.retain_freed_memory else contextlib.nullcontext()

    def stage_threads(self, params_billion: float | None) -> contextlib.AbstractContextManager[int]:
        """The CPU does the work: its threads are chosen for this host and model (backends/threads.py)."""
        from .threads import choose_threads, using_threads

        return using_threads(choose_threads(self.hw.omp_num_threads, params_billion))

    def runtime_training_kwargs(self, device_args: DeviceArgs) -> dict[str, Any]:
        kwargs = super().runtime_training_kwargs(device_args)
        if kwargs.get("ddp_backend") == "ccl" and importlib.util.find_spec("oneccl_bindings_for_pytorch") is None:
            logging.getLogger("neuralchat_recipes").warning(
                "ddp_backend ccl: oneccl_bindings_for_pytorch is not installed here, using gloo (slower on Xeon); "
                "install Intel's oneCCL bindings (docker/Dockerfile.xeon has them) for oneCCL"
            )
            kwargs["ddp_backend"] = "gloo"
        return kwargs
