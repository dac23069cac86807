"""``stage/`` group: the settings of each stage kind (sft, merge, dpo, eval, generate).

A recipe places stages under their own names (``sft``, ``merge``, ``dpo``, ``merge_dpo`` ...),
so ``sft.learning_rate=2e-4`` or ``dpo.peft.r=32`` on the command line reach one stage.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, model_validator

from .base import NOT_FINGERPRINTED, StrictModel
from .dataset import DatasetConfig
from .deepspeed import DeepSpeedConfig
from .peft import FullConfig, PeftConfig

Template = Literal["neural_chat", "alpaca", "chatml", "llama2", "qa", "tokenizer", "summarization", "plain"]

# PEFT methods that prepend trained virtual tokens (or adaption prompts) to the whole sequence
VIRTUAL_TOKEN_METHODS = ("p_tuning", "prefix_tuning", "prompt_tuning", "llama_adapter")

Task = Literal["completion", "chat", "summarization", "code-generation"]

# ITREX's --task picks the prompt format when a recipe does not name one (chat: the model's
# own chat template) ...
TASK_TEMPLATES = {"completion": "alpaca", "chat": "tokenizer", "summarization": "summarization", "code-generation": "alpaca"}
# ... and how the fine-tune is judged (ITREX: lm-eval truthfulqa_mc for completion and chat,
# ROUGE for summarization, HumanEval pass@1 for code generation).
TASK_DEFAULT_EVAL = {"completion": "truthfulqa_mc", "chat": "truthfulqa_mc", "summarization": "rouge",
                     "code-generation": "pass@1"}


class StageBase(StrictModel):
    input: str | None = Field(
        default=None,
        description="Stage whose artifact this stage consumes; null = the previous stage in the pipeline "
        "(the base model for the first). `base` forces the recipe's base model.",
    )


class TrainStageBase(StageBase):
    dataset: DatasetConfig = Field(description="Training data (a `dataset/` entry).")
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
    warmup_ratio: float = Field(default=0.0, ge=0, le=1, description="Fraction of steps spent warming up (ignored if warmup_steps > 0).")
    warmup_steps: int = Field(default=0, ge=0, description="Warmup steps; overrides warmup_ratio when > 0.")
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW weight decay.")
    optim: Literal["adamw_torch", "adamw_torch_fused", "paged_adamw_32bit", "adamw_8bit", "sgd", "adafactor"] = Field(
        default="adamw_torch", description="Optimizer (transformers' `optim` names)."
    )
    adam_epsilon: float = Field(default=1e-8, gt=0, description="AdamW epsilon.")
    max_grad_norm: float = Field(default=1.0, ge=0, description="Gradient clipping norm (0 disables).")
    num_train_epochs: float | None = Field(default=None, gt=0, description="Epochs to train (exclusive with max_steps).")
    max_steps: int | None = Field(default=None, ge=1, description="Optimizer steps to train (exclusive with num_train_epochs).")
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
    save_steps: int = Field(default=500, ge=1, description="Checkpoint every N steps (resume points).", json_schema_extra=NOT_FINGERPRINTED)
    save_total_limit: int | None = Field(
        default=2, ge=1, description="Keep at most N checkpoints.", json_schema_extra=NOT_FINGERPRINTED
    )
    logging_steps: int = Field(default=10, ge=1, description="Log every N steps.", json_schema_extra=NOT_FINGERPRINTED)
    do_eval: bool = Field(
        default=False,
        description="Report eval loss on held-out data (the dataset's `eval_split`, or `validation_split_percentage` "
        "of the training split) at the end of training, and every `eval_steps` if set (ITREX --do_eval).",
    )
    eval_steps: int | None = Field(
        default=None, ge=1, description="With do_eval: also evaluate every N steps; null evaluates once, at the end.",
        json_schema_extra=NOT_FINGERPRINTED,
    )

    @model_validator(mode="after")
    def _eval_data(self) -> "TrainStageBase":
        if self.do_eval and not self.dataset.has_eval_data:
            raise ValueError(
                f"`do_eval` needs held-out data, but dataset {self.dataset.name!r} has none; set "
                "`dataset.validation_split_percentage` (e.g. 5) or, for a hub dataset, `dataset.eval_split`"
            )
        return self

    @model_validator(mode="after")
    def _length_of_training(self) -> "TrainStageBase":
        if (self.num_train_epochs is None) == (self.max_steps is None):
            raise ValueError(
                "set exactly one of `num_train_epochs` and `max_steps` "
                f"(got num_train_epochs={self.num_train_epochs}, max_steps={self.max_steps}); "
                "override the other with null, e.g. `sft.num_train_epochs=null`"
            )
        return self


class SFTStage(TrainStageBase):
    kind: Literal["sft"] = Field(default="sft", description="Supervised fine-tuning.")
    task: Task = Field(
        default="completion",
        description="ITREX task: completion (instructions, alpaca prompt), chat (multi-turn, the model's chat template), "
        "summarization (article -> summary) or code-generation; picks the default template and evaluation.",
    )
    max_seq_length: int = Field(default=512, ge=8, description="Longest tokenized sample (prompt + response).")
    max_prompt_length: int | None = Field(
        default=None, ge=1, description="Longest prompt part (ITREX max_source_length); longer prompts are cut from the left."
    )
    packing: bool = Field(
        default=False,
        description="Pack whole samples into max_seq_length blocks (ITREX --dataset_concatenation); each sample "
        "attends only to itself (per-sample causal attention or a block-diagonal mask; positions restart per sample).",
    )
    pad_to_max: bool | None = Field(
        default=None,
        description="Pad every batch to max_seq_length (static shapes, ITREX pad_max); null follows the hardware profile.",
        json_schema_extra=NOT_FINGERPRINTED,
    )
    loss_on: Literal["assistant", "all"] = Field(
        default="assistant", description="`assistant` masks prompt tokens from the loss; `all` trains on every token."
    )
    group_by_length: bool = Field(default=False, description="Batch samples of similar length together.")
    template: Template | None = Field(
        default=None,
        description="Prompt format the rows are rendered with: neural_chat (### System/User/Assistant), alpaca, chatml, "
        "llama2, qa (Question/Answer), tokenizer (the tokenizer's chat template), summarization, plain; null picks from `task`.",
    )

    @property
    def resolved_template(self) -> str:
        return self.template or TASK_TEMPLATES[self.task]

    @property
    def default_eval(self) -> str:
        return TASK_DEFAULT_EVAL[self.task]

    @model_validator(mode="after")
    def _packing_fits_the_adapter(self) -> "SFTStage":
        if self.packing and self.peft.method in VIRTUAL_TOKEN_METHODS:
            raise ValueError(
                f"`packing` is not supported with peft method {self.peft.method!r}: its virtual tokens would be shared "
                "by every sample of a packed block; set `sft.packing=false` (or use lora / none)"
            )
        return self


class DPOStage(TrainStageBase):
    kind: Literal["dpo"] = Field(default="dpo", description="Direct Preference Optimization.")
    beta: float = Field(default=0.1, gt=0, description="DPO temperature: how far the policy may move from the reference.")
    loss_type: Literal["sigmoid", "hinge", "ipo", "robust", "bco_pair", "sppo_hard", "nca_pair"] = Field(
        default="sigmoid", description="DPO loss variant (TRL names)."
    )
    label_smoothing: float = Field(default=0.0, ge=0, lt=0.5, description="Conservative DPO label smoothing.")
    max_length: int = Field(default=1024, ge=8, description="Longest prompt + response.")
    max_prompt_length: int = Field(default=512, ge=1, description="Longest prompt.")
    pad_to_max: bool | None = Field(
        default=None,
        description="Pad every batch to max_length (static shapes); null follows the hardware profile.",
        json_schema_extra=NOT_FINGERPRINTED,
    )
    template: Template = Field(default="neural_chat", description="Prompt format the preference prompts are rendered with.")
    group_by_length: bool | None = Field(
        default=None,
        description="Batch pairs of similar length together (less padding: faster on dynamic-shape devices); "
        "null: on unless the hardware profile pads to static shapes.",
    )
    precompute_ref_log_probs: bool | None = Field(
        default=None,
        description="Score every pair under the reference once, in a pass before training (pairs sorted by length), "
        "instead of a reference forward inside every step: lower peak memory (no reference activations on top of "
        "the policy's), no reference copy kept without an adapter, and less work from the second epoch on. "
        "null: on, except on Gaudi and with DeepSpeed.",
        json_schema_extra=NOT_FINGERPRINTED,
    )

    @property
    def resolved_template(self) -> str:
        return self.template

    @model_validator(mode="after")
    def _prompt_fits(self) -> "DPOStage":
        if self.max_prompt_length >= self.max_length:
            raise ValueError(
                f"max_prompt_length ({self.max_prompt_length}) must be smaller than max_length ({self.max_length})"
            )
        return self


class MergeStage(StageBase):
    kind: Literal["merge"] = Field(default="merge", description="Merge an upstream LoRA adapter into its base model.")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        default="auto", description="dtype of the saved model; auto keeps the base model's dtype."
    )


# The Open LLM Leaderboard set with its few-shot counts (task:shots).
LEADERBOARD = ["arc_challenge:25", "hellaswag:10", "mmlu:5", "truthfulqa_mc2:0", "winogrande:5", "gsm8k:5"]
# What a task's default evaluation (TASK_DEFAULT_EVAL) runs.
DEFAULT_EVAL_HARNESS = {"truthfulqa_mc": ("lm_eval", ["truthfulqa_mc2:0"]), "rouge": ("rouge", []), "pass@1": ("pass_at_k", [])}


class EvalStage(StageBase):
    kind: Literal["eval"] = Field(default="eval", description="Evaluate a model.")
    harness: Literal["task", "lm_eval", "builtin", "rouge", "pass_at_k"] = Field(
        default="lm_eval",
        description="`lm_eval`: lm-evaluation-harness `tasks`; `rouge`: generate on `dataset` and score ROUGE-1/2/L; "
        "`pass_at_k`: generate code for HumanEval-format `dataset` problems and run their tests in a sandbox; "
        "`builtin`: exact match, answer loss and perplexity on `dataset`; `task`: the default of the upstream SFT "
        "stage's task (completion/chat -> truthfulqa_mc2, summarization -> rouge, code-generation -> pass_at_k).",
    )
    tasks: list[str] = Field(
        default_factory=list,
        description="lm-eval task names, each optionally with its few-shot count (`arc_challenge:25`); "
        "`leaderboard` stands for the Open LLM Leaderboard set (ARC 25, HellaSwag 10, MMLU 5, TruthfulQA 0, "
        "Winogrande 5, GSM8K 5).",
    )
    num_fewshot: int | None = Field(default=None, ge=0, description="Few-shot examples for tasks without `:N` (null: the task's default).")
    limit: int | None = Field(default=None, ge=1, description="Evaluate only the first N examples of each task or dataset.")
    batch_size: int = Field(default=1, ge=1, description="Evaluation batch size.")
    include_path: str | None = Field(
        default=None, description="lm_eval: a directory of extra task YAMLs (local tasks, e.g. on local data files)."
    )
    apply_chat_template: bool = Field(
        default=False, description="lm_eval: wrap prompts in the model's chat template (off for the Open LLM Leaderboard setup)."
    )
    system_instruction: str | None = Field(
        default=None, description="lm_eval: system prompt used with the chat template."
    )
    dataset: DatasetConfig | None = Field(
        default=None,
        description="builtin / rouge: conversations whose last assistant turn is the reference; pass_at_k: "
        "HumanEval-format problems. rouge with no dataset uses the upstream SFT stage's held-out rows.",
    )
    preference_dataset: DatasetConfig | None = Field(
        default=None,
        description="Builtin harness: preference pairs; scores how often a model gives the chosen answer a higher "
        "log-likelihood than the rejected one (what DPO optimises).",
    )
    max_new_tokens: int = Field(default=32, ge=1, description="Generation budget per answer (builtin, rouge, pass_at_k).")
    num_samples: int = Field(default=1, ge=1, description="pass_at_k: completions per problem (n); above 1 they are sampled.")
    k: list[int] = Field(default_factory=lambda: [1], description="pass_at_k: the k of each pass@k reported (each <= num_samples).")
    temperature: float = Field(default=0.8, gt=0, description="pass_at_k: sampling temperature when num_samples > 1.")
    top_p: float = Field(default=0.95, gt=0, le=1, description="pass_at_k: nucleus sampling threshold when num_samples > 1.")
    timeout_s: float = Field(default=10.0, gt=0, description="pass_at_k: wall-clock limit per test program.")
    memory_mb: int = Field(default=1024, ge=64, description="pass_at_k: address-space limit per test program.")
    template: Template | None = Field(
        default=None,
        description="Prompt format for builtin and rouge (pass_at_k completes the raw prompt); null: the template "
        "the nearest earlier SFT stage trained with (neural_chat without one).",
    )
    compare: list[str] = Field(
        default_factory=list,
        description="Also score these models for a before/after: `base` (the recipe's untrained base model) or "
        "names of earlier stages that produce a model (e.g. `merge`).",
    )

    @property
    def expanded_tasks(self) -> list[str]:
        return [t for task in self.tasks for t in (LEADERBOARD if task == "leaderboard" else [task])]

    @model_validator(mode="after")
    def _has_work(self) -> "EvalStage":
        if self.harness == "lm_eval" and not self.tasks:
            raise ValueError("the lm_eval harness needs at least one task in `tasks` (or `leaderboard`)")
        if self.harness == "builtin" and self.dataset is None and self.preference_dataset is None:
            raise ValueError("the builtin harness needs a `dataset` or a `preference_dataset`")
        if self.harness == "pass_at_k":
            if self.dataset is None or self.dataset.format != "humaneval":
                raise ValueError("the pass_at_k harness needs a HumanEval-format `dataset` "
                                 "(e.g. `+dataset@eval.dataset=humaneval`)")
            if max(self.k) > self.num_samples:
                raise ValueError(f"pass@{max(self.k)} needs at least {max(self.k)} samples per problem; "
                                 f"raise `num_samples` to {max(self.k)} or lower `k`")
        if self.dataset is not None and self.dataset.format == "humaneval" and self.harness not in ("pass_at_k", "task"):
            raise ValueError(f"a HumanEval-format dataset is scored by harness `pass_at_k`, not {self.harness!r}")
        for task in self.expanded_tasks:
            name, _, shots = task.partition(":")
            if not name or (shots and not shots.isdigit()):
                raise ValueError(f"`tasks`: {task!r} is not `name` or `name:shots` (e.g. arc_challenge:25)")
        return self


class GenerateStage(StageBase):
    kind: Literal["generate"] = Field(default="generate", description="Generate answers to prompts with a model.")
    prompts: list[str] = Field(default_factory=list, description="Prompts to answer.")
    prompts_file: str | None = Field(
        default=None, description="Also answer the prompts in this file: .txt (one per line) or .jsonl (a `prompt` field per line)."
    )
    system: str | None = Field(
        default=None, description="System prompt put before every prompt (use the one the model was trained with)."
    )
    template: Template | None = Field(
        default=None,
        description="Prompt format the prompts are wrapped in; null: the template the nearest earlier SFT stage "
        "trained with (neural_chat without one).",
    )
    max_new_tokens: int = Field(default=100, ge=1, description="Tokens to generate per prompt.")
    do_sample: bool = Field(default=False, description="Sample instead of greedy decoding.")
    temperature: float = Field(default=1.0, gt=0, description="Sampling temperature.")
    top_p: float = Field(default=1.0, gt=0, le=1, description="Nucleus sampling threshold.")
    batch_size: int = Field(default=1, ge=1, description="Prompts per forward pass.")
    seed: int = Field(default=42, description="Sampling seed.")

    @model_validator(mode="after")
    def _has_prompts(self) -> "GenerateStage":
        if not self.prompts and not self.prompts_file:
            raise ValueError("a generate stage needs `prompts` or a `prompts_file`")
        return self


class ExportStage(StageBase):
    kind: Literal["export"] = Field(
        default="export",
        description="Publish a model: its Hugging Face files, a GGUF file for llama.cpp and a model card (README.md "
        "with Hugging Face metadata, every stage's settings, the evaluation tables and the fingerprints).")
    gguf_dtype: Literal["f16", "f32"] | None = Field(
        default="f16", description="Precision of the GGUF file (f32 is exact, f16 half the size); null writes none.")
    tokenizer_pre: str | None = Field(
        default=None,
        description="llama.cpp pre-tokenizer name written into the GGUF (how text is split before BPE: `smollm`, "
        "`llama-bpe`, ...); null: the base model's own when it came from a GGUF file, else `default`.")
    model_card: bool = Field(default=True, description="Write README.md, a Hugging Face model card.")


StageConfig = Annotated[
    Union[SFTStage, DPOStage, MergeStage, EvalStage, GenerateStage, ExportStage], Field(discriminator="kind")
]

STAGE_KINDS = {"sft": SFTStage, "dpo": DPOStage, "merge": MergeStage, "eval": EvalStage, "generate": GenerateStage,
               "export": ExportStage}
TRAIN_KINDS = {"sft", "dpo"}
