"""Sweep tables: what each job of a Hydra multirun changed and what it measured.

Every job (in whichever process the Hydra launcher runs it: basic, joblib, submitit) writes
``<sweep dir>/jobs/<num>.json`` with its overrides and final metrics; at the end of the multirun
the ``SweepTable`` callback (hydra.callbacks in recipes/config.yaml) gathers them into
``sweep.csv`` and ``sweep.md`` in the sweep directory, plus ``sweep.png`` (each metric against
the swept key) when a single numeric key was swept.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path
from typing import Any

from .execution.present import StageResult, is_number
from .execution.secrets import scrub, write_json, write_text
from .report import plot_panels

try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover - hydra is a dependency; keeps this module importable alone
    Callback = object  # type: ignore[assignment,misc]


def final_metrics(summary: dict[str, Any]) -> dict[str, Any]:
    """A run summary as flat columns: each stage's final metrics (the presenter's columns) and the final model."""
    row: dict[str, Any] = {}
    for record in summary.get("stages", []):
        row.update(StageResult.from_record(record).columns())
    row["final_model"] = summary.get("final_model")
    row["run_dir"] = summary.get("run_dir")
    return row


def _multirun_job():
    """This process's Hydra job config when it runs a job of a multirun, else None."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
    except (ImportError, ValueError):
        return None
    return hc if hc.mode == RunMode.MULTIRUN else None


# set by the command line before Hydra starts a multirun: how many jobs it will run, when that is known
SWEEP_JOBS_ENV = "NEURALCHAT_SWEEP_JOBS"


