"""A device type (cpu, cuda, xpu, hpu): named capabilities stages ask for, precision, trainer classes.

Stages and the planner never test a device's name: they ask ``device.can("swiglu_recompute")``. The
plan-time half (precision, capabilities, training-argument extras, environment) is pure Python, so
``mode=plan`` works on a machine without the device's software stack; trainer classes are imported
only when a stage runs.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

BITSANDBYTES_OPTIMS = {"paged_adamw_32bit", "adamw_8bit"}

# The capabilities a device may have, and what each lets a stage do.
CAPABILITIES = {
    "per_sample_attention": "packed samples attend per sample through transformers' attention interface (a varlen "
    "kernel, FlexAttention or SDPA per sample: hardware.packed_attention); without it, a block-diagonal mask",
    "labelled_logits": "compute logits only where a label is predicted (boolean logits_to_keep, shapes change per "
    "batch)",
    "swiglu_recompute": "SwiGLU MLPs keep gate and up only and recompute the activation in the backward",
    "lora_dropout_16bit_draws": "LoRA's dropout masks come from 16-bit draws, four per random word (on a CPU torch's "
    "dropout costs more than the layer's GEMM; accelerators draw their masks fast already)",
    "compact_lm_head": "TRL's fused LM head may skip unlabelled positions (only on Triton devices by default)",
    "reference_before_training": "DPO scores the reference once before training by default",
    "combined_dpo_losses": "DPO with several loss types and loss_weights (TRL's DPOConfig since 0.22; "
    "optimum-habana's GaudiDPOConfig takes one loss_type)",
    "bitsandbytes": "paged and 8-bit optimizers (bitsandbytes)",
    "quantized_base": "LoRA trains on a 4-bit (NF4) or 8-bit base model through bitsandbytes (QLoRA)",
    "retained_freed_memory": "glibc's malloc may keep freed memory for the next step (hardware.retain_freed_memory)",
    "tensor_parallel_generation": "a generate stage shards its model over several devices (DeepSpeed inference)",
}


class DeviceArgs(BaseModel):
    """Training-argument keywords a device adds (None: not set)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    use_cpu: bool | None = None
    ddp_backend: str | None = None
    use_habana: bool | None = None
    use_lazy_mode: bool | None = None
    use_hpu_graphs_for_training: bool | None = None
    throughput_warmup_steps: int | None = None
    pipelining_fwd_bwd: bool | None = None
    gaudi_config: dict[str, bool] | None = None  # passed to the trainer as a GaudiConfig, not as an argument

    def set_values(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)

    def training_kwargs(self) -> dict[str, Any]:
        return {k: v for k, v in self.set_values().items() if k != "gaudi_config"}


