"""One presenter of stage results, for the console summary, report.md, the sweep table and model cards.

A ``StageResult`` is a stage's outcome read from its manifest (whether it ran now or earlier); its
headline (loss, DPO rewards, eval loss, packing, generations), its throughput, the evaluation table and the
sweep columns are computed here once, and each view only lays them out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

# Evaluation scores with a name of their own and how to show them (share: as a percentage).
SCORES = [
    ("exact_match", "exact match", True),
    ("stop_rate", "stops", True),
    ("answer_loss", "answer loss", False),
    ("preference_accuracy", "prefers chosen", True),
    ("preference_margin", "log-prob margin", False),
    ("reward_margin", "score margin", False),  # a reward model's, in its own score units
]
# Numbers an evaluation records that are not scores (counts, timing).
NOT_SCORES = {"examples", "pairs", "seconds", "answer_perplexity"}


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def fmt(v: Any, share: bool = False) -> str:
    if not is_number(v):
        return "-"
    return f"{100 * v:.0f}%" if share else f"{v:.3g}"


@dataclass(frozen=True)
class StageResult:
    name: str
    kind: str
    status: str  # ran | cached
    wall_time_s: float | None
    output_dir: str | None
    tokens_seen: int | None = None
    global_batch_size: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any], status: str, output_dir: str) -> StageResult:
        return cls(
            name=manifest["name"],
            kind=manifest["kind"],
            status=status,
            wall_time_s=manifest.get("wall_time_s"),
            output_dir=output_dir,
            tokens_seen=manifest.get("tokens_seen"),
            global_batch_size=(manifest.get("args") or {}).get("global_batch_size"),
            metrics=manifest.get("metrics") or {},
        )

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> StageResult:
        return cls(**record)

    def record(self) -> dict[str, Any]:
        """What a run record keeps (summary.json): everything but the per-step history."""
        return {
            "name": self.name,
            "kind": self.kind,
            "status": self.status,
            "wall_time_s": self.wall_time_s,
            "output_dir": self.output_dir,
            "tokens_seen": self.tokens_seen,
            "global_batch_size": self.global_batch_size,
            "metrics": {k: v for k, v in self.metrics.items() if k != "history"},
        }

    # ---- what a stage measured --------------------------------------------------------------
    def first_last(self, key: str) -> tuple[Any, Any]:
        return self.metrics.get(f"first_{key}"), self.metrics.get(f"last_{key}")

    @property
    def results(self) -> dict[str, dict[str, Any]] | None:
        """An evaluation's scores by model ("base", earlier stages, then "final")."""
        results = self.metrics.get("results")
        if isinstance(results, dict) and results and all(isinstance(v, dict) for v in results.values()):
            return results
        return None

    def headline(self) -> str:
        """The stage's result in a phrase: loss, DPO rewards, held-out loss, packing, generations."""
        parts = []
        first, last = self.first_last("loss")
        if is_number(first):
            parts.append(f"loss {fmt(first)} -> {fmt(last)}")
        acc, margin = self.first_last("rewards/accuracies"), self.first_last("rewards/margins")
        rewards = []
        if is_number(acc[1]):
            rewards.append(f"reward accuracy {fmt(acc[0], True)} -> {fmt(acc[1], True)}")
        if is_number(margin[1]):
            rewards.append(f"margin {fmt(margin[0])} -> {fmt(margin[1])}")
        if rewards:
            parts.append(", ".join(rewards))
        for key, title, share in (
            ("reward", "reward", False),
            ("kl", "kl", False),
            ("accuracy", "pair accuracy", True),
        ):
            first, last = self.first_last(key)
            if is_number(last):
                parts.append(f"{title} {fmt(first, share)} -> {fmt(last, share)}")
        if is_number(self.metrics.get("eval_rewards/accuracies")):  # held-out pairs, before the first step too
            before = next(
                (
                    h["eval_rewards/accuracies"]
                    for h in self.metrics.get("history", [])
                    if h.get("step") == 0 and "eval_rewards/accuracies" in h
                ),
                None,
            )
            after = fmt(self.metrics["eval_rewards/accuracies"], True)
            parts.append(f"held-out reward accuracy {fmt(before, True) + ' -> ' if before is not None else ''}{after}")
        if is_number(self.metrics.get("eval_accuracy")):
            parts.append(f"held-out accuracy {fmt(self.metrics['eval_accuracy'], True)}")
        if is_number(self.metrics.get("eval_loss")):
            parts.append(f"eval loss {fmt(self.metrics['eval_loss'])} (ppl {fmt(self.metrics.get('eval_perplexity'))})")
        packing = self.metrics.get("packing")
        if isinstance(packing, dict) and is_number(packing.get("non_pad_fraction_packed")):
            parts.append(f"{100 * packing['non_pad_fraction_packed']:.0f}% real tokens packed")
        if "generations" in self.metrics:
            parts.append(f"{self.metrics['generations']} generations")
        return "; ".join(parts)

    def throughput(self) -> str | None:
        """Real tokens/s of a training stage, or samples/s in the unit a stage names (a preference stage: pairs)."""
        wall = self.wall_time_s
        if not wall:
            return None
        unit = self.metrics.get("sample_unit")
        if unit and self.metrics.get("steps") and self.global_batch_size:
            return f"{self.metrics['steps'] * self.global_batch_size / wall:,.1f} {unit}/s"
        return f"{self.tokens_seen / wall:,.0f} tokens/s" if self.tokens_seen else None

    def columns(self) -> dict[str, Any]:
        """Flat final metrics for a sweep table: last loss, DPO reward accuracy and margin, the evaluated model's "
        "scores."""
        row: dict[str, Any] = {}
        if is_number(self.first_last("loss")[1]):
            row[f"{self.name}.last_loss"] = self.first_last("loss")[1]
        for key, col in (
            ("rewards/accuracies", "reward_accuracy"),
            ("rewards/margins", "reward_margin"),
            ("reward", "reward"),
            ("accuracy", "pair_accuracy"),
        ):
            if is_number(self.first_last(key)[1]):
                row[f"{self.name}.{col}"] = self.first_last(key)[1]
        if self.results:
            order, _ = scored_models(self.results)
            evaluated = self.results[order[-1]]  # the stage's own input model (compared models come first)
            for key, value in sorted(evaluated.items()):
                if is_number(value) and key not in ("examples", "pairs"):
                    row[f"{self.name}.{key}"] = value
        return row