def count_jobs(overrides: list[str]) -> int | None:
    """Jobs a basic multirun of these overrides runs (the product of each swept key's values); None where
    the sweep does not say (a search sweeper decides its trials, a glob needs the config tree)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ValueType

    total = 1
    for override in OverridesParser.create().parse_overrides(overrides):
        if override.key_or_group == "hydra/sweeper":
            return None
        if not override.is_sweep_override():
            continue
        if not override.is_discrete_sweep() or override.value_type == ValueType.GLOB_CHOICE_SWEEP:
            return None
        total *= len(list(override.sweep_string_iterator()))
    return total


def announce_job() -> None:
    """In a multirun job: say on the console which point of the sweep is starting (jobs run one after another
    or side by side, and their logs are otherwise alike): "sweep job 2/3: sft.peft.r=8"."""
    hc = _multirun_job()
    if hc is not None:
        swept = " ".join(o for o in hc.overrides.task if not o.startswith(("recipe=", "output_root=")))
        total = os.environ.get(SWEEP_JOBS_ENV)
        number = f"{hc.job.num + 1}/{total}" if total else f"{hc.job.num + 1}"
        print(f"sweep job {number}: {swept or '(no overrides)'}", file=sys.stderr, flush=True)


def share_cores_with_parallel_jobs() -> int:
    """In a job of a parallel sweep (joblib's ``n_jobs`` > 1): tell the thread chooser how many jobs share the
    host, so that each takes its share of the cores rather than all of them (backends/threads.py)."""
    from .backends.threads import PARALLEL_JOBS_ENV

    hc = _multirun_job()
    n_jobs = int((hc.launcher.get("n_jobs") if hc is not None else None) or 1)
    if n_jobs < 0:  # joblib: -1 is every CPU, -2 all but one ...
        n_jobs = max(1, (os.cpu_count() or 1) + 1 + n_jobs)
    os.environ[PARALLEL_JOBS_ENV] = str(n_jobs)
    return n_jobs


def record_job(summary: dict[str, Any] | None, error: str | None = None) -> Path | None:
    """In a multirun job: write this job's overrides and metrics for the sweep table."""
    hc = _multirun_job()
    if hc is None:
        return None
    jobs = Path(hc.sweep.dir) / "jobs"
    jobs.mkdir(parents=True, exist_ok=True)
    record = {
        "job": int(hc.job.num),
        "overrides": list(hc.overrides.task),
        "status": "failed" if error else "ok",
        "error": error,
        "stages_ran": sum(s["status"] == "ran" for s in (summary or {}).get("stages", [])),
        "stages_cached": sum(s["status"] == "cached" for s in (summary or {}).get("stages", [])),
        "metrics": final_metrics(summary) if summary else {},
    }
    path = jobs / f"{record['job']}.json"
    write_json(path, record, indent=2)
    return path


def _split(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if is_number(v):
        return f"{v:.4g}"
    return str(v)


def write_table(sweep_dir: Path, objective: str | None = None) -> dict[str, Path]:
    """sweep.csv and sweep.md (and sweep.png for one numeric swept key) from the jobs' records; ``objective``
    (the sweep's `sweep_objective`) leads the plot."""
    records = sorted((json.loads(p.read_text()) for p in (sweep_dir / "jobs").glob("*.json")), key=lambda r: r["job"])
    if not records:
        return {}
    override_keys: list[str] = []
    for r in records:
        for key, _ in map(_split, r["overrides"]):
            if key not in override_keys:
                override_keys.append(key)
    values = [{k: v for k, v in map(_split, r["overrides"])} for r in records]
    swept = [k for k in override_keys if len({v.get(k) for v in values}) > 1]
    metric_keys: list[str] = []
    for r in records:
        metric_keys += [k for k in r["metrics"] if k not in metric_keys and k not in ("final_model", "run_dir")]
    columns = ["job", *override_keys, "status", "stages_ran", "stages_cached", *metric_keys, "final_model", "run_dir"]
    rows = [
        {
            "job": r["job"],
            **v,
            "status": r["status"] if not r.get("error") else f"failed: {r['error']}",
            "stages_ran": r["stages_ran"],
            "stages_cached": r["stages_cached"],
            **r["metrics"],
        }
        for r, v in zip(records, values)
    ]
    out = {"csv": sweep_dir / "sweep.csv", "md": sweep_dir / "sweep.md"}
    with out["csv"].open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows([scrub({c: row.get(c) for c in columns}) for row in rows])
    shown = ["job", *swept, "status", "stages_ran", "stages_cached", *metric_keys]
    lines = [
        f"# Sweep: {', '.join(swept) or 'one point'}",
        "",
        f"{len(records)} jobs. Overrides common to every job: "
        + (", ".join(f"`{k}={values[0][k]}`" for k in override_keys if k not in swept) or "none")
        + ".",
        "",
        "| " + " | ".join(shown) + " |",
        "|" + "---|" * len(shown),
    ]
    lines += ["| " + " | ".join(_fmt(row.get(c)) for c in shown) + " |" for row in rows]
    lines += ["", "Full rows (every override, final model, run record): `sweep.csv`."]
    if len(swept) == 1 and _plot(sweep_dir / "sweep.png", swept[0], rows, metric_keys, objective):
        out["png"] = sweep_dir / "sweep.png"
        lines += ["", f"![{swept[0]} against the final metrics](sweep.png)"]
    write_text(out["md"], "\n".join(lines) + "\n")
    return out


MAX_PANELS = 9


def plotted_metrics(metric_keys: list[str], rows: list[dict[str, Any]], objective: str | None = None) -> list[str]:
    """The metrics sweep.png draws, most telling first: the sweep's objective, the evaluation's scores, then
    the rest (training losses, rewards ...) in the table's order, up to MAX_PANELS; only those every job has."""
    numeric = [m for m in metric_keys if all(is_number(row.get(m)) for row in rows)]
    rank = {m: (m != objective, not m.startswith("eval."), i) for i, m in enumerate(numeric)}
    return sorted(numeric, key=rank.__getitem__)[:MAX_PANELS]


def _plot(path: Path, key: str, rows: list[dict[str, Any]], metric_keys: list[str], objective: str | None) -> bool:
    """A panel per metric against the swept key; False for a categorical key."""
    try:
        xs = [float(row[key]) for row in rows]
    except (TypeError, ValueError, KeyError):
        return False  # a categorical key: the table says it all
    order = sorted(range(len(xs)), key=xs.__getitem__)
    panels = [
        (m, [(m, [xs[i] for i in order], [rows[i][m] for i in order], "o-")])
        for m in plotted_metrics(metric_keys, rows, objective)
    ]
    points = sorted(set(xs))
    return plot_panels(path, f"sweep over {key}", panels, xlabel=key, xticks=points if len(points) <= 12 else None)


def objective(summary: dict[str, Any], metric: str) -> float:
    """The value an Optuna sweep optimizes: one column of the job's metrics (e.g. eval.exact_match)."""
    row = final_metrics(summary)
    if not is_number(row.get(metric)):
        from .config import ConfigError

        raise ConfigError(
            [
                f"`sweep_objective` = {metric!r}: this run measured no such metric; "
                f"choose one of {sorted(k for k, v in row.items() if is_number(v))}"
            ]
        )
    return float(row[metric])


class SweepTable(Callback):
    """Hydra callback: write the sweep table when a multirun ends."""

    def on_multirun_end(self, config, **kwargs) -> None:
        try:
            sweep_dir = Path(config.hydra.sweep.dir)
        except Exception:  # noqa: BLE001 - never fail the user's sweep over its table
            return
        for job_dir in sweep_dir.iterdir() if sweep_dir.is_dir() else []:
            if job_dir.is_dir() and job_dir.name.isdigit() and not any(job_dir.iterdir()):
                job_dir.rmdir()  # Hydra makes a folder per job; ours write under output_root instead
        out = write_table(sweep_dir, config.get("sweep_objective"))
        if out:
            print(f"sweep table: {out['md'].resolve()} (and {out['csv'].name})")
