"""Execute a Plan: stage cache, locks, atomic artifacts, resume, manifests, summary.

Layout under ``output_root``::

    artifacts/<kind>-<fp16>/     finished stages, content-addressed, never modified (manifest.json inside)
    staging/<kind>-<fp16>/       a stage being computed: checkpoints/ (resume points), final/, recipe.json
    staging/<kind>-<fp16>.lock   held while a process computes that stage; others wait
    runs/<recipe>-<time>/        one record per invocation: plan.json, summary.json, links to artifacts

A stage is published by renaming ``staging/.../final`` (manifest included) to its artifact
directory, so an artifact directory either exists complete or not at all.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import __version__
from .backends import get_backend
from .config import ConfigError, RecipeConfig
from .config.recipe import produces
from .plan import Plan, StageSpec

log = logging.getLogger("neuralchat_recipes")

SECRET_KEY = re.compile(r"(?i)(token|secret|passw|api[_-]?key|auth)")


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


# ---- secrets ------------------------------------------------------------------------------
def _secret_values() -> list[str]:
    return [v for k, v in os.environ.items() if SECRET_KEY.search(k) and len(v) >= 8]


def scrub(obj: Any, secrets: list[str] | None = None) -> Any:
    """Replace secret-looking values (by key name, or any value of a secret environment variable)."""
    secrets = _secret_values() if secrets is None else secrets
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if isinstance(v, str) and SECRET_KEY.search(str(k)) and not str(k).endswith("_env") and v:
                out[k] = "***"
            else:
                out[k] = scrub(v, secrets)
        return out
    if isinstance(obj, list):
        return [scrub(v, secrets) for v in obj]
    if isinstance(obj, str):
        for s in secrets:
            obj = obj.replace(s, "***")
        return obj
    return obj


def library_versions() -> dict[str, str]:
    from importlib import metadata

    out = {"neuralchat-recipes": __version__}
    for name in ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "deepspeed", "optimum-habana"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


# ---- locking ------------------------------------------------------------------------------
@contextlib.contextmanager
def stage_lock(path: Path, name: str):
    """Exclusive lock on a stage: a second job waits for the first rather than computing it twice."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("[%s] another run is computing this stage; waiting for it (%s)", name, path)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# ---- preflight ----------------------------------------------------------------------------
