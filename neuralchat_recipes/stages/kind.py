"""The contract of a stage kind: its settings, its place in the stage graph, its rules, its plan and its run.

A kind is one module in this package that defines a ``StageKind`` subclass and registers an instance in
``stages/__init__.py``. Everything the engine knows about a kind it learns from that object: the planner,
the recipe validation, preflight and the runner never test a kind's name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

from ..config.base import NOT_FINGERPRINTED, ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from ..backends import Device
    from ..config.dataset import DatasetConfig
    from ..config.stage import StageBase
    from ..recipe import RecipeConfig

__all__ = ["NOT_FINGERPRINTED", "PlanContext", "PlanError", "Resolved", "StageKind"]


class PlanError(ConfigError):
    """The config is valid but cannot run as asked (e.g. does not fit the hardware)."""


class Resolved(BaseModel):
    """A stage's settings as it will run them: every derived value decided (batch split, padding, template ...).

    Fields marked ``NOT_FINGERPRINTED`` (logging and checkpoint cadence, the per-device split of the global
    batch, how memory is saved) do not change what the stage produces and stay out of its fingerprint."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    precision: str  # bf16 | fp16 | fp32, from the hardware profile

    def fingerprint_payload(self) -> dict[str, Any]:
        data = self.model_dump(mode="json")
        for name, info in type(self).model_fields.items():
            extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
            if extra.get("fingerprint") is False:
                data.pop(name, None)
        return data

    def view(self) -> dict[str, Any]:
        """The plan's JSON view (what `mode=plan` prints as a stage's `args`)."""
        return self.model_dump(mode="json")


@dataclass
class PlanContext:
    """What a kind's ``resolve`` may look at."""

    recipe: RecipeConfig
    name: str
    stage: Any  # the kind's config model
    hardware: Any  # config.hardware.HardwareConfig: the recipe's profile with the stage's overrides
    device: Device
    precision: str
    world: int  # devices this stage runs on
    model_facts: dict[str, Any] | None  # what the base model's local files say (model_sources.model_facts)
    params_billion: float | None
    notes: list[str] = field(default_factory=list)


class StageKind:
    """Base of every kind; the defaults describe a stage that consumes a model and produces nothing to consume."""

    name: ClassVar[str]
    config: ClassVar[type[StageBase]]
    # what the stage's input may be: "model" (loadable on its own) and/or "adapter" (base + adapter)
    accepts: ClassVar[frozenset[str]] = frozenset({"model"})
    # runs on every device of a multi-device profile (training); others run once, in the runner's process
    distributed: ClassVar[bool] = False

    def runs_on_every_device(self, stage) -> bool:
        """Whether this stage runs on every device of its hardware (under its launcher), or once, in-process."""
        return self.distributed

    def runs_deepspeed(self, stage) -> bool:
        """Whether the stage runs DeepSpeed without ZeRO settings (inference): launchers start it as DeepSpeed's."""
        return False

    def produces(self, stage) -> str | None:
        """What the artifact is: "model" (loadable on its own), "adapter" (needs its base), or None."""
        return None

    def datasets(self, stage) -> list[tuple[str, DatasetConfig, str]]:
        """(key under the stage, dataset, use) for every dataset the stage reads; use is sft | preference | code."""
        return []

    def rules(self, recipe: RecipeConfig, name: str, stage) -> list[str]:
        """Problems with this stage in this recipe, each a sentence naming the key and the fix."""
        return []

    def extra_inputs(
        self, recipe: RecipeConfig, name: str, stage, upstream: dict[str, Any] | None, by_name: dict[str, Any]
    ) -> list[dict[str, Any]]:
        """Plan inputs beyond the one the stage consumes (a merge's base, an evaluation's compared models)."""
        return []

    def memory_workload(self, p: PlanContext, resolved):
        """What the stage does as far as its memory goes (memory.Workload), or None: no estimate."""
        return None

    def runs_generated_code(self, args) -> bool:
        """Whether the stage, with these resolved settings, runs code a model wrote (it needs the sandbox)."""
        return False

    def resolve(self, p: PlanContext) -> Resolved:
        raise NotImplementedError

    def run(self, ctx) -> dict[str, Any]:
        """Do the work into ``ctx.final``; return the metrics for the manifest. Heavy imports go in here."""
        raise NotImplementedError
