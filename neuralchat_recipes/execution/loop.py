"""Run a plan: check what can fail cheaply, then each stage from the cache or by running it, then the run record.

``runs/<recipe>-<time>-<pid>/`` under ``output_root`` holds one record per run: plan.json, recipe.json,
summary.json, report.md and a link to each stage's artifact.
"""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import json
import logging
import os
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import __version__
from ..backends import get_device, runtime_problems
from ..config import ConfigError
from ..graph import final_stage, produces
from ..plan import Plan, StageSpec
from ..recipe import RecipeConfig
from ..stages.common import SettingError
from .present import StageResult, console_summary
from .sandbox import SandboxUnavailable, require_sandbox
from .secrets import scrub, write_json
from .store import fresh_final, is_cached, publish, read_manifest, stage_lock
from .supervise import launch_stage

log = logging.getLogger("neuralchat_recipes")


class RunError(ConfigError):
    """Something about the run's surroundings (paths, data, devices) that must change before training."""

    heading = "cannot run"


def setup_logging() -> None:
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def quiet_libraries() -> None:
    """Our progress lines replace the libraries' bars; deprecation chatter is not for users."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*")
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def library_versions() -> dict[str, str]:
    from importlib import metadata

    out = {"neuralchat-recipes": __version__}
    for name in ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "deepspeed", "optimum-habana"):
        with contextlib.suppress(metadata.PackageNotFoundError):  # optional ones may be missing
            out[name] = metadata.version(name)
    return out


def recipe_json(recipe: RecipeConfig) -> str:
    """The validated recipe as JSON with its stages back at the top level (what build_recipe reads)."""
    data = recipe.model_dump(mode="json")
    stages = data.pop("stages")
    data.update(stages)
    data["mode"] = "run"
    return json.dumps(scrub(data), indent=2)


def check_writable(root: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise RunError(
            [
                f"`output_root` = {str(root)!r}: cannot write there ({exc.strerror or exc}); "
                "set output_root=/a/writable/dir"
            ]
        ) from None


def preflight(recipe: RecipeConfig, plan: Plan) -> None:
    """Everything that can fail cheaply fails here, before the first stage trains."""
    from ..data.formats import DataError
    from ..data.loading import HubDataUnavailable, check, data_cache
    from ..stages import KINDS

    check_writable(Path(plan.output_root))
    pending = [spec for spec in plan.stages if not is_cached(spec)]
    problems: list[str] = []
    for spec in pending:  # each stage on its own hardware (the recipe's profile, or the stage's overrides)
        for problem in runtime_problems(recipe.hardware_for(spec.name), {spec.launch["launcher"]}):
            if problem not in problems:
                problems.append(problem)
    if any(_loads_base(spec) for spec in pending):
        problems += _offline_model_problems(recipe)
    for spec in pending:
        quantization = (spec.peft or {}).get("quantization")
        if quantization and importlib.util.find_spec("bitsandbytes") is None:
            problems.append(
                f"`{spec.name}.peft.quantization` = {quantization!r} loads the base model through bitsandbytes, "
                "which is not installed: pip install 'neuralchat-recipes[qlora]'"
            )
        if KINDS[spec.kind].runs_generated_code(spec.args):
            try:
                require_sandbox(recipe.allow_unsandboxed_code, f"`{spec.name}`")
            except SandboxUnavailable as exc:
                problems.append(str(exc))
        for key, dataset, use in KINDS[spec.kind].datasets(recipe.stages[spec.name]):
            try:
                check(dataset, use, data_cache(recipe.output_root))
            except HubDataUnavailable as exc:
                where = f"{spec.name}.{key}"
                problems.append(
                    f"`{where}` ({dataset.name}): {exc}; download it where there is network, or train on a local "
                    f"copy: `{where}.path=/path/to/file.jsonl {where}.hub_id=null`"
                )
            except DataError as exc:
                problems.append(f"`{spec.name}.{key}` ({dataset.name}): {exc}")
    if problems:
        raise RunError(problems)


def _loads_base(spec: StageSpec) -> bool:
    """Whether a stage loads the recipe's base model (directly, under an adapter, or to compare with)."""
    stack = list(spec.inputs)
    while stack:
        entry = stack.pop()
        if entry.stage is None:
            return True
        if entry.adapter_base:
            stack.append(entry.adapter_base)
    return False


def _offline_model_problems(recipe: RecipeConfig) -> list[str]:
    """Offline, a hub model must already be in the local cache: say so now rather than when its stage starts."""
    from ..stages.common import hub_offline

    if not hub_offline():
        return []
    from ..model_sources import uncached_hub_ids

    return [
        f"`{key}` = {repo!r}: not in the local Hugging Face cache, and HF_HUB_OFFLINE=1 is set; download it where "
        f"there is network (`hf download {repo}`) and copy the cache here, or set `{key}` to a local directory"
        for key, repo in uncached_hub_ids(recipe.model)
    ]


def _execute(recipe: RecipeConfig, spec: StageSpec, staging: Path) -> dict[str, Any]:
    from ..stages import StageContext, run_stage_kind

    quiet_libraries()
    if spec.launch["launcher"] == "inprocess":
        device = get_device(recipe.hardware_for(spec.name))
        return run_stage_kind(StageContext(recipe, spec, device, staging / "checkpoints", staging / "final"))
    return launch_stage(spec, staging)


