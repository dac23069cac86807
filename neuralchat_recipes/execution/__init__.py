"""Running a plan: the artifact store (cache, locks, atomic publish, manifests), supervision of launched
stages, the run loop, the sandbox for generated code, and the one presenter of stage results.

The names below load on first use, so a stage module can import a leaf of this package (secrets, sandbox)
without pulling in the run loop, which imports the stage kinds.
"""

from importlib import import_module

_EXPORTS = {
    "RunError": "loop",
    "preflight": "loop",
    "recipe_json": "loop",
    "run_plan": "loop",
    "run_stage": "loop",
    "StageResult": "present",
    "scrub": "secrets",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
