"""``peft/`` group: the adapter a training stage trains (or `none` for full fine-tuning).

Defaults follow ITREX's finetuning arguments (lora r 8 / alpha 16 / dropout 0.05,
10 virtual tokens, p-tuning encoder 1024, llama-adapter 10 tokens on 30 layers).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from .base import StrictModel


class LoraConfig(StrictModel):
    method: Literal["lora"] = Field(default="lora", description="Low-rank adapters on the target modules.")
    r: int = Field(default=8, ge=1, description="LoRA rank.")
    alpha: float = Field(default=16, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(default=0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] | None = Field(
        default=None, description="Module names to adapt; null uses the model entry's `lora_target_modules`."
    )
    all_linear: bool = Field(
        default=False, description="Adapt every linear layer except the LM head (ITREX lora_all_linear)."
    )
    bias: Literal["none", "all", "lora_only"] = Field(default="none", description="Which biases to train.")
    quantization: Literal["nf4", "int8"] | None = Field(
        default=None,
        description="QLoRA: load the base model's linear weights in 4-bit NF4 (double-quantized, computing in the "
        "stage's precision) or 8-bit through bitsandbytes; the adapter trains in full precision, and a merge "
        "stage merges it into a full-precision copy of the base. null: the base in the stage's precision.",
    )


class PTuningConfig(StrictModel):
    method: Literal["p_tuning"] = Field(
        default="p_tuning", description="P-tuning: virtual tokens from a prompt encoder."
    )
    num_virtual_tokens: int = Field(default=10, ge=1, description="Number of virtual tokens.")
    encoder_hidden_size: int = Field(default=1024, ge=1, description="Hidden size of the prompt encoder MLP.")


class PrefixTuningConfig(StrictModel):
    method: Literal["prefix_tuning"] = Field(
        default="prefix_tuning", description="Prefix tuning: trained key/value prefixes."
    )
    num_virtual_tokens: int = Field(default=10, ge=1, description="Number of prefix tokens per layer.")


class PromptTuningConfig(StrictModel):
    method: Literal["prompt_tuning"] = Field(
        default="prompt_tuning", description="Prompt tuning: trained input embeddings."
    )
    num_virtual_tokens: int = Field(default=10, ge=1, description="Number of virtual tokens.")


class LlamaAdapterConfig(StrictModel):
    method: Literal["llama_adapter"] = Field(default="llama_adapter", description="LLaMA-Adapter (adaption prompts).")
    adapter_len: int = Field(default=10, ge=1, description="Number of adaption prompt tokens.")
    adapter_layers: int = Field(default=30, ge=1, description="Number of top layers that get adaption prompts.")


class FullConfig(StrictModel):
    method: Literal["none"] = Field(default="none", description="No adapter: full fine-tuning of every weight.")


PeftConfig = Annotated[
    LoraConfig | PTuningConfig | PrefixTuningConfig | PromptTuningConfig | LlamaAdapterConfig | FullConfig,
    Field(discriminator="method"),
]

PEFT_METHODS = {
    "lora": LoraConfig,
    "p_tuning": PTuningConfig,
    "prefix_tuning": PrefixTuningConfig,
    "prompt_tuning": PromptTuningConfig,
    "llama_adapter": LlamaAdapterConfig,
    "none": FullConfig,
}
