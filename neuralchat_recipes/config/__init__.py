"""Typed configuration of the config groups: one pydantic module per group (the recipe assembles them)."""

from .base import ConfigError, StrictModel
from .dataset import DatasetConfig
from .hardware import HardwareConfig
from .model import ModelConfig
from .peft import PEFT_METHODS, PeftConfig

__all__ = ["ConfigError", "StrictModel", "DatasetConfig", "HardwareConfig", "ModelConfig", "PEFT_METHODS", "PeftConfig"]
