"""The run report: ``report.md`` in the run directory, with loss (and DPO reward) curves as PNGs.

Written at the end of every run from the stage manifests, so a run whose stages were all cached
still reports what those stages measured when they ran.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _fmt(v: Any) -> str:
    if not _num(v):
        return "-"
    return f"{v:.4g}"


def _series(history: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    points = [(h["step"], h[key]) for h in history if _num(h.get(key)) and "step" in h]
    return [p[0] for p in points], [p[1] for p in points]


def plot_panels(path: Path, title: str, panels: list[tuple[str, list[tuple[str, list[float], list[float], str]]]],
                xlabel: str = "optimizer step") -> bool:
    """One PNG with a panel per (y label, [(line label, xs, ys, style)]); False when nothing to draw."""
    panels = [(ylabel, [line for line in lines if line[1]]) for ylabel, lines in panels]
    panels = [p for p in panels if p[1]]
    if not panels:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 4.2), squeeze=False)
    for ax, (ylabel, lines) in zip(axes[0], panels):
        for label, xs, ys, style in lines:
            ax.plot(xs, ys, style, label=label, linewidth=1.8, markersize=3)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _stage_row(result: dict[str, Any]) -> str:
    m = result.get("metrics", {})
    wall = result.get("wall_time_s")
    tokens = result.get("tokens_seen")
    rate = f"{tokens / wall:,.0f} tokens/s" if tokens and wall else None
    if result.get("kind") == "dpo" and wall and m.get("steps") and result.get("args", {}).get("global_batch_size"):
        rate = f"{m['steps'] * result['args']['global_batch_size'] / wall:,.1f} pairs/s"
    key: list[str] = []
    if _num(m.get("first_loss")):
        key.append(f"loss {_fmt(m['first_loss'])} → {_fmt(m.get('last_loss'))}")
    if _num(m.get("last_rewards/accuracies")):
        key.append(f"reward accuracy {_fmt(m.get('first_rewards/accuracies'))} → {_fmt(m['last_rewards/accuracies'])}")
    if _num(m.get("last_rewards/margins")):
        key.append(f"margin {_fmt(m.get('first_rewards/margins'))} → {_fmt(m['last_rewards/margins'])}")
    if _num(m.get("eval_loss")):
        key.append(f"eval loss {_fmt(m['eval_loss'])} (ppl {_fmt(m.get('eval_perplexity'))})")
    if isinstance(m.get("packing"), dict):
        key.append(f"{100 * m['packing'].get('non_pad_fraction_packed', 0):.0f}% real tokens packed")
    if "generations" in m:
        key.append(f"{m['generations']} generations")
    if result.get("kind") == "eval":
        key.append("see Evaluation")
    status = "cached" if result.get("status") == "cached" else "ran"
    return (f"| {result['name']} | {result['kind']} | {status} | {_fmt(wall)} s | "
            f"{rate or '-'} | {'; '.join(key) or '-'} |")


def scored_models(results: dict[str, dict[str, Any]]) -> tuple[list[str], set[str]]:
    """(model labels, compared models first and "final" last; the numeric score keys)."""
    order = [k for k in results if k != "final"] + (["final"] if "final" in results else [])
    return order, {k for scores in results.values() for k, v in scores.items() if _num(v)}


def _results_tables(result: dict[str, Any]) -> list[str]:
    results = result.get("metrics", {}).get("results")
    if not isinstance(results, dict) or not results:
        return []
    order, numeric = scored_models(results)
    columns = sorted(numeric)
    lines = [f"**{result['name']}** ({result.get('metrics', {}).get('harness', 'eval')}):", "",
             "| model | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for label in order:
        lines.append(f"| {label} | " + " | ".join(_fmt(results[label].get(c)) for c in columns) + " |")
    return lines + [""]


def write_report(run_dir: Path, summary: dict[str, Any], results: list[dict[str, Any]]) -> Path:
    train = [r for r in results if r.get("kind") in ("sft", "dpo") and r.get("metrics", {}).get("history")]
    panels = []  # one panel per training stage: losses of different stages live on different scales
    for r in train:
        history = r["metrics"]["history"]
        lines = [(f"{r['name']} ({r['kind']}) training loss", *_series(history, "loss"), "-o"),
                 (f"{r['name']} held-out loss", *_series(history, "eval_loss"), "--s")]
        panels.append((f"{r['name']} loss", lines))
    images = []
    if plot_panels(run_dir / "loss.png", f"{summary['recipe']}: loss per training stage", panels):
        images.append(("Loss per stage", "loss.png"))
    dpo = [r for r in train if r["kind"] == "dpo"]
    if dpo and plot_panels(run_dir / "dpo_rewards.png", f"{summary['recipe']}: DPO rewards", [
        ("reward accuracy (chosen > rejected)", [(r["name"], *_series(r["metrics"]["history"], "rewards/accuracies"), "-o") for r in dpo]),
        ("reward margin (chosen - rejected)", [(r["name"], *_series(r["metrics"]["history"], "rewards/margins"), "-o") for r in dpo]),
    ]):
        images.append(("DPO reward accuracy and margin", "dpo_rewards.png"))

    lines = [f"# {summary['recipe']} on {summary['hardware']}", "",
             f"Run record: `{run_dir}`", ""]
    if summary.get("final_model"):
        lines += [f"Final model: `{summary['final_model']}`", ""]
    lines += ["## Stages", "", "| stage | kind | status | time | throughput | result |", "|---|---|---|---|---|---|"]
    lines += [_stage_row(r) for r in results]
    lines += ["", "Time and throughput of a cached stage are those of the run that produced it; SFT tokens/s counts "
              "real (non-pad) tokens.", ""]
    for title, name in images:
        lines += [f"## {title}", "", f"![{title}]({name})", ""]
    tables = [line for r in results if r.get("kind") == "eval" for line in _results_tables(r)]
    if tables:
        lines += ["## Evaluation", ""] + tables
    generations = [r for r in results if r.get("kind") == "generate"]
    for r in generations:
        path = Path(r["output_dir"]) / "generations.jsonl"
        lines += [f"## Generations ({r['name']})", "", f"`{path}`", ""]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