def disk_full(exc: BaseException, where: Path) -> bool:
    """Whether a stage's error is a full disk: ENOSPC in the error or what caused it (safetensors and launched ranks
    wrap it), or, since torch's writer reports only "iostream error", a disk that has next to nothing left."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or "No space left on device" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    try:
        usage = shutil.disk_usage(where)
    except OSError:
        return False
    return usage.free < max(1 << 20, usage.total // 1000)


def _bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} bytes"


def disk_full_message(spec: StageSpec, staging: Path, makes_model: bool) -> str:
    """What filled up, how much is free, roughly what the stage writes, and that a re-run resumes."""
    free = shutil.disk_usage(staging if staging.exists() else staging.parent).free
    params = spec.model.get("params_billion")
    size = ""
    if params and makes_model:
        per_param = 4 if spec.args.precision == "fp32" else 2
        size = f" This stage writes a model of about {_bytes(params * 1e9 * per_param)}, and each checkpoint more."
    return (
        f"`output_root`: stage {spec.name} ran out of space on the disk that holds "
        f"{Path(spec.output_dir).parents[1]} ({_bytes(free)} free now).{size} Nothing was published. Free some "
        "space (finished runs you no longer need under artifacts/, old work under staging/) and run the same "
        "command again: the stage resumes from its last complete checkpoint"
    )


def run_stage(recipe: RecipeConfig, spec: StageSpec) -> tuple[dict[str, Any], str]:
    """(the stage's manifest, "ran" or "cached"): from the store, or computed and published."""
    out, staging = Path(spec.output_dir), Path(spec.staging_dir)
    if is_cached(spec):
        log.info("[%s] skipped: finished earlier with the same fingerprint (%s)", spec.name, out)
        return read_manifest(spec), "cached"
    with stage_lock(staging.with_name(staging.name + ".lock"), spec.name):
        if is_cached(spec):  # another job finished it while we waited
            log.info("[%s] skipped: another run just finished it (%s)", spec.name, out)
            return read_manifest(spec), "cached"
        fresh_final(staging)
        (staging / "recipe.json").write_text(recipe_json(recipe))
        log.info("[%s] running %s stage (fingerprint %s)", spec.name, spec.kind, spec.fingerprint[:16])
        t0 = time.time()
        try:
            metrics = _execute(recipe, spec, staging)
        except Exception as exc:
            if disk_full(exc, staging):
                makes_model = produces(recipe.stages[spec.name]) == "model"
                raise SettingError(disk_full_message(spec, staging, makes_model)) from exc
            raise
        wall = time.time() - t0
        manifest = publish(
            staging,
            out,
            {
                "name": spec.name,
                "kind": spec.kind,
                "fingerprint": spec.fingerprint,
                "recipe": recipe.name,
                "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "wall_time_s": round(wall, 3),
                "tokens_seen": metrics.get("tokens_seen"),
                "inputs": [i.to_dict() for i in spec.inputs],
                "config": {
                    "stage": recipe.stages[spec.name].model_dump(mode="json"),
                    "model": recipe.model.model_dump(mode="json"),
                    "hardware": spec.hardware.get("name", recipe.hardware.name),
                    "precision": spec.args.precision,
                },
                "args": spec.args.view(),
                "peft": spec.peft,
                "datasets": spec.datasets,
                "launch": spec.launch,
                "versions": library_versions(),
                "metrics": metrics,
            },
        )
        log.info("[%s] done in %.1fs -> %s", spec.name, wall, out)
        return manifest, "ran"


def run_plan(recipe: RecipeConfig, plan: Plan) -> dict[str, Any]:
    setup_logging()
    token = os.environ.get(recipe.hub_token_env)
    if token and recipe.hub_token_env != "HF_TOKEN":
        os.environ["HF_TOKEN"] = token  # the hub libraries (and launched stages) read HF_TOKEN
    root = Path(plan.output_root)
    preflight(recipe, plan)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = root / "runs" / f"{recipe.name}-{stamp}-{os.getpid()}"
    run_dir.mkdir(parents=True)
    (run_dir / "plan.json").write_text(json.dumps(scrub(plan.to_dict()), indent=2))
    (run_dir / "recipe.json").write_text(recipe_json(recipe))
    log.info("recipe %s on %s: %s", recipe.name, recipe.hardware.name, " -> ".join(s.name for s in plan.stages))
    results = []
    for spec in plan.stages:
        manifest, status = run_stage(recipe, spec)
        results.append(StageResult.from_manifest(manifest, status, spec.output_dir))
        (run_dir / spec.name).symlink_to(Path(spec.output_dir))
    final = final_stage(recipe, [s.name for s in plan.stages])
    summary = {
        "recipe": recipe.name,
        "hardware": recipe.hardware.name,
        "run_dir": str(run_dir),
        "final_model": plan.stage(final).output_dir if final else None,
        "stages": [r.record() for r in results],
    }
    if final and produces(recipe.stages[final]) == "adapter":  # the product needs its base to load
        base = plan.stage(final).inputs[0]
        summary["final_adapter_base"] = base.output_dir or base.model
    write_json(run_dir / "summary.json", summary, indent=2)
    from ..report import write_report

    summary["report"] = str(write_report(run_dir, summary, results))
    print(console_summary(summary, results))
    return summary
