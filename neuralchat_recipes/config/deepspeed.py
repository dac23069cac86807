"""``deepspeed/`` group: ZeRO settings a training stage uses when it runs on several devices."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .base import StrictModel


class DeepSpeedConfig(StrictModel):
    zero_stage: Literal[0, 1, 2, 3] = Field(
        description="ZeRO stage: 2 shards optimizer state and gradients, 3 also weights."
    )
    offload_optimizer: bool = Field(default=False, description="Keep optimizer state in host memory (ZeRO-Offload).")
    offload_param: bool = Field(default=False, description="Keep weights in host memory (ZeRO-3 only).")
    allgather_bucket_size: float = Field(default=5e8, gt=0, description="ZeRO-2 allgather bucket size (elements).")
    reduce_bucket_size: float = Field(default=5e8, gt=0, description="Reduce bucket size (elements).")
    contiguous_gradients: bool = Field(default=True, description="Copy gradients into one contiguous buffer.")
    overlap_comm: bool = Field(default=False, description="Overlap gradient reduction with backward.")
    optimizer: Literal["trainer", "adamw"] = Field(
        default="trainer",
        description="`trainer` lets the trainer build the optimizer; `adamw` puts DeepSpeed's AdamW in the config.",
    )
    scheduler: Literal["trainer", "warmup_decay"] = Field(
        default="trainer",
        description="`trainer` uses the stage's lr_scheduler_type; `warmup_decay` is DeepSpeed's WarmupDecayLR "
        "(neural-chat v3).",
    )
    warmup_type: Literal["linear", "log", "cosine"] = Field(default="log", description="Warmup curve of WarmupDecayLR.")
    config_file: str | None = Field(
        default=None,
        description="Your own DeepSpeed JSON, used as is instead of the generated config (its content is part of the "
        'stage fingerprint); its zero_optimization.stage must equal zero_stage. Leave batch sizes "auto" or make '
        "them match the stage's global batch.",
    )

    @model_validator(mode="after")
    def _offload_param_needs_zero3(self) -> DeepSpeedConfig:
        if self.offload_param and self.zero_stage != 3:
            raise ValueError("offload_param needs zero_stage 3; set `zero_stage: 3` or `offload_param: false`")
        return self

    @model_validator(mode="after")
    def _config_file_readable(self) -> DeepSpeedConfig:
        if self.config_file is None:
            return self
        config = self.user_config()
        stage = config.get("zero_optimization", {}).get("stage", 0) if isinstance(config, dict) else None
        if stage != self.zero_stage:
            raise ValueError(
                f"config_file {self.config_file!r} has zero_optimization.stage {stage}, but zero_stage is "
                f"{self.zero_stage}; make them agree"
            )
        return self

    def user_config(self) -> dict:
        """The user's DeepSpeed JSON (config_file), read and parsed."""
        import json
        from pathlib import Path

        path = Path(self.config_file).expanduser()
        try:
            return json.loads(path.read_text())
        except OSError as exc:
            raise ValueError(f"config_file {self.config_file!r}: cannot read it ({exc.strerror or exc})") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"config_file {self.config_file!r} is not valid JSON: {exc}") from None
