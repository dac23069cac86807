"""``hardware/`` group: the device, how many of them, the launcher and the precision."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .base import StrictModel


class GaudiSettings(StrictModel):
    use_lazy_mode: bool = Field(default=True, description="Habana lazy execution mode (graph accumulation).")
    use_hpu_graphs_for_training: bool = Field(default=False, description="Capture HPU graphs for training steps.")
    use_fused_adam: bool = Field(default=True, description="GaudiConfig: Habana's fused AdamW.")
    use_fused_clip_norm: bool = Field(default=True, description="GaudiConfig: Habana's fused gradient clipping.")
    use_torch_autocast: bool = Field(default=True, description="GaudiConfig: bf16 through torch.autocast.")
    throughput_warmup_steps: int = Field(default=3, ge=0, description="Steps excluded from throughput measurement.")
    pipelining_fwd_bwd: bool = Field(default=False, description="Overlap forward and backward on HPU.")
    spawn: Literal["auto", "deepspeed", "mpi"] = Field(
        default="auto",
        description="How gaudi_spawn starts the cards: `auto` = --use_deepspeed when the stage uses ZeRO, else "
        "--use_mpi; "
        "`mpi` keeps ZeRO inside the ranks (optimum-habana's 'Option B').",
    )


class HardwareConfig(StrictModel):
    name: str = Field(description="Profile name.")
    device: Literal["cpu", "cuda", "xpu", "hpu"] = Field(description="Device type the stages run on.")
    generation: str | None = Field(
        default=None, description="Device generation (gaudi1, gaudi2, a100, arc ...), for docs and checks."
    )
    devices_per_node: int = Field(default=1, ge=1, description="Processes (cards) per node.")
    num_nodes: int = Field(default=1, ge=1, description="Nodes.")
    launcher: Literal["inprocess", "torchrun", "deepspeed", "mpirun", "gaudi_spawn"] = Field(
        default="inprocess", description="How multi-process stages start; `inprocess` runs in this Python process."
    )
    supports_deepspeed: bool = Field(
        default=True,
        description="The launcher can run DeepSpeed ZeRO; when false a recipe's ZeRO settings are not applied.",
    )
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        default="auto",
        description="Training precision. `auto` (cpu only): bf16 where the CPU has AMX or AVX512-BF16, fp32 elsewhere.",
    )
    gradient_checkpointing: bool = Field(
        default=False, description="Default for stages that leave gradient_checkpointing null."
    )
    static_shapes: bool = Field(
        default=False, description="Pad batches to their maximum length (Gaudi: avoids graph recompilation)."
    )
    memory_gb: float | None = Field(
        default=None, gt=0, description="Memory per device (per process on CPU) in GB; null reads this host's RAM."
    )
    ddp_backend: Literal["nccl", "gloo", "ccl", "hccl"] | None = Field(
        default=None, description="torch.distributed backend for multi-process runs."
    )
    hostfile: str | None = Field(default=None, description="File with one node address per line (mpirun -f).")
    master_addr: str | None = Field(default=None, description="Address of rank 0 for multi-node runs.")
    master_port: int = Field(default=29501, ge=1, le=65535, description="Rendezvous port.")
    omp_num_threads: int | None = Field(default=None, ge=1, description="OMP_NUM_THREADS per process.")
    ccl_worker_count: int | None = Field(default=None, ge=1, description="oneCCL worker threads per process.")
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment for launched stages.")
    retain_freed_memory: bool = Field(
        default=True,
        description="cpu: glibc's malloc keeps freed memory for reuse while a stage runs, instead of unmapping each "
        "large tensor and faulting its zeroed pages back in the next step (30-40% of a training step in bench/); "
        "peak RSS grows by what fragmentation holds (~10% there). false: the C library's defaults.",
    )
    gaudi: GaudiSettings | None = Field(default=None, description="Habana-specific settings (device hpu).")

    @property
    def world_size(self) -> int:
        return self.devices_per_node * self.num_nodes

    @model_validator(mode="after")
    def _consistent(self) -> HardwareConfig:
        if self.precision == "auto" and self.device != "cpu":
            raise ValueError(f"precision `auto` is only resolved for cpu; set bf16, fp16 or fp32 for {self.device}")
        if self.precision == "fp16" and self.device in ("cpu", "hpu"):
            raise ValueError(f"fp16 training is not supported on {self.device}; use bf16 or fp32")
        if self.world_size > 1 and self.launcher == "inprocess":
            raise ValueError(
                f"{self.world_size} processes need a launcher; set `hardware.launcher` to torchrun, deepspeed, "
                "mpirun or gaudi_spawn"
            )
        if self.launcher == "gaudi_spawn" and self.device != "hpu":
            raise ValueError("the gaudi_spawn launcher only starts HPU processes")
        if self.device == "hpu" and self.gaudi is None:
            raise ValueError("an hpu profile needs a `gaudi` block (lazy mode, fused ops, autocast)")
        if self.num_nodes > 1 and self.launcher == "mpirun" and not self.hostfile:
            raise ValueError(
                f"{self.num_nodes} nodes under mpirun need a hostfile: set `hardware.hostfile=/path/to/nodefile`"
            )
        return self
