"""DeepSpeed JSON config from a stage's ``deepspeed`` block (pure; values the trainer knows stay "auto")."""

from __future__ import annotations

from typing import Any


def build_ds_config(ds, stage, precision: str) -> dict[str, Any]:
    zero: dict[str, Any] = {
        "stage": ds.zero_stage,
        "overlap_comm": ds.overlap_comm,
        "contiguous_gradients": ds.contiguous_gradients,
        "reduce_bucket_size": ds.reduce_bucket_size,
    }
    if ds.zero_stage in (1, 2):
        zero.update(allgather_partitions=True, allgather_bucket_size=ds.allgather_bucket_size, reduce_scatter=True)
    if ds.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
        if ds.offload_param:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    config: dict[str, Any] = {
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "steps_per_print": stage.logging_steps,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16"},
        "zero_optimization": zero,
    }
    if ds.optimizer == "adamw":
        config["optimizer"] = {
            "type": "AdamW",
            "params": {"lr": "auto", "betas": "auto", "eps": stage.adam_epsilon, "weight_decay": "auto"},
        }
    if ds.scheduler == "warmup_decay":
        config["scheduler"] = {
            "type": "WarmupDecayLR",
            "params": {
                "warmup_min_lr": "auto",
                "warmup_max_lr": "auto",
                "warmup_num_steps": "auto",
                "total_num_steps": "auto",
                "warmup_type": ds.warmup_type,
            },
        }
    return config