def scored_models(results: dict[str, dict[str, Any]]) -> tuple[list[str], set[str]]:
    """(model labels: compared models first and "final" last; the numeric score keys)."""
    order = [k for k in results if k != "final"] + (["final"] if "final" in results else [])
    return order, {k for scores in results.values() for k, v in scores.items() if is_number(v)}


def eval_table(results: dict[str, dict[str, Any]], with_time: bool = False) -> tuple[list[str], list[list[str]]]:
    """(column titles, one row per model) of an evaluation: the named scores first, then any other score (and
    the seconds each model took to load and score)."""
    order, numeric = scored_models(results)
    named = [c for c in SCORES if c[0] in numeric]
    others = [(k, k, False) for k in sorted(numeric - {c[0] for c in SCORES} - NOT_SCORES)]
    columns = named + others + ([("seconds", "seconds", False)] if with_time and "seconds" in numeric else [])
    rows = [[label] + [fmt(results[label].get(key), share) for key, _, share in columns] for label in order]
    return ["model"] + [title for _, title, _ in columns], rows


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def console_summary(summary: dict[str, Any], results: list[StageResult]) -> str:
    lines = [
        f"\nneuralchat-recipes: {summary['recipe']} on {summary['hardware']}",
        f"{'stage':<12}{'kind':<9}{'status':<8}{'time':>8}  result",
    ]
    for r in results:
        time_s = f"{r.wall_time_s:.1f}s" if r.wall_time_s is not None else "-"
        detail, table = r.headline(), []
        if r.results:
            detail = "before / after:"
            header, rows = eval_table(r.results)
            width = max(10, *(len(row[0]) + 2 for row in rows))  # model labels are stage names
            table = [f"{'':37}{header[0]:<{width}}" + "".join(f"{h:>17}" for h in header[1:])]
            table += [f"{'':37}{row[0]:<{width}}" + "".join(f"{v:>17}" for v in row[1:]) for row in rows]
        if r.status == "cached":
            detail = ("(cached) " + detail).strip()
        lines.append(f"{r.name:<12}{r.kind:<9}{r.status:<8}{time_s:>8}  {detail}".rstrip())
        lines += table
    if summary.get("final_model"):
        base = summary.get("final_adapter_base")
        lines.append(f"final model: {summary['final_model']}" + (f" (an adapter on {base})" if base else ""))
    lines.append(f"run record:  {summary['run_dir']}")
    if summary.get("report"):
        lines.append(f"report:      {summary['report']}")
    return "\n".join(lines)
