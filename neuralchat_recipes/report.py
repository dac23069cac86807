"""The run report: ``report.md`` in the run directory, with loss (and DPO reward) curves as PNGs.

Written at the end of every run from the stage manifests, so a run whose stages were all cached
still reports what those stages measured when they ran.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .execution.present import StageResult, eval_table, is_number, markdown_table
from .execution.secrets import write_text


def _series(history: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    points = [(h["step"], h[key]) for h in history if is_number(h.get(key)) and "step" in h]
    return [p[0] for p in points], [p[1] for p in points]


PANEL_COLUMNS = 3


def plot_panels(
    path: Path,
    title: str,
    panels: list[tuple[str, list[tuple[str, list[float], list[float], str]]]],
    xlabel: str = "optimizer step",
    xticks: list[float] | None = None,
    log_y: bool = False,
) -> bool:
    """One PNG with a panel per (y label, [(line label, xs, ys, style)]), at most PANEL_COLUMNS to a row so
    that it stays readable when embedded; False when nothing to draw. xticks: the x values to mark (a sweep's
    points: rank 4, 8, 16 rather than 4.0, 4.5, ...). log_y: a log scale on panels whose values are positive and span
    more than 10x (a loss falls by orders of magnitude; on a linear axis its last hundreds of steps are flat)."""
    panels = [(ylabel, [line for line in lines if line[1]]) for ylabel, lines in panels]
    panels = [p for p in panels if p[1]]
    if not panels:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(PANEL_COLUMNS, len(panels))
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5.6 * columns, 4.0 * rows), squeeze=False)
    for ax, (ylabel, lines) in zip(axes.flat, panels):
        for label, xs, ys, style in lines:
            ax.plot(xs, ys, style, label=label, linewidth=1.8, markersize=3)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend()
        if xticks:
            ax.set_xticks(xticks, [f"{x:g}" for x in xticks])
        values = [y for _, _, ys, _ in lines for y in ys]
        if log_y and min(values) > 0 and max(values) > 10 * min(values):  # a narrow range reads better linear
            ax.set_yscale("log")
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# curves a training stage may log: DPO / ORPO / CPO pairs, KTO's gap, GRPO's reward and KL, a reward model's accuracy
REWARD_CURVES = [
    ("rewards/accuracies", "reward accuracy (chosen > rejected)"),
    ("rewards/margins", "reward margin (chosen - rejected)"),
    ("reward", "mean reward (GRPO)"),
    ("kl", "KL to the reference"),
    ("accuracy", "reward model pair accuracy"),
    ("eval_rewards/accuracies", "held-out reward accuracy"),
]


def _stage_row(r: StageResult) -> str:
    status = "cached" if r.status == "cached" else "ran"
    wall = f"{r.wall_time_s:.4g} s" if r.wall_time_s is not None else "-"
    result = r.headline() or ("see Evaluation" if r.results else "-")
    return f"| {r.name} | {r.kind} | {status} | {wall} | {r.throughput() or '-'} | {result} |"


def write_report(run_dir: Path, summary: dict[str, Any], results: list[StageResult]) -> Path:
    trained = [r for r in results if r.metrics.get("history")]
    panels = []  # one panel per training stage: losses of different stages live on different scales
    for r in trained:
        history = r.metrics["history"]
        lines = [
            (f"{r.name} ({r.kind}) training loss", *_series(history, "loss"), "-o"),
            (f"{r.name} held-out loss", *_series(history, "eval_loss"), "--s"),
        ]
        panels.append((f"{r.name} loss", lines))
    images = []
    if plot_panels(run_dir / "loss.png", f"{summary['recipe']}: loss per training stage", panels, log_y=True):
        images.append(("Loss per stage", "loss.png"))
    curves = [
        (key, title) for key, title in REWARD_CURVES if any(_series(r.metrics["history"], key)[0] for r in trained)
    ]
    if curves and plot_panels(
        run_dir / "rewards.png",
        f"{summary['recipe']}: rewards",
        [(title, [(r.name, *_series(r.metrics["history"], key), "-o") for r in trained]) for key, title in curves],
    ):
        images.append(("Rewards", "rewards.png"))

    lines = [f"# {summary['recipe']} on {summary['hardware']}", "", f"Run record: `{run_dir}`", ""]
    if summary.get("final_model"):
        base = summary.get("final_adapter_base")
        lines += [f"Final model: `{summary['final_model']}`" + (f" (an adapter on `{base}`)" if base else ""), ""]
    lines += ["## Stages", "", "| stage | kind | status | time | throughput | result |", "|---|---|---|---|---|---|"]
    lines += [_stage_row(r) for r in results]
    lines += [
        "",
        "Time and throughput of a cached stage are those of the run that produced it; tokens/s counts "
        "real (non-pad) tokens.",
        "",
    ]
    for title, name in images:
        lines += [f"## {title}", "", f"![{title}]({name})", ""]
    evaluated = [r for r in results if r.results]
    if evaluated:
        lines += ["## Evaluation", ""]
        for r in evaluated:
            header, rows = eval_table(r.results, with_time=True)
            lines += [
                f"**{r.name}** ({r.metrics.get('harness', 'eval')}; seconds: loading and scoring each model):",
                "",
                *markdown_table(header, rows),
                "",
            ]
    for r in results:
        if "generations" in r.metrics:
            lines += [f"## Generations ({r.name})", "", f"`{Path(r.output_dir) / 'generations.jsonl'}`", ""]
    path = run_dir / "report.md"
    write_text(path, "\n".join(lines) + "\n")
    return path
