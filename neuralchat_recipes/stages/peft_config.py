"""PEFT configs from a stage's resolved ``peft`` entry (the plan's dict)."""

from __future__ import annotations

from typing import Any


def build_peft_config(peft: dict[str, Any] | None, seq2seq: bool = False):
    if not peft or peft["method"] == "none":
        return None
    import peft as p

    task = p.TaskType.SEQ_2_SEQ_LM if seq2seq else p.TaskType.CAUSAL_LM
    method = peft["method"]
    if method == "lora":
        return p.LoraConfig(
            r=peft["r"],
            lora_alpha=peft["alpha"],
            lora_dropout=peft["dropout"],
            target_modules=peft["target_modules"],
            bias=peft["bias"],
            task_type=task,
        )
    if method == "p_tuning":
        return p.PromptEncoderConfig(
            num_virtual_tokens=peft["num_virtual_tokens"], encoder_hidden_size=peft["encoder_hidden_size"], task_type=task
        )
    if method == "prefix_tuning":
        return p.PrefixTuningConfig(num_virtual_tokens=peft["num_virtual_tokens"], task_type=task)
    if method == "prompt_tuning":
        return p.PromptTuningConfig(num_virtual_tokens=peft["num_virtual_tokens"], task_type=task)
    if method == "llama_adapter":
        return p.AdaptionPromptConfig(adapter_len=peft["adapter_len"], adapter_layers=peft["adapter_layers"], task_type=task)
    raise ValueError(f"unknown peft method {method!r}")
