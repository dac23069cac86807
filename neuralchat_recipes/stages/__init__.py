"""Stage kinds, one module each, registered here by name: the one place a new kind is added.

Each module defines its settings (a config model), its place in the graph, its rules, ``resolve``
(the typed settings it runs with) and ``run`` (stages/kind.py). Modules import torch and the
training libraries only inside ``run``, so planning and validation stay light.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import cpo, dpo, evaluate, export, generate, grpo, kto, merge, orpo, reward, sft
from .kind import PlanContext, PlanError, Resolved, StageKind

KINDS: dict[str, StageKind] = {
    kind.name: kind
    for kind in (
        sft.KIND,
        merge.KIND,
        dpo.KIND,
        evaluate.KIND,
        generate.KIND,
        export.KIND,
        orpo.KIND,
        cpo.KIND,
        kto.KIND,
        reward.KIND,
        grpo.KIND,
    )
}


@dataclass
class StageContext:
    """What a stage's ``run`` gets: the recipe, its plan entry, its device, and where to write."""

    recipe: Any  # recipe.RecipeConfig
    spec: Any  # plan.StageSpec
    device: Any  # backends.Device
    checkpoints: Path  # resumable trainer output (inside the staging dir)
    final: Path  # where the artifact is written before it is moved into place

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def stage(self):
        """The stage's settings as the recipe states them (its kind's config model)."""
        return self.recipe.stages[self.spec.name]

    @property
    def args(self):
        """The stage's resolved settings (its kind's Resolved model)."""
        return self.spec.args

    @property
    def model(self):
        """The recipe's base model entry (config.model.ModelConfig)."""
        return self.recipe.model

    @property
    def inputs(self):
        return self.spec.inputs


def run_stage_kind(ctx: StageContext) -> dict[str, Any]:
    """Run a stage by its kind, inside its device's memory and thread settings (the thread count is recorded)."""
    with ctx.device.stage_memory(), ctx.device.stage_threads(ctx.spec.model.get("params_billion")) as threads:
        metrics = KINDS[ctx.spec.kind].run(ctx)
    return {**metrics, "torch_threads": threads}


__all__ = ["KINDS", "PlanContext", "PlanError", "Resolved", "StageContext", "StageKind", "run_stage_kind"]
