"""What every stage's settings share: the base of each kind's config model, and the training settings.

Each kind's own settings live in its module (``stages/sft.py`` ...). A recipe places stages under their
own names (``sft``, ``merge``, ``dpo``, ``merge_dpo`` ...), so ``sft.learning_rate=2e-4`` or
``dpo.peft.r=32`` on the command line reach one stage.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from .base import NOT_FINGERPRINTED, StrictModel
from .dataset import DatasetConfig, Template
from .deepspeed import DeepSpeedConfig
from .hardware import HardwareOverride
from .peft import FullConfig, PeftConfig

__all__ = ["MaxSteps", "Epochs", "StageBase", "Task", "Template", "TrainStageBase", "VIRTUAL_TOKEN_METHODS"]

# PEFT methods that prepend trained virtual tokens (or adaption prompts) to the whole sequence
VIRTUAL_TOKEN_METHODS = ("p_tuning", "prefix_tuning", "prompt_tuning", "llama_adapter")

Task = Literal["completion", "chat", "summarization", "code-generation"]

# How long a stage may train. A count beyond these is a typo (`max_steps=1e12`) that would train for years; every
# kind's own default uses these types, so the bounds are written once.
MAX_STEPS = 10_000_000
MAX_EPOCHS = 10_000
MaxSteps = Annotated[
    int | None,
    Field(ge=1, le=MAX_STEPS, description="Optimizer steps to train (exclusive with num_train_epochs; at most 10M)."),
]
Epochs = Annotated[
    float | None,
    Field(gt=0, le=MAX_EPOCHS, description="Epochs to train (exclusive with max_steps; at most 10,000)."),
]


class StageBase(StrictModel):
    input: str | None = Field(
        default=None,
        description="Stage whose artifact this stage consumes; null = the previous stage in the pipeline "
        "(the base model for the first). `base` forces the recipe's base model.",
    )
    hardware: HardwareOverride = Field(
        default_factory=HardwareOverride,
        description="This stage's changes to the recipe's hardware profile (null keys: the profile's), e.g. "
        "`dpo.hardware.devices_per_node=1 dpo.hardware.launcher=inprocess` (neural-chat-v3-1 ran DPO as one "
        "process), or another whole profile: `+hardware@dpo.hardware=gaudi2_1x`.",
    )


class TrainStageBase(StageBase):
    dataset: DatasetConfig = Field(description="Training data (a `dataset/` entry).")
    mix: dict[str, DatasetConfig] = Field(
        default_factory=dict,
        description="More datasets mixed into `dataset`, by a name of your choice: each entry's `weight` is its share "
        "of the samples beside `dataset.weight` (e.g. `sft.dataset.weight=0.7 +dataset@sft.mix.chat=ultrachat_200k "
        "sft.mix.chat.weight=0.3`). Sampling is deterministic under `seed`; the manifest records the realised mix.",
    )
    mix_stopping: Literal["first_exhausted", "all_exhausted"] = Field(
        default="first_exhausted",
        description="When a mixture ends: `first_exhausted` (each dataset's rows used at most once: the mix stops when "
        "one runs out) or `all_exhausted` (smaller datasets repeat until every one has been seen).",
    )
    peft: PeftConfig = Field(default_factory=FullConfig, description="Adapter to train (a `peft/` entry).")
    global_batch_size: int = Field(
        ge=1, description="Samples per optimizer step over all devices; per-device batch and accumulation are derived."
    )
    micro_batch_size: int = Field(
        default=1,
        ge=1,
        description="Largest per-device batch; lowered to a divisor of global_batch_size / world_size.",
        json_schema_extra=NOT_FINGERPRINTED,
    )
    learning_rate: float = Field(gt=0, description="Peak learning rate.")
    lr_scheduler_type: Literal[
        "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "inverse_sqrt"
    ] = Field(default="linear", description="Learning-rate schedule after warmup.")
    warmup_ratio: float = Field(
        default=0.0, ge=0, le=1, description="Fraction of steps spent warming up (ignored if warmup_steps > 0)."
    )
    warmup_steps: int = Field(default=0, ge=0, description="Warmup steps; overrides warmup_ratio when > 0.")
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW weight decay.")
    optim: Literal["adamw_torch", "adamw_torch_fused", "paged_adamw_32bit", "adamw_8bit", "sgd", "adafactor"] = Field(
        default="adamw_torch", description="Optimizer (transformers' `optim` names)."
    )
    adam_epsilon: float = Field(default=1e-8, gt=0, description="AdamW epsilon.")
    max_grad_norm: float = Field(default=1.0, ge=0, description="Gradient clipping norm (0 disables).")
    num_train_epochs: Epochs = None
    max_steps: MaxSteps = None
    gradient_checkpointing: bool | None = Field(
        default=None,
        description="Recompute activations in backward; null follows the hardware profile.",
        json_schema_extra=NOT_FINGERPRINTED,
    )
    seed: int = Field(default=42, description="Seed for initialisation, dropout and data order.")
    deepspeed: DeepSpeedConfig | None = Field(
        default=None, description="DeepSpeed ZeRO settings, used when the hardware profile launches several devices."
    )
    hpu_graphs_for_training: bool | None = Field(
        default=None,
        description="Gaudi: capture HPU graphs for training (ITREX DPO); null follows the hardware profile.",
        json_schema_extra=NOT_FINGERPRINTED,
    )
    save_steps: int = Field(
        default=500, ge=1, description="Checkpoint every N steps (resume points).", json_schema_extra=NOT_FINGERPRINTED
    )
    save_total_limit: int | None = Field(
        default=2, ge=1, description="Keep at most N checkpoints.", json_schema_extra=NOT_FINGERPRINTED
    )
    save_strategy: Literal["steps", "epoch"] = Field(
        default="steps",
        description="Checkpoint every `save_steps` steps, or at the end of every epoch (ITREX --save_strategy epoch).",
        json_schema_extra=NOT_FINGERPRINTED,
    )
    run_name: str | None = Field(
        default=None,
        description="The run's name in the trackers of `report_to` (transformers' run_name); null: the stage name.",
        json_schema_extra=NOT_FINGERPRINTED,
    )
    per_device_eval_batch_size: int | None = Field(
        default=None,
        ge=1,
        description="Held-out evaluation batch per device (do_eval); null: the training micro batch.",
        json_schema_extra=NOT_FINGERPRINTED,
    )
    remove_unused_columns: bool = Field(
        default=False,
        description="Let the trainer drop dataset columns its model does not take (transformers' "
        "remove_unused_columns). The seeds pass False; SFT's collators need every column, so it must stay false there.",
    )
    logging_steps: int = Field(default=10, ge=1, description="Log every N steps.", json_schema_extra=NOT_FINGERPRINTED)
    do_eval: bool = Field(
        default=False,
        description="Report eval loss on held-out data (the dataset's `eval_split`, or `validation_split_percentage` "
        "of the training split) at the end of training, and every `eval_steps` if set (ITREX --do_eval).",
    )
    eval_steps: int | None = Field(
        default=None,
        ge=1,
        description="With do_eval: also evaluate every N steps; null evaluates once, at the end.",
        json_schema_extra=NOT_FINGERPRINTED,
    )

    @model_validator(mode="after")
    def _eval_data(self) -> TrainStageBase:
        if self.do_eval and not self.dataset.has_eval_data:
            raise ValueError(
                f"`do_eval` needs held-out data, but dataset {self.dataset.name!r} has none; set "
                "`dataset.validation_split_percentage` (e.g. 5) or, for a hub dataset, `dataset.eval_split`"
            )
        return self

    @property
    def all_datasets(self) -> list[tuple[str, DatasetConfig]]:
        """(key under the stage, entry) of the training data: `dataset`, then each `mix` entry."""
        return [("dataset", self.dataset), *((f"mix.{name}", d) for name, d in self.mix.items())]

    @model_validator(mode="after")
    def _streams_need_steps(self) -> TrainStageBase:
        streamed = [key for key, d in self.all_datasets if d.streaming]
        if streamed and self.num_train_epochs is not None:
            raise ValueError(
                f"`{streamed[0]}.streaming`: a stream has no length to count epochs by; train for a number of "
                "steps: `max_steps=N num_train_epochs=null`"
            )
        return self

    @model_validator(mode="after")
    def _length_of_training(self) -> TrainStageBase:
        if (self.num_train_epochs is None) == (self.max_steps is None):
            raise ValueError(
                "set exactly one of `num_train_epochs` and `max_steps` "
                f"(got num_train_epochs={self.num_train_epochs}, max_steps={self.max_steps}); "
                "override the other with null, e.g. `sft.num_train_epochs=null`"
            )
        return self