class Device:
    """Plan-time answers for one hardware profile's device; run-time hooks import lazily."""

    name: ClassVar[str]
    capabilities: ClassVar[frozenset[str]] = frozenset(CAPABILITIES) - {
        "compact_lm_head",
        "lora_dropout_16bit_draws",
        "bitsandbytes",
        "quantized_base",
        "retained_freed_memory",
    }
    # trainer family -> (module, trainer class, its arguments class), imported only when a stage runs
    trainers: ClassVar[dict[str, tuple[str, str, str]]] = {
        "trainer": ("transformers", "Trainer", "TrainingArguments"),
        "sft": ("trl", "SFTTrainer", "SFTConfig"),
        "dpo": ("trl", "DPOTrainer", "DPOConfig"),
        "orpo": ("trl.experimental.orpo", "ORPOTrainer", "ORPOConfig"),
        "cpo": ("trl.experimental.cpo", "CPOTrainer", "CPOConfig"),
        "kto": ("trl", "KTOTrainer", "KTOConfig"),
        "reward": ("trl", "RewardTrainer", "RewardConfig"),
        "grpo": ("trl", "GRPOTrainer", "GRPOConfig"),
    }
    # optimum-habana's TRL classes follow an older TRL API: its devices say so here
    sft_with_trl: ClassVar[bool] = True  # unpacked SFT through TRL's SFTTrainer (else the plain Trainer + our collator)
    dpo_tokenizer_kwarg: ClassVar[str] = "processing_class"  # how the DPO trainer takes the tokenizer

    def has_trainer(self, family: str) -> bool:
        """Whether this device's software stack has a trainer of this family (a plan-time question)."""
        return family in self.trainers

    def trainer(self, family: str):
        """(trainer class, arguments class) of a family, imported now."""
        module, trainer, arguments = self.trainers[family]
        loaded = importlib.import_module(module)
        return getattr(loaded, trainer), getattr(loaded, arguments)

    def __init__(self, hardware):
        self.hw = hardware

    def can(self, capability: str) -> bool:
        if capability not in CAPABILITIES:
            raise KeyError(f"unknown device capability {capability!r}; known: {', '.join(sorted(CAPABILITIES))}")
        return capability in self.capabilities

    # ---- plan time (pure) -------------------------------------------------------------
    def precision(self, params_billion: float | None = None) -> str:
        """The profile's precision (``params_billion``: the model's size, for devices whose `auto` weighs it)."""
        return self.hw.precision

    def resolve_optim(self, optim: str, notes: list[str]) -> str:
        if optim in BITSANDBYTES_OPTIMS and not self.can("bitsandbytes"):
            notes.append(f"optim {optim} needs bitsandbytes on CUDA; using adamw_torch on {self.name}")
            return "adamw_torch"
        return optim

    def training_args(self, stage, distributed: bool) -> DeviceArgs:
        """What this device adds to a training stage's arguments."""
        multi = self.hw.world_size > 1 and bool(self.hw.ddp_backend)
        return DeviceArgs(ddp_backend=self.hw.ddp_backend if multi else None)

    def env(self, zero_stage: int | None, model) -> dict[str, str]:
        env = dict(model.launch_env.get(self.name, {}))
        env.update(self.hw.env)
        if self.hw.omp_num_threads:
            env["OMP_NUM_THREADS"] = str(self.hw.omp_num_threads)
        return env

    # ---- run time (heavy imports happen inside) -------------------------------------
    def stage_memory(self) -> contextlib.AbstractContextManager:
        """A context the stage runs in, for host-memory settings (the CPU's allocator)."""
        return contextlib.nullcontext()

    def stage_threads(self, params_billion: float | None) -> contextlib.AbstractContextManager[int]:
        """A context the stage runs in with a chosen number of torch threads (it yields the number): the
        profile's `omp_num_threads` where set; otherwise torch's own choice, the accelerator doing the work."""
        from .threads import using_threads

        if self.hw.omp_num_threads:
            return using_threads(self.hw.omp_num_threads)
        return _torch_threads()

    def runtime_training_kwargs(self, device_args: DeviceArgs) -> dict[str, Any]:
        """The device's keywords for the training arguments, as this machine can honour them."""
        return device_args.training_kwargs()

    def trainer_kwargs(self, device_args: DeviceArgs) -> dict[str, Any]:
        return {}

    def torch_device(self) -> str:
        return self.name

    def tensor_parallel(self, model, devices: int, precision: str, use_graphs: bool):  # pragma: no cover - accelerators
        """The model sharded over ``devices`` with DeepSpeed inference (AutoTP), for generation on every rank."""
        import deepspeed
        import torch

        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
        engine = deepspeed.init_inference(
            model, tensor_parallel={"tp_size": devices}, dtype=dtype, enable_cuda_graph=use_graphs
        )
        return engine.module

    def capture_graphs(self, model):
        """The model with its decoding steps captured as device graphs (Gaudi's HPU graphs); as is elsewhere."""
        return model

    def device_problems(self) -> list[str]:
        """What this machine lacks to run the profile's device (checked before any stage starts)."""
        return []


@contextlib.contextmanager
def _torch_threads() -> Iterator[int]:
    import torch

    yield torch.get_num_threads()
