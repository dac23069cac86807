"""The composed recipe: model + hardware + the pipeline's stages, with cross-field rules.

``build_recipe(raw)`` is the one door from Hydra's plain dict to typed config: stage settings
live at the top level under their stage names (``sft:``, ``dpo:``), and are gathered into
``RecipeConfig.stages`` here so the command line can address them as ``sft.learning_rate``.
"""

from __future__ import annotations

import difflib
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from .base import ConfigError, StrictModel, format_validation_error
from .hardware import HardwareConfig
from .model import ModelConfig
from .stage import DEFAULT_EVAL_HARNESS, STAGE_KINDS, TRAIN_KINDS, StageConfig


def produces(stage) -> str | None:
    """What a stage's artifact is: "model" (loadable on its own), "adapter" (needs its base), or None."""
    if stage.kind in TRAIN_KINDS:
        return "model" if stage.peft.method == "none" else "adapter"
    return "model" if stage.kind in ("merge", "export") else None


class RecipeConfig(StrictModel):
    name: str = Field(description="Recipe name.")
    description: str = Field(default="", description="What the recipe reproduces.")
    mode: Literal["run", "plan", "validate"] = Field(
        default="run", description="`run` executes the plan, `plan` prints it as JSON, `validate` checks the config."
    )
    pipeline: list[str] = Field(min_length=1, description="Stage names in execution order; each names a top-level block.")
    model: ModelConfig = Field(description="Base model (a `model/` entry).")
    hardware: HardwareConfig = Field(description="Hardware profile (a `hardware/` entry).")
    stages: dict[str, StageConfig] = Field(description="Stage settings by name (written at the top level of the recipe).")
    output_root: str = Field(default="outputs", description="Where stage artifacts and run records are written.")
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(
        default_factory=list,
        description="Where training stages also log (transformers' report_to); the run's report.md is always written.",
    )
    sweep_objective: str | None = Field(
        default=None, description="For search sweepers (Optuna): the job's metric they optimize, a sweep-table column "
        "such as `eval.exact_match` or `sft.last_loss`; the job returns its value."
    )
    hub_token_env: str = Field(
        default="HF_TOKEN", description="Environment variable holding the hub token for gated models and datasets; its value is "
        "passed to the hub libraries as HF_TOKEN and never written to manifests or run records."
    )

    @model_validator(mode="after")
    def _cross_field(self) -> "RecipeConfig":
        problems: list[str] = []
        seen: list[str] = []
        for name in self.pipeline:
            if name in seen:
                problems.append(f"`pipeline`: stage {name!r} appears twice")
            if name not in self.stages:
                problems.append(f"`pipeline`: stage {name!r} has no settings block `{name}:`")
                seen.append(name)
                continue
            stage = self.stages[name]
            upstream = self.upstream_of(name)
            if stage.input not in (None, "base") and stage.input not in seen:
                close = difflib.get_close_matches(stage.input, seen, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; earlier stages: {', '.join(seen) or 'none'}"
                problems.append(f"`{name}.input` = {stage.input!r}: not an earlier stage of the pipeline{hint}")
                seen.append(name)
                continue
            problems += self._stage_rules(name, stage, upstream)
            seen.append(name)
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def upstream_of(self, name: str) -> str | None:
        """Name of the stage whose artifact ``name`` consumes, or None for the base model.

        By default the nearest earlier stage that produces a model or an adapter (evaluation and
        generation stages are skipped)."""
        stage = self.stages[name]
        if stage.input == "base":
            return None
        if stage.input is not None:
            return stage.input
        earlier = self.pipeline[: self.pipeline.index(name)]
        return next((n for n in reversed(earlier) if n in self.stages and produces(self.stages[n])), None)

    def sft_before(self, name: str) -> str | None:
        """The nearest SFT stage earlier in the pipeline (whose task and template an eval follows)."""
        earlier = self.pipeline[: self.pipeline.index(name)] if name in self.pipeline else []
        return next((n for n in reversed(earlier) if n in self.stages and self.stages[n].kind == "sft"), None)

    def resolve_eval(self, name: str) -> tuple[str | None, list[str], str | None]:
        """(harness, lm-eval tasks, nearest earlier SFT stage) of an eval stage; harness `task`
        becomes the default of that SFT stage's task (None when there is no SFT stage)."""
        stage, sft = self.stages[name], self.sft_before(name)
        harness, tasks = stage.harness, stage.expanded_tasks
        if harness == "task":
            if sft is None:
                return None, tasks, None
            harness, default_tasks = DEFAULT_EVAL_HARNESS[self.stages[sft].default_eval]
            tasks = tasks or default_tasks
        return harness, tasks, sft

    def template_for(self, name: str) -> str:
        """An eval / generate stage's prompt format: its own, else the nearest earlier SFT stage's."""
        stage, sft = self.stages[name], self.sft_before(name)
        if stage.template:
            return stage.template
        return self.stages[sft].resolved_template if sft else "neural_chat"

    def _eval_rules(self, name: str, stage: Any) -> list[str]:
        harness, _, sft = self.resolve_eval(name)
        if harness is None:
            return [f"`{name}.harness` = 'task': there is no SFT stage before it to take the task from; "
                    "set `" + name + ".harness` to lm_eval, rouge, pass_at_k or builtin"]
        if harness == "pass_at_k" and (stage.dataset is None or stage.dataset.format != "humaneval"):
            return [f"`{name}`: the {sft!r} stage's task ({self.stages[sft].task}) is judged by pass@k, which needs a "
                    f"HumanEval-format dataset; add one with `+dataset@{name}.dataset=humaneval`"]
        if harness == "rouge" and stage.dataset is None and (sft is None or not self.stages[sft].dataset.has_eval_data):
            return [f"`{name}`: ROUGE needs held-out summaries: set `{name}.dataset`, or give the SFT stage's dataset "
                    f"held-out rows (`{sft or 'sft'}.dataset.validation_split_percentage=5` or its `eval_split`)"]
        return []

    def _stage_rules(self, name: str, stage: Any, upstream: str | None) -> list[str]:
        problems = []
        if stage.kind == "eval":
            problems += self._eval_rules(name, stage)
        model = self.model
        if model.architecture == "seq2seq" and stage.kind == "dpo":
            problems.append(
                f"`{name}`: a dpo stage is not supported for the seq2seq model {model.name!r}; "
                "seq2seq models run sft, merge, eval and generate"
            )
        if stage.kind in TRAIN_KINDS:
            method = stage.peft.method
            if method not in model.supported_peft:
                problems.append(
                    f"`{name}.peft.method` = {method!r}: not supported for model {model.name!r}; "
                    f"supported: {', '.join(model.supported_peft)}"
                )
            need = "preference" if stage.kind == "dpo" else "sft"
            if need not in stage.dataset.uses:
                problems.append(
                    f"`{name}.dataset` = {stage.dataset.name!r}: a {stage.kind} stage needs a "
                    f"{'preference dataset (prompt, chosen, rejected)' if need == 'preference' else 'supervised dataset'}, "
                    f"but format {stage.dataset.format!r} is not one; "
                    f"pick e.g. {'dataset@' + name + '.dataset=orca_dpo_pairs' if need == 'preference' else 'dataset@' + name + '.dataset=slimorca'}"
                )
            world = self.hardware.world_size
            if stage.global_batch_size % world:
                problems.append(
                    f"`{name}.global_batch_size` = {stage.global_batch_size}: not divisible by hardware "
                    f"{self.hardware.name!r}'s world size {world}; use a multiple of {world}"
                )
        pref = getattr(stage, "preference_dataset", None)
        if pref is not None and "preference" not in pref.uses:
            problems.append(f"`{name}.preference_dataset` = {pref.name!r}: format {pref.format!r} has no chosen/rejected pairs")
        up = self.stages.get(upstream) if upstream else None
        consumes_adapters = stage.kind in ("merge", "eval", "generate")  # eval / generate load base + adapter
        if up is not None and produces(up) != "model" and not (consumes_adapters and produces(up) == "adapter"):
            what = f"a {up.peft.method} adapter" if produces(up) == "adapter" else f"no model ({up.kind} stages produce none)"
            fix = (f"put a merge stage between them (or train {upstream!r} with `peft@{upstream}.peft=none`)"
                   if produces(up) == "adapter" else f"set `{name}.input` to a stage that produces a model")
            problems.append(f"`{name}`: its input {upstream!r} produces {what}; {fix}")
        for other in getattr(stage, "compare", []):
            if other == "base":
                continue
            if other not in self.pipeline[: self.pipeline.index(name)]:
                problems.append(f"`{name}.compare`: {other!r} is not `base` or an earlier stage")
            elif produces(self.stages[other]) != "model":
                problems.append(f"`{name}.compare`: {other!r} does not produce a model (compare a merge stage instead)")
        if stage.kind == "merge":
            if up is None:
                problems.append(f"`{name}`: a merge stage needs an upstream adapter, but its input is the base model")
            elif produces(up) != "adapter" or up.peft.method != "lora":
                what = f"a {up.peft.method} adapter" if produces(up) == "adapter" else "no adapter"
                problems.append(
                    f"`{name}`: a merge stage needs an upstream LoRA adapter, but {upstream!r} produces {what}"
                    + ("; only LoRA weights can be merged into the base" if produces(up) == "adapter" else "")
                )
        return problems


_TOP_LEVEL = set(RecipeConfig.model_fields) - {"stages"}


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
        if key in pipeline or (isinstance(value, dict) and value.get("kind") in STAGE_KINDS):
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

