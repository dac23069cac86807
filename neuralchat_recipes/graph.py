"""The stage graph, in one place: which artifact each stage consumes, what it produces, its plan inputs.

A stage consumes the nearest earlier stage that produces a model or an adapter (or its ``input``:
another stage, or ``base``). What a stage produces and which inputs it accepts its kind says
(stages/kind.py); the rules here hold for every kind.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from .stages import KINDS


@dataclass(frozen=True)
class StageInput:
    """A model, adapter or result a stage reads: an upstream stage's artifact, or the recipe's base model."""

    stage: str | None  # None: the recipe's base model
    fingerprint: str | None = None
    output_dir: str | None = None
    model: str | None = None  # the base model's path (hub id, directory, GGUF, package file)
    revision: str | None = None
    package: str | None = None
    adapter_base: StageInput | None = None  # the input is an adapter: the model it was trained on
    described: bool = False  # export: a stage the model card describes

    def to_dict(self) -> dict[str, Any]:
        data = {"stage": self.stage}
        if self.stage is None:
            data.update(model=self.model, revision=self.revision)
            if self.package:
                data["package"] = self.package
        else:
            data.update(fingerprint=self.fingerprint, output_dir=self.output_dir)
        if self.adapter_base:
            data["adapter_base"] = self.adapter_base.to_dict()
        if self.described:
            data["described"] = True
        return data


def produces(stage) -> str | None:
    """What a stage's artifact is: "model", "adapter", or None."""
    return KINDS[stage.kind].produces(stage)


def final_stage(recipe, names: list[str]) -> str | None:
    """The pipeline's product: the last of ``names`` that makes a model or an adapter (None: none does)."""
    return next((n for n in reversed(names) if produces(recipe.stages[n]) in ("model", "adapter")), None)


def earlier(recipe, name: str) -> list[str]:
    return recipe.pipeline[: recipe.pipeline.index(name)] if name in recipe.pipeline else []


def upstream_of(recipe, name: str) -> str | None:
    """Name of the stage whose artifact ``name`` consumes, or None for the base model."""
    stage = recipe.stages[name]
    if stage.input == "base":
        return None
    if stage.input is not None:
        return stage.input
    # evaluations, generations and reward models are not what the next stage continues from
    consumable = ("model", "adapter")
    return next(
        (n for n in reversed(earlier(recipe, name)) if n in recipe.stages and produces(recipe.stages[n]) in consumable),
        None,
    )


def nearest(recipe, name: str, kind: str) -> str | None:
    """The nearest earlier stage of a kind (an evaluation follows the template of the SFT before it)."""
    return next(
        (n for n in reversed(earlier(recipe, name)) if n in recipe.stages and recipe.stages[n].kind == kind), None
    )


def base_input(recipe) -> StageInput:
    model = recipe.model
    return StageInput(stage=None, model=model.path, revision=model.revision, package=model.package)


def stage_input(spec) -> StageInput:
    return StageInput(stage=spec.name, fingerprint=spec.fingerprint, output_dir=spec.output_dir)


def inputs(recipe, name: str, by_name: dict[str, Any]) -> list[StageInput]:
    """inputs[0] is what the stage consumes (with the base it was trained on when it is an adapter); the
    kind adds what else it reads (an evaluation's compared models, an export's described stages)."""
    stage, upstream = recipe.stages[name], upstream_of(recipe, name)
    if upstream is None:
        first = base_input(recipe)
    else:
        spec = by_name[upstream]
        adapter_base = spec.inputs[0] if produces(recipe.stages[upstream]) == "adapter" else None
        first = StageInput(
            stage=spec.name, fingerprint=spec.fingerprint, output_dir=spec.output_dir, adapter_base=adapter_base
        )
    return [first, *KINDS[stage.kind].extra_inputs(recipe, name, stage, upstream, by_name)]


def rules(recipe) -> list[str]:
    """Problems with the pipeline as a graph, then each stage's own (from its kind), one sentence each."""
    problems: list[str] = []
    seen: list[str] = []
    for name in recipe.pipeline:
        if name in seen:
            problems.append(f"`pipeline`: stage {name!r} appears twice")
        if name not in recipe.stages:
            problems.append(f"`pipeline`: stage {name!r} has no settings block `{name}:`")
            seen.append(name)
            continue
        stage = recipe.stages[name]
        if stage.input not in (None, "base") and stage.input not in seen:
            close = difflib.get_close_matches(stage.input, seen, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; earlier stages: {', '.join(seen) or 'none'}"
            problems.append(f"`{name}.input` = {stage.input!r}: not an earlier stage of the pipeline{hint}")
            seen.append(name)
            continue
        kind = KINDS[stage.kind]
        problems += kind.rules(recipe, name, stage)
        upstream = upstream_of(recipe, name)
        up = recipe.stages.get(upstream) if upstream else None
        made = produces(up) if up is not None else "model"
        if made not in ("model", "adapter"):
            what = f"a {made.replace('_', ' ')}" if made else f"no model ({up.kind} stages produce none)"
            problems.append(
                f"`{name}`: its input {upstream!r} produces {what}; set `{name}.input` to a stage that produces a model"
            )
        elif made == "adapter" and "adapter" not in kind.accepts:
            problems.append(
                f"`{name}`: its input {upstream!r} produces a {up.peft.method} adapter; put a merge stage "
                f"between them (or train {upstream!r} with `peft@{upstream}.peft=none`)"
            )
        # (a kind that needs an adapter and gets a model, such as merge, says so in its own rules)
        seen.append(name)
    return problems
