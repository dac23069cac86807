"""Stage implementations, each with the same small shape: load, train or transform, save.

``STAGES`` maps a stage kind to the function that runs it; the runner calls it with a
``StageContext`` and gets back the metrics for the manifest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable


@dataclass
class StageContext:
    recipe: Any  # RecipeConfig
    spec: Any  # plan.StageSpec
    backend: Any  # backends.Backend
    checkpoints: Path  # resumable trainer output (inside the staging dir)
    final: Path  # where the artifact is written before it is moved into place

    @property
    def stage(self):
        return self.recipe.stages[self.spec.name]


def _lazy(module: str) -> Callable[[StageContext], dict[str, Any]]:
    def run(ctx: StageContext) -> dict[str, Any]:
        import importlib

        with ctx.backend.stage_memory():
            return importlib.import_module(f"{__name__}.{module}").run(ctx)

    return run


STAGES: dict[str, Callable[[StageContext], dict[str, Any]]] = {
    "sft": _lazy("sft"),
    "dpo": _lazy("dpo"),
    "merge": _lazy("merge"),
    "eval": _lazy("evaluate"),
    "generate": _lazy("generate"),
    "export": _lazy("export"),
}
