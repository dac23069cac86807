"""The composed recipe: model + hardware + the pipeline's stages, validated as a whole.

``build_recipe(raw)`` is the one door from Hydra's plain dict to typed config: stage settings
live at the top level under their stage names (``sft:``, ``dpo:``), and are gathered into
``RecipeConfig.stages`` here so the command line can address them as ``sft.learning_rate``. A
stage's settings are validated by its kind's config model (the ``kind`` field picks it); the
rules that span stages come from the graph and the kinds (graph.rules).
"""

from __future__ import annotations

import difflib
from typing import Annotated, Any, Literal, Union

from pydantic import Field, ValidationError, field_validator, model_validator

from . import graph
from .config.base import ConfigError, StrictModel, format_validation_error
from .config.hardware import HardwareConfig, apply_override
from .config.model import ModelConfig
from .stages import KINDS

# a stage's settings: the config model of its kind, picked by the `kind` field
StageConfig = Annotated[Union[tuple(kind.config for kind in KINDS.values())], Field(discriminator="kind")]  # noqa: UP007


class ChatConfig(StrictModel):
    """How `mode=chat` and `mode=generate` talk to a model."""

    model: str | None = Field(
        default=None,
        description="A model directory to talk to; null: the recipe's final model (its last stage that makes a "
        "model or adapter, trained by an earlier `mode=run`).",
    )
    max_new_tokens: int = Field(default=256, ge=1, description="Longest answer, in tokens.")
    temperature: float = Field(default=0.0, ge=0, description="Sampling temperature; 0: greedy.")
    system: str | None = Field(
        default=None, description="System prompt; null: the one saved with the model (what it was trained with)."
    )


class RecipeConfig(StrictModel):
    name: str = Field(description="Recipe name.")
    description: str = Field(default="", description="What the recipe reproduces.")
    mode: Literal["run", "plan", "validate", "fit", "chat", "generate"] = Field(
        default="run",
        description="`run` executes the plan, `plan` prints it as JSON, `validate` checks the config, `fit` prints "
        "each stage's estimated memory per device and, where it does not fit, the overrides that make it fit; "
        "`chat` talks to the recipe's final model (interactive), `generate` answers `prompt` with it and exits.",
    )
    pipeline: list[str] = Field(
        min_length=1, description="Stage names in execution order; each names a top-level block."
    )
    model: ModelConfig = Field(description="Base model (a `model/` entry).")
    hardware: HardwareConfig = Field(description="Hardware profile (a `hardware/` entry).")
    stages: dict[str, StageConfig] = Field(
        description="Stage settings by name (written at the top level of the recipe)."
    )
    output_root: str = Field(default="outputs", description="Where stage artifacts and run records are written.")
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(
        default_factory=list,
        description="Where training stages also log (transformers' report_to); the run's report.md is always written.",
    )
    sweep_objective: str | None = Field(
        default=None,
        description="For search sweepers (Optuna): the job's metric they optimize, a sweep-table column "
        "such as `eval.exact_match` or `sft.last_loss`; the job returns its value.",
    )
    prompt: str | None = Field(default=None, description="mode=generate: the message to answer.")
    chat: ChatConfig = Field(default_factory=lambda: ChatConfig(), description="mode=chat and mode=generate.")
    allow_unsandboxed_code: bool = Field(
        default=False,
        description="Run generated code (pass_at_k, GRPO's code_tests reward) even where bubblewrap cannot sandbox it; "
        "it then runs with your privileges. Only for code you trust.",
    )
    hub_token_env: str = Field(
        default="HF_TOKEN",
        description="Environment variable holding the hub token for gated models and datasets; its value is "
        "passed to the hub libraries as HF_TOKEN and never written to manifests or run records.",
    )

    @field_validator("output_root")
    @classmethod
    def _somewhere(cls, value: str) -> str:
        if not value.strip():  # Path("") is the current directory: artifacts would land among the user's files
            raise ValueError("is empty; set it to a directory for artifacts and run records: `output_root=outputs`")
        return value

    @model_validator(mode="after")
    def _prompt_for_generate(self) -> RecipeConfig:
        if self.mode == "generate" and not self.prompt:
            raise ValueError('mode=generate answers one message: give it as `prompt="..."`')
        return self

    def hardware_for(self, name: str) -> HardwareConfig:
        """The hardware a stage runs on: the recipe's profile with the stage's `hardware` overrides applied."""
        stage = self.stages.get(name)
        return apply_override(self.hardware, stage.hardware if stage is not None else None)

    @model_validator(mode="after")
    def _stage_hardware(self) -> RecipeConfig:
        problems = [p for name, stage in self.stages.items() for p in _hardware_problems(self.hardware, name, stage)]
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @model_validator(mode="after")
    def _cross_field(self) -> RecipeConfig:
        problems = graph.rules(self)
        if problems:
            raise ValueError("\n".join(problems))
        return self


_TOP_LEVEL = set(RecipeConfig.model_fields) - {"stages"}


def _hardware_problems(profile: HardwareConfig, name: str, stage) -> list[str]:
    """Why a stage's hardware overrides do not make a valid profile, each naming `<stage>.hardware.<key>`."""
    try:
        apply_override(profile, stage.hardware)
    except ValidationError as exc:
        lines = format_validation_error(exc, HardwareConfig, lambda path: [f"{name}.hardware", *path]).problems
        return [line if line.startswith("`") else f"`{name}.hardware`: {line}" for line in lines]
    return []


def build_recipe(raw: dict[str, Any]) -> RecipeConfig:
    """Validate Hydra's plain dict into a RecipeConfig, or raise ConfigError naming each bad key."""
    raw = dict(raw)
    pipeline = raw.get("pipeline") or []
    if not isinstance(pipeline, list):
        raise ConfigError([f"`pipeline` = {pipeline!r}: must be a list of stage names"])
    stages: dict[str, Any] = {}
    problems: list[str] = []
    for key in list(raw):
        if key in _TOP_LEVEL:
            continue
        value = raw.pop(key)
        if key in pipeline or (isinstance(value, dict) and value.get("kind") in KINDS):
            stages[key] = value
            continue
        candidates = sorted(_TOP_LEVEL | set(pipeline))
        close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
        hint = f"; did you mean `{close[0]}`?" if close else f"; top-level keys: {', '.join(candidates)}"
        problems.append(f"`{key}`: unknown key (value {value!r}){hint}")
    raw["stages"] = stages
    try:
        cfg = RecipeConfig.model_validate(raw)
    except ValidationError as exc:
        err = format_validation_error(exc, RecipeConfig, _user_path)
        raise ConfigError(problems + err.problems) from None
    if problems:
        raise ConfigError(problems)
    return cfg


def _user_path(path: list[str]) -> list[str]:
    # stages.<name>.x -> <name>.x : that is how the key is written in YAML and on the command line
    return path[1:] if path[:1] == ["stages"] and len(path) > 1 else path
