"""``deepspeed/`` group: ZeRO settings a training stage uses when it runs on several devices."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .base import StrictModel


class DeepSpeedConfig(StrictModel):
    zero_stage: Literal[0, 1, 2, 3] = Field(description="ZeRO stage: 2 shards optimizer state and gradients, 3 also weights.")
    offload_optimizer: bool = Field(default=False, description="Keep optimizer state in host memory (ZeRO-Offload).")
    offload_param: bool = Field(default=False, description="Keep weights in host memory (ZeRO-3 only).")
    allgather_bucket_size: float = Field(default=5e8, gt=0, description="ZeRO-2 allgather bucket size (elements).")
    reduce_bucket_size: float = Field(default=5e8, gt=0, description="Reduce bucket size (elements).")
    contiguous_gradients: bool = Field(default=True, description="Copy gradients into one contiguous buffer.")
    overlap_comm: bool = Field(default=False, description="Overlap gradient reduction with backward.")
    optimizer: Literal["trainer", "adamw"] = Field(
        default="trainer", description="`trainer` lets the trainer build the optimizer; `adamw` puts DeepSpeed's AdamW in the config."
    )
    scheduler: Literal["trainer", "warmup_decay"] = Field(
        default="trainer",
        description="`trainer` uses the stage's lr_scheduler_type; `warmup_decay` is DeepSpeed's WarmupDecayLR (neural-chat v3).",
    )
    warmup_type: Literal["linear", "log", "cosine"] = Field(default="log", description="Warmup curve of WarmupDecayLR.")

    @model_validator(mode="after")
    def _offload_param_needs_zero3(self) -> "DeepSpeedConfig":
        if self.offload_param and self.zero_stage != 3:
            raise ValueError("offload_param needs zero_stage 3; set `zero_stage: 3` or `offload_param: false`")
        return self
