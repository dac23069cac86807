"""PEFT library configs from a stage's resolved adapter settings (config/peft.py models)."""

from __future__ import annotations


def build_peft_config(peft, seq2seq: bool = False, task: str | None = None):
    """The peft library's config for the adapter, or None for full fine-tuning. ``task``: a peft TaskType name
    (SEQ_CLS for reward models: the score head trains in full); the default follows the model."""
    if peft.method == "none":
        return None
    import peft as p

    task = getattr(p.TaskType, task) if task else p.TaskType.SEQ_2_SEQ_LM if seq2seq else p.TaskType.CAUSAL_LM
    if peft.method == "lora":
        return p.LoraConfig(
            r=peft.r,
            lora_alpha=peft.alpha,
            lora_dropout=peft.dropout,
            bias=peft.bias,
            task_type=task,
            target_modules="all-linear" if peft.all_linear else peft.target_modules,
        )
    if peft.method == "p_tuning":
        return p.PromptEncoderConfig(
            num_virtual_tokens=peft.num_virtual_tokens, encoder_hidden_size=peft.encoder_hidden_size, task_type=task
        )
    if peft.method == "prefix_tuning":
        return p.PrefixTuningConfig(num_virtual_tokens=peft.num_virtual_tokens, task_type=task)
    if peft.method == "prompt_tuning":
        return p.PromptTuningConfig(num_virtual_tokens=peft.num_virtual_tokens, task_type=task)
    if peft.method == "llama_adapter":
        return p.AdaptionPromptConfig(adapter_len=peft.adapter_len, adapter_layers=peft.adapter_layers, task_type=task)
    raise ValueError(f"unknown peft method {peft.method!r}")
