"""Typed configuration: one pydantic module per Hydra config group."""

from .base import ConfigError, StrictModel
from .dataset import DatasetConfig
from .hardware import HardwareConfig
from .model import ModelConfig
from .peft import PEFT_METHODS, PeftConfig
from .recipe import RecipeConfig, build_recipe
from .stage import STAGE_KINDS, StageConfig

__all__ = [
    "ConfigError",
    "StrictModel",
    "DatasetConfig",
    "HardwareConfig",
    "ModelConfig",
    "PEFT_METHODS",
    "PeftConfig",
    "RecipeConfig",
    "build_recipe",
    "STAGE_KINDS",
    "StageConfig",
]
