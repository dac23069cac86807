"""``dataset/`` group: where a stage's rows come from and which row schema they follow."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .base import StrictModel

# Prompt formats a conversation is rendered with (data/templates.py; `tokenizer`: the model's own chat template)
Template = Literal["neural_chat", "alpaca", "chatml", "llama2", "qa", "tokenizer", "summarization", "plain"]

# Row formats: the column layout of the real dataset a format adapter reads
# (see neuralchat_recipes/data/formats.py for the adapters and RECIPE_FACTS.md for schemas).
RowFormat = Literal[
    "slimorca",  # conversations: [{from: system|human|gpt, value, weight}]
    "alpaca",  # instruction, input, output   (alpaca_data.json, intel_domain.json, CodeAlpaca-20k)
    "ultrachat",  # prompt, prompt_id, messages: [{role, content}]
    "messages",  # messages: [{role, content}]   (dolly-15k-oai-style)
    "cnn_dailymail",  # article, highlights, id
    "evol_codealpaca",  # instruction, output
    "orca_dpo_pairs",  # system, question, chosen, rejected
    "stack_exchange_paired",  # qid, question, date, metadata, response_j, response_k
    "humaneval",  # task_id, prompt, canonical_solution, test, entry_point (openai_humaneval)
    "kto",  # prompt, completion, label (trl-lib/kto-mix-14k): unpaired examples, desirable or not
]

# The columns each format reads (what `columns` may rename a file's columns to).
FORMAT_COLUMNS: dict[str, tuple[str, ...]] = {
    "slimorca": ("conversations",),
    "alpaca": ("instruction", "input", "output"),
    "ultrachat": ("messages",),
    "messages": ("messages",),
    "cnn_dailymail": ("article", "highlights"),
    "evol_codealpaca": ("instruction", "output"),
    "orca_dpo_pairs": ("system", "question", "chosen", "rejected"),
    "stack_exchange_paired": ("question", "response_j", "response_k"),
    "humaneval": ("task_id", "prompt", "canonical_solution", "test", "entry_point"),
    "kto": ("prompt", "completion", "label"),
}

# What each format can feed: supervised pairs, preference triples, or both.
FORMAT_USES: dict[str, set[str]] = {
    "slimorca": {"sft"},
    "alpaca": {"sft"},
    "ultrachat": {"sft"},
    "messages": {"sft"},
    "cnn_dailymail": {"sft"},
    "evol_codealpaca": {"sft"},
    "orca_dpo_pairs": {"preference", "sft"},
    "stack_exchange_paired": {"preference", "sft"},
    "humaneval": {"code"},
    "kto": {"unpaired"},
}


class DatasetConfig(StrictModel):
    name: str = Field(description="Short name of the dataset entry.")
    hub_id: str | None = Field(default=None, description="Hugging Face hub dataset id (exclusive with `path`).")
    config_name: str | None = Field(default=None, description="Hub dataset configuration (cnn_dailymail: `3.0.0`).")
    revision: str | None = Field(default=None, description="Hub revision to pin (branch, tag or commit).")
    data_dir: str | None = Field(
        default=None, description="Sub-directory of the hub repository (stack-exchange-paired: `data/finetune`)."
    )
    path: str | None = Field(
        default=None,
        description="Local data file (.json, .jsonl, .parquet, .csv), or `bundled:NAME` for data shipped with the "
        "package.",
    )
    split: str = Field(default="train", description="Split to train on (ultrachat_200k: `train_sft`).")
    format: RowFormat = Field(description="Row schema of the data; picks the format adapter.")
    max_samples: int | None = Field(
        default=None, ge=1, description="Use only the first N rows (after the split is loaded); null uses all."
    )
    validation_split_percentage: float = Field(
        default=0, ge=0, lt=100, description="Percent of the split held out for evaluation loss (ITREX default 0)."
    )
    eval_split: str | None = Field(
        default=None,
        description="Hub split held out for evaluation (ultrachat_200k: `test_sft`); null carves "
        "`validation_split_percentage` out of the training split instead.",
    )
    columns: dict[str, str] | None = Field(
        default=None,
        description="Your file's column names for the format's columns, {format column: your column}, e.g. "
        "`sft.dataset.columns={instruction: question, output: answer}` reads a question/answer file as alpaca; "
        "null reads the format's own names.",
    )
    default_system: str | None = Field(
        default=None,
        description="System prompt used when a row has none (neural-chat: `You are a helpful, respectful and honest "
        "assistant.`).",
    )
    streaming: bool = Field(
        default=False,
        description="Read the rows as a stream instead of downloading and converting the whole split first (hub "
        "datasets too large for the disk; the optimum-habana SFT seed's --streaming). The stage then needs "
        "`max_steps`; held-out rows come from `eval_split`. Its first 1000 rows are checked before training.",
    )
    weight: float = Field(
        default=1.0,
        gt=0,
        description="In a mixture (a stage's `dataset` plus its `mix` entries): this dataset's share of the training "
        "samples, relative to the other entries' weights.",
    )
    template: Template | None = Field(
        default=None,
        description="SFT: the prompt format this dataset's rows are rendered with; null: the stage's `template`.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> DatasetConfig:
        if bool(self.hub_id) == bool(self.path):
            raise ValueError(
                f"dataset {self.name!r} needs exactly one source: set `hub_id` (a hub dataset) or `path` (a local file)"
            )
        if self.eval_split and self.path:
            raise ValueError(
                f"dataset {self.name!r}: `eval_split` names a hub split, but this dataset is the local file "
                f"{self.path!r}; "
                "use `validation_split_percentage` to hold out part of it"
            )
        if self.eval_split and self.validation_split_percentage:
            raise ValueError(f"dataset {self.name!r}: set `eval_split` or `validation_split_percentage`, not both")
        if self.streaming and self.validation_split_percentage:
            raise ValueError(
                f"dataset {self.name!r}: a streamed dataset holds out rows with `eval_split`, not "
                "`validation_split_percentage`"
            )
        known = FORMAT_COLUMNS[self.format]
        unknown = [k for k in (self.columns or {}) if k not in known]
        if unknown:
            raise ValueError(
                f"`columns` of dataset {self.name!r}: {', '.join(map(repr, unknown))} is not a column of format "
                f"{self.format!r}; the keys are the format's columns ({', '.join(known)}) and the values your file's"
            )
        return self

    @property
    def has_eval_data(self) -> bool:
        return bool(self.eval_split or self.validation_split_percentage)

    @property
    def uses(self) -> set[str]:
        return FORMAT_USES[self.format]
