"""Running a plan: the artifact store (cache, locks, atomic publish, manifests), supervision of launched
stages, the run loop, and the one presenter of stage results."""

from .loop import RunError, preflight, recipe_json, run_plan, run_stage
from .present import StageResult
from .secrets import scrub

__all__ = ["RunError", "StageResult", "preflight", "recipe_json", "run_plan", "run_stage", "scrub"]
