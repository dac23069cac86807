"""The pydantic models' defaults as Hydra config nodes, so every YAML entry states only what differs from them.

Hydra lets the command line override only keys the composed config already has. Rather than list every
field in every file, each group entry extends its model's node (``defaults: [/schema/<group>@_here_,
_self_]``), registered here in Hydra's ConfigStore from the models themselves: a default is written once,
in its pydantic field, and every key stays overridable (``sft.warmup_ratio=0.1``, ``hardware.memory_gb=40``).
Required fields (a model's ``name``, ``path`` ...) are not in the nodes: each entry gives them.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from .config import DatasetConfig, HardwareConfig, ModelConfig
from .config.deepspeed import DeepSpeedConfig
from .config.hardware import GaudiSettings
from .config.peft import PEFT_METHODS
from .stages import KINDS


def defaults_of(model: type[BaseModel]) -> dict[str, Any]:
    """Every field with a default, as plain values (nested models as their dumps)."""
    out: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        if info.is_required():
            continue
        value = info.get_default(call_default_factory=True)
        out[name] = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
    return out


def schema_nodes() -> dict[tuple[str, str], dict[str, Any]]:
    """(ConfigStore group, name) -> node, for every config group's model and the recipe's top level."""
    from .recipe import RecipeConfig  # (the recipe knows the kinds too)

    top_level = {k: v for k, v in defaults_of(RecipeConfig).items() if k not in ("stages", "description")}
    nodes = {
        ("schema", "recipe"): top_level,
        ("schema", "model"): defaults_of(ModelConfig),
        ("schema", "dataset"): defaults_of(DatasetConfig),
        ("schema", "hardware"): defaults_of(HardwareConfig),
        ("schema", "gaudi"): defaults_of(GaudiSettings),
        ("schema", "deepspeed"): defaults_of(DeepSpeedConfig),
    }
    nodes.update({("schema/peft", method): defaults_of(cls) for method, cls in PEFT_METHODS.items()})
    nodes.update({("schema/stage", name): defaults_of(kind.config) for name, kind in KINDS.items()})
    return nodes


def register_schemas() -> None:
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for (group, name), node in schema_nodes().items():
        store.store(group=group, name=name, node=node)