def check_writable(root: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise RunError([f"`output_root` = {str(root)!r}: cannot write there ({exc.strerror or exc}); "
                        "set output_root=/a/writable/dir"]) from None


def preflight(recipe: RecipeConfig, plan: Plan) -> None:
    """Everything that can fail cheaply fails here, before the first stage trains."""
    from .data.formats import DataError
    from .data.loading import load_splits

    check_writable(Path(plan.output_root))
    pending = [spec for spec in plan.stages if not is_cached(spec)]
    problems = get_backend(recipe.hardware).runtime_problems({s.launch["launcher"] for s in pending}) if pending else []
    for spec in pending:
        stage = recipe.stages[spec.name]
        for field_name in ("dataset", "preference_dataset"):
            dataset = getattr(stage, field_name, None)
            if dataset is None:
                continue
            use = ("preference" if spec.kind == "dpo" or field_name == "preference_dataset"
                   else "code" if "code" in dataset.uses else "sft")
            try:
                load_splits(dataset, use)
            except DataError as exc:
                problems.append(f"`{spec.name}.{field_name}` ({dataset.name}): {exc}")
    if problems:
        raise RunError(problems)


# ---- stages -------------------------------------------------------------------------------
def is_cached(spec: StageSpec) -> bool:
    return (Path(spec.output_dir) / "manifest.json").is_file()


def read_manifest(spec: StageSpec) -> dict[str, Any]:
    return json.loads((Path(spec.output_dir) / "manifest.json").read_text())


def recipe_json(recipe: RecipeConfig) -> str:
    """The validated recipe as JSON with its stages back at the top level (what build_recipe reads)."""
    data = recipe.model_dump(mode="json")
    stages = data.pop("stages")
    data.update(stages)
    data["mode"] = "run"
    return json.dumps(scrub(data), indent=2)


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


def _execute(recipe: RecipeConfig, spec: StageSpec, staging: Path) -> dict[str, Any]:
    from .stages import STAGES, StageContext

    quiet_libraries()
    final = staging / "final"
    if spec.launch["launcher"] == "inprocess":
        ctx = StageContext(recipe, spec, get_backend(recipe.hardware), staging / "checkpoints", final)
        return STAGES[spec.kind](ctx)
    return launch_stage(spec, staging)


STOP_GRACE_S = 10.0  # after a rank fails, how long the launcher gets to stop the others itself


def _stop(proc: subprocess.Popen, grace: float = STOP_GRACE_S) -> None:
    """SIGTERM the launcher's process group (launchers pass it on to their ranks), SIGKILL after ``grace``."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(wait)


def launch_command(spec: StageSpec, env: dict[str, str]) -> list[str]:
    """The plan's command for this machine: `python` is this interpreter, `$VARS` (per-node values of
    multi-node launches, such as NODE_RANK) come from the environment and must be set."""
    from .stages.common import StageError

    variables = re.compile(r"\$\{?(\w+)\}?")
    missing = [v for arg in spec.launch["command"] for v in variables.findall(arg) if v not in env]
    if missing:
        raise StageError(f"stage {spec.name}: the {spec.launch['launcher']} command needs {', '.join(missing)} in the "
                         "environment on each node (e.g. NODE_RANK=0 on the master node, 1.. on the others); "
                         "set it and run again")
    return [sys.executable if arg == "python" else variables.sub(lambda m: env[m.group(1)], arg)
            for arg in spec.launch["command"]]


def launch_stage(spec: StageSpec, staging: Path) -> dict[str, Any]:
    """Run a multi-process stage under its launcher; fail fast, with the failing rank's error.

    Ranks stream their own output (prefixed ``[rankN]`` by the worker). A rank that fails writes
    ``failures/rank<N>.txt``; launchers normally stop the other ranks at once, and if one has not
    exited ``STOP_GRACE_S`` later the runner stops it. Nothing is published unless every rank
    succeeded: the stage's ``final/`` stays in staging and is cleared by the next run.
    """
    from .stages.common import StageError

    failures = staging / "failures"
    shutil.rmtree(failures, ignore_errors=True)
    (staging / "result.json").unlink(missing_ok=True)
    env = {**os.environ, **spec.launch["env"]}
    command = launch_command(spec, env)
    log.info("[%s] launching: %s", spec.name, " ".join(command))
    proc = subprocess.Popen(command, env=env, start_new_session=True)
    failed_at = None
    try:
        while proc.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(0.2)
            if failed_at is None and failures.is_dir() and any(failures.glob("rank*.txt")):
                failed_at = time.monotonic()
            if failed_at is not None and time.monotonic() - failed_at > STOP_GRACE_S:
                log.info("[%s] a rank failed and %s has not stopped the others; stopping them", spec.name,
                         spec.launch["launcher"])
                _stop(proc)
    finally:
        _stop(proc)  # only acts if we leave early (Ctrl-C, an error here)
    errors = sorted(failures.glob("rank*.txt"), key=lambda f: f.stat().st_mtime) if failures.is_dir() else []
    if proc.returncode == 0 and not errors and (staging / "result.json").is_file():
        return json.loads((staging / "result.json").read_text())
    if errors:
        first = errors[0].read_text().strip()
        others = [f.stem for f in errors[1:]]
        cause = first + (f" (then {', '.join(others)} failed too)" if others else "")
        if re.search(r"(?i)connection (reset|closed)|broken pipe", first):
            cause += (" - it lost a peer: another rank probably died without a Python error (killed, out of "
                      f"memory?); {spec.launch['launcher']}'s report above has its exit code")
    elif proc.returncode and proc.returncode < 0:
        cause = f"{spec.launch['launcher']} was killed by signal {-proc.returncode}"
    else:
        cause = (f"a rank died without a Python error (killed, out of memory?); {spec.launch['launcher']} "
                 f"exited with status {proc.returncode}")
    raise StageError(f"stage {spec.name} failed under {spec.launch['launcher']}: {cause}. The ranks' output is "
                     f"above, prefixed [rankN]. Nothing was published; checkpoints stay in {staging / 'checkpoints'} "
                     "and the next run resumes from them")


def run_stage(recipe: RecipeConfig, spec: StageSpec) -> dict[str, Any]:
    out, staging = Path(spec.output_dir), Path(spec.staging_dir)
    if is_cached(spec):
        log.info("[%s] skipped: finished earlier with the same fingerprint (%s)", spec.name, out)
        return {**read_manifest(spec), "status": "cached", "output_dir": str(out)}
    with stage_lock(staging.with_name(staging.name + ".lock"), spec.name):
        if is_cached(spec):  # another job finished it while we waited
            log.info("[%s] skipped: another run just finished it (%s)", spec.name, out)
            return {**read_manifest(spec), "status": "cached", "output_dir": str(out)}
        staging.mkdir(parents=True, exist_ok=True)
        final = staging / "final"
        if final.exists():
            shutil.rmtree(final)  # half-written output of an interrupted run; checkpoints stay
        final.mkdir()
        (staging / "recipe.json").write_text(recipe_json(recipe))
        log.info("[%s] running %s stage (fingerprint %s)", spec.name, spec.kind, spec.fingerprint[:16])
        t0 = time.time()
        metrics = _execute(recipe, spec, staging)
        wall = time.time() - t0
        stage_cfg = recipe.stages[spec.name].model_dump(mode="json")
        manifest = scrub({
            "name": spec.name,
            "kind": spec.kind,
            "fingerprint": spec.fingerprint,
            "recipe": recipe.name,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "wall_time_s": round(wall, 3),
            "tokens_seen": metrics.get("tokens_seen"),
            "inputs": spec.inputs,
            "config": {"stage": stage_cfg, "model": recipe.model.model_dump(mode="json"),
                       "hardware": recipe.hardware.name, "precision": spec.args.get("precision")},
            "args": spec.args,
            "peft": spec.peft,
            "dataset": spec.dataset,
            "launch": spec.launch,
            "versions": library_versions(),
            "metrics": metrics,
        })
        (final / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
        out.parent.mkdir(parents=True, exist_ok=True)
        os.rename(final, out)  # publish atomically
        shutil.rmtree(staging, ignore_errors=True)
        log.info("[%s] done in %.1fs -> %s", spec.name, wall, out)
        return {**manifest, "status": "ran", "output_dir": str(out)}


# ---- the whole plan -----------------------------------------------------------------------
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
        result = run_stage(recipe, spec)
        results.append(result)
        (run_dir / spec.name).symlink_to(Path(spec.output_dir))
    final_model = next((s.output_dir for s in reversed(plan.stages) if produces(recipe.stages[s.name]) == "model"), None)
    summary = {"recipe": recipe.name, "hardware": recipe.hardware.name, "run_dir": str(run_dir),
               "final_model": final_model, "stages": [_stage_summary(r) for r in results]}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    from .report import write_report

    summary["report"] = str(write_report(run_dir, summary, results))
    print(format_summary(summary))
    return summary


def _stage_summary(result: dict[str, Any]) -> dict[str, Any]:
    m = result.get("metrics", {})
    keep = ("first_loss", "last_loss", "first_rewards/accuracies", "last_rewards/accuracies",
            "first_rewards/margins", "last_rewards/margins", "steps", "resumed_from", "results", "generations")
    return {"name": result["name"], "kind": result["kind"], "status": result["status"],
            "wall_time_s": result.get("wall_time_s"), "output_dir": result.get("output_dir"),
            **{k: m[k] for k in keep if k in m}}


def _fmt(v: Any, pct: bool = False) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.0f}%" if pct else f"{v:.3g}"


def _results_table(results: Any) -> list[str]:
    """Evaluation results as rows: one per scored model (compared models first, then final)."""
    if not isinstance(results, dict) or not all(isinstance(v, dict) for v in results.values()):
        return []
    known = [("exact_match", "exact match", True), ("stop_rate", "stops", True), ("answer_loss", "answer loss", False),
             ("preference_accuracy", "prefers chosen", True), ("preference_margin", "log-prob margin", False)]
    hidden = {c[0] for c in known} | {"examples", "pairs", "answer_perplexity", "seconds"}
    from .report import scored_models

    order, present = scored_models(results)
    columns = [c for c in known if c[0] in present] + [(k, k, False) for k in sorted(present - hidden)]
    rows = [f"{'':37}{'model':<10}" + "".join(f"{title:>17}" for _, title, _ in columns)]
    for label in order:
        rows.append(f"{'':37}{label:<10}" + "".join(f"{_fmt(results[label].get(key), pct):>17}" for key, _, pct in columns))
    return rows


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"\nneuralchat-recipes: {summary['recipe']} on {summary['hardware']}",
             f"{'stage':<12}{'kind':<9}{'status':<8}{'time':>8}  result"]
    for s in summary["stages"]:
        time_s = f"{s['wall_time_s']:.1f}s" if s.get("wall_time_s") is not None else "-"
        detail = ""
        if "first_loss" in s:
            detail = f"loss {_fmt(s['first_loss'])} -> {_fmt(s['last_loss'])}"
        if "first_rewards/accuracies" in s:
            detail += (f"; reward accuracy {_fmt(s['first_rewards/accuracies'], True)} -> "
                       f"{_fmt(s['last_rewards/accuracies'], True)}, margin {_fmt(s['first_rewards/margins'])} -> "
                       f"{_fmt(s['last_rewards/margins'])}")
        table = _results_table(s.get("results"))
        if table:
            detail = "before / after:"
        if s["status"] == "cached":
            detail = ("(cached) " + detail).strip()
        lines.append(f"{s['name']:<12}{s['kind']:<9}{s['status']:<8}{time_s:>8}  {detail}")
        lines += table
    if summary.get("final_model"):
        lines.append(f"final model: {summary['final_model']}")
    lines.append(f"run record:  {summary['run_dir']}")
    if summary.get("report"):
        lines.append(f"report:      {summary['report']}")
    return "\n".join(lines)
