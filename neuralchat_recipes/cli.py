"""Command line: ``python -m neuralchat_recipes [hydra overrides]`` (same as ``neuralchat-recipes``).

Modes: ``mode=run`` (default) executes the plan, ``mode=plan`` prints it as JSON and nothing
else, ``mode=validate`` prints one OK line or the errors, ``mode=fit`` each stage's memory estimate
(fit.py); ``mode=chat`` and ``mode=generate prompt=...`` talk to the recipe's final model (chat.py).
Every job of a multirun is composed and validated before the first one starts; a bad config exits with
status 2 before torch or transformers are imported.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

from .compose import CONFIG_NAME, config_dir, precheck, to_plain
from .config import ConfigError
from .plan import Plan, build_plan
from .recipe import RecipeConfig, build_recipe

EXIT_CONFIG = 2


def _fail(exc: ConfigError) -> None:
    print(f"error: {exc}", file=sys.stderr)
    print("(see `python -m neuralchat_recipes --help` and README.md for the keys and groups)", file=sys.stderr)
    sys.exit(EXIT_CONFIG)


def execute(recipe: RecipeConfig, plan: Plan | None = None) -> Any:
    plan = plan or build_plan(recipe)
    if recipe.mode == "plan":
        print(plan.to_json())
        return plan
    if recipe.mode == "fit":
        from .fit import report

        print(report(plan))
        return plan
    for warning in plan.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if recipe.mode == "validate":
        stages = " -> ".join(f"{s.name}({s.kind})" for s in plan.stages)
        print(f"OK: recipe {recipe.name} on {recipe.hardware.name} (world size {recipe.hardware.world_size}): {stages}")
        return plan
    if recipe.mode in ("chat", "generate"):
        from . import chat  # heavy imports start here

        return chat.chat(recipe, plan) if recipe.mode == "chat" else chat.generate(recipe, plan)
    from .execution import run_plan  # heavy imports start here
    from .stages.common import SettingError, StageError

    # SIGTERM (a scheduler's stop, `kill`) unwinds like Ctrl-C: locks released, nothing half-published
    # (a handler can only be set from the main thread; a sweep job on a worker thread keeps the default)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminated) if main_thread else None
    try:
        return run_plan(recipe, plan)
    except StageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_CONFIG if isinstance(exc, SettingError) else 1)
    except Terminated:
        print("terminated: run the same command again to resume from the last checkpoint", file=sys.stderr)
        sys.exit(128 + signal.SIGTERM)
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume from the last checkpoint", file=sys.stderr)
        sys.exit(130)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is (a KeyboardInterrupt, so every cleanup that handles Ctrl-C runs)."""


def _terminated(signum, frame) -> None:
    raise Terminated()


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("neuralchat-recipes")
    except PackageNotFoundError:  # a source tree that was not installed
        return "unknown (not installed)"


def _task(cfg) -> Any:
    """One Hydra job. In a multirun it records its overrides and metrics for the sweep table."""
    from .sweep import announce_job, objective, record_job, share_cores_with_parallel_jobs

    announce_job()
    share_cores_with_parallel_jobs()
    try:
        recipe = build_recipe(to_plain(cfg))
        try:
            result = execute(recipe)
        except SystemExit as exc:
            if exc.code:
                record_job(None, error=f"exit {exc.code}")
            raise
        if recipe.mode == "run":
            record_job(result)
            if recipe.sweep_objective:
                return objective(result, recipe.sweep_objective)
        return result
    except ConfigError as exc:
        _fail(exc)


# Hydra plugins our hydra/ configs need: (override, importable module, what installs it)
PLUGINS = [
    ("hydra/launcher=local_parallel", "hydra_plugins.hydra_joblib_launcher", "pip install 'neuralchat-recipes[sweep]'"),
    ("hydra/launcher=slurm", "hydra_plugins.hydra_submitit_launcher", "pip install 'neuralchat-recipes[sweep]'"),
    ("hydra/sweeper=lora_search", "hydra_plugins.hydra_optuna_sweeper", "pip install hydra-optuna-sweeper"),
]


def _missing_plugins(overrides: list[str]) -> list[str]:
    """Hydra says only "Could not load 'hydra/launcher/joblib'"; name the package instead."""
    import importlib.util

    return [
        f"`{override}` needs a Hydra plugin that is not installed: {install}"
        for override, module, install in PLUGINS
        if override in overrides and importlib.util.find_spec(module) is None
    ]


def main(argv: list[str] | None = None) -> None:
    """Console entry point (its return value becomes the exit status, so it returns None)."""
    try:
        _main(argv)
        sys.stdout.flush()  # a broken pipe surfaces here rather than as a complaint at exit
    except BrokenPipeError:
        # the reader went away (`--help | head`): not an error of ours; keep Python from complaining at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(128 + signal.SIGPIPE)


def _main(argv: list[str] | None) -> Any:
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides = [a for a in argv if not a.startswith("-")]
    flags = [a for a in argv if a.startswith("-")]
    if "--version" in flags:  # Hydra's own --version names Hydra's version
        print(f"neuralchat-recipes {version()}")
        return None
    informational = any(f in ("--help", "-h", "--hydra-help", "--info", "--cfg", "-c", "--version") for f in flags)
    multirun = any(f in ("-m", "--multirun") for f in flags)
    missing = _missing_plugins(overrides)
    if missing:
        _fail(ConfigError(missing))
    if not informational:
        try:
            jobs = [(recipe, build_plan(recipe)) for recipe in map(build_recipe, precheck(overrides))]
        except ConfigError as exc:
            _fail(exc)
        if not multirun and not flags:
            # a single job: Hydra composed it just now; run it without composing and planning again
            try:
                return execute(*jobs[0])
            except ConfigError as exc:
                _fail(exc)

    import hydra

    if multirun:  # each job says "sweep job k/n" (announce_job); the jobs' processes inherit the count
        from .sweep import SWEEP_JOBS_ENV, count_jobs

        total = count_jobs(overrides)
        if total:
            os.environ[SWEEP_JOBS_ENV] = str(total)
    hydra_main = hydra.main(config_path=str(config_dir()), config_name=CONFIG_NAME, version_base=None)(_task)
    saved = sys.argv
    sys.argv = [saved[0] if saved else "neuralchat-recipes", *argv]
    try:
        return hydra_main()
    finally:
        sys.argv = saved


if __name__ == "__main__":  # pragma: no cover
    main()
