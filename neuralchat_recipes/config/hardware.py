"""``hardware/`` group: the device, how many of them, the launcher and the precision."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ..data.packed_attention import KERNELS as PACKED_ATTENTION_KERNELS
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
    include: str | None = Field(
        default=None,
        description="deepspeed launcher: the devices to use, as its --include (`localhost:0,1,2,3,4,5,6,7`, as "
        "neural-chat-v3-1's SFT was started), instead of --num_nodes / --num_gpus.",
    )
    omp_num_threads: int | None = Field(default=None, ge=1, description="OMP_NUM_THREADS per process.")
    ccl_worker_count: int | None = Field(default=None, ge=1, description="oneCCL worker threads per process.")
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment for launched stages.")
    retain_freed_memory: bool = Field(
        default=True,
        description="cpu: glibc's malloc keeps freed memory for reuse while a stage runs, instead of unmapping each "
        "large tensor and faulting its zeroed pages back in the next step (30-40% of a training step in bench/); "
        "peak RSS grows by what fragmentation holds (~10% there). false: the C library's defaults.",
    )
    packed_attention: Literal[("auto", *PACKED_ATTENTION_KERNELS)] = Field(
        default="auto",
        description="The kernel that keeps packed (and padding-free) samples apart in attention: `flash_varlen` "
        "(flash-attention's varlen, CUDA fp16/bf16, `pip install flash-attn`), `torch_varlen` (torch's own varlen "
        "flash kernel, CUDA fp16/bf16), `flex` (FlexAttention document masking, CUDA), `sdpa` (SDPA per sample, "
        "anywhere). `auto`: the first of these that runs on the device and dtype.",
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
        if self.packed_attention not in ("auto", "sdpa") and self.device != "cuda":
            raise ValueError(
                f"packed_attention `{self.packed_attention}` runs on CUDA only, not {self.device}; "
                "set it to auto or sdpa"
            )
        if self.device == "hpu" and self.packed_attention != "auto":
            raise ValueError(
                "packed_attention does not apply to hpu: Gaudi keeps packed samples apart with a block-diagonal mask "
                "for its own attention kernels; leave it auto"
            )
        if self.device == "hpu" and self.gaudi is None:
            raise ValueError("an hpu profile needs a `gaudi` block (lazy mode, fused ops, autocast)")
        if self.include is not None:
            if self.launcher != "deepspeed":
                raise ValueError(
                    f"`include` is the deepspeed launcher's; set `launcher: deepspeed` (not {self.launcher})"
                )
            hosts = [part for part in self.include.split("@") if part]
            devices = sum(len([d for d in h.partition(":")[2].split(",") if d.strip()]) for h in hosts)
            if len(hosts) != self.num_nodes or devices != self.world_size:
                raise ValueError(
                    f"`include` = {self.include!r} names {devices} device(s) on {len(hosts)} node(s); the profile has "
                    f"{self.devices_per_node} per node on {self.num_nodes}: make them agree (e.g. devices_per_node="
                    f"{devices // max(len(hosts), 1)})"
                )
        if self.num_nodes > 1 and self.launcher == "mpirun" and not self.hostfile:
            raise ValueError(
                f"{self.num_nodes} nodes under mpirun need a hostfile: set `hardware.hostfile=/path/to/nodefile`"
            )
        return self


def _partial(model: type[StrictModel], name: str, doc: str, nested: dict[str, type] | None = None) -> type[StrictModel]:
    """A model with every field of ``model`` optional and unset (None), its descriptions kept: what a stage may
    override of the recipe's profile. Written from the model, so the override never drifts from the profile."""
    from pydantic import create_model

    fields = {}
    for key, info in model.model_fields.items():
        if key in (nested or {}):  # a nested override is always there, so `dpo.hardware.gaudi.spawn=mpi` works
            fields[key] = (nested[key], Field(default_factory=nested[key], description=info.description))
        else:
            fields[key] = (info.annotation | None, Field(default=None, description=info.description))
    partial = create_model(name, __base__=StrictModel, __doc__=doc, **fields)
    return partial


GaudiOverride = _partial(GaudiSettings, "GaudiOverride", "Gaudi settings a stage overrides (null: the profile's).")
HardwareOverride = _partial(
    HardwareConfig,
    "HardwareOverride",
    "What a stage changes of the recipe's hardware profile (null: the profile's): its devices, launcher, spawn "
    "mode, precision ... or, picked as a whole entry (`hardware@dpo.hardware=gaudi2_1x`), another profile.",
    nested={"gaudi": GaudiOverride},
)


def set_fields(override: StrictModel | None) -> dict:
    """The fields an override sets, nested ones (gaudi) included, as a dict."""
    if override is None:
        return {}
    out = {}
    for key, value in override:
        if isinstance(value, StrictModel):
            value = set_fields(value)
            if not value:
                continue
        if value is not None:
            out[key] = value
    return out


def apply_override(profile: HardwareConfig, override: StrictModel | None) -> HardwareConfig:
    """The profile with a stage's overrides applied (nested gaudi settings merged field by field). Raises
    pydantic's ValidationError when the result is not a valid profile."""
    changes = set_fields(override)
    if not changes:
        return profile
    merged = profile.model_dump()
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return HardwareConfig.model_validate(merged)
