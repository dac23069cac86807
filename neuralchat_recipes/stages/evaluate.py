"""Evaluation harnesses, each scoring the stage's input model and every model in ``compare``
(``base`` = the untrained base model), so the summary shows before and after:

- ``lm_eval``: EleutherAI lm-evaluation-harness tasks (``name:shots``; ``leaderboard`` preset);
- ``rouge``: generate a summary for each held-out article, ROUGE-1/2/L against the reference;
- ``pass_at_k``: complete HumanEval-format problems, run their tests sandboxed (code_eval.py);
- ``builtin``: exact match of generated answers, answer loss and perplexity, preference accuracy.
Results go to the manifest and to ``metrics.json`` in the artifact.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from . import StageContext
from .common import (StageError, answer_logprobs, generate_texts, load_input_model, load_tokenizer, log, model_source,
                     render_prompt)


def _models(ctx: StageContext) -> list[tuple[str, dict[str, Any]]]:
    """(label, plan input) of every model scored: the stage's input ("final"), then each `compare` model."""
    first, *others = ctx.spec.inputs
    return [("final", first)] + [(e["stage"] or "base", e) for e in others]


def _references(rows, tokenizer, template: str) -> tuple[list[str], list[str]]:
    """(prompts, reference answers): each conversation up to its last assistant turn, and that turn."""
    prompts, refs = [], []
    for row in rows:
        messages = row["messages"]
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        prompts.append(render_prompt(tokenizer, template, messages[:last]))
        refs.append(messages[last]["content"])
    return prompts, refs


def _exact_match(model, tokenizer, rows, template: str, args) -> dict[str, float]:
    """Exact match of greedy answers, how often they stop (end the turn within max_new_tokens), and the
    reference answers' loss and perplexity."""
    prompts, refs = _references(rows, tokenizer, template)
    outputs = generate_texts(model, tokenizer, prompts, args["max_new_tokens"], args["batch_size"])
    exact = sum(int(c.text.strip() == ref.strip()) for ref, (c,) in zip(refs, outputs))
    scored = answer_logprobs(model, tokenizer, list(zip(prompts, refs)), args["batch_size"])
    nll, answer_tokens = -sum(logp for logp, _ in scored), sum(n for _, n in scored)
    return {"exact_match": exact / len(rows), "stop_rate": sum(c.stopped for (c,) in outputs) / len(rows),
            "answer_loss": nll / answer_tokens, "answer_perplexity": math.exp(nll / answer_tokens),
            "examples": len(rows)}


def _preference(model, tokenizer, pairs, template: str, batch_size: int) -> dict[str, float]:
    """How often the chosen answer is more likely than the rejected one, and the mean log-prob margin."""
    prompts = [render_prompt(tokenizer, template, pair["prompt"]) for pair in pairs]
    scored = answer_logprobs(model, tokenizer, [(p, pair[side]) for p, pair in zip(prompts, pairs)
                                                for side in ("chosen", "rejected")], batch_size)
    margins = [scored[2 * i][0] - scored[2 * i + 1][0] for i in range(len(pairs))]
    return {"preference_accuracy": sum(m > 0 for m in margins) / len(pairs),
            "preference_margin": sum(margins) / len(pairs), "pairs": len(pairs)}


def _rouge(model, tokenizer, rows, template: str, args) -> dict[str, float]:
    from rouge_score import rouge_scorer

    prompts, refs = _references(rows, tokenizer, template)
    outputs = generate_texts(model, tokenizer, prompts, args["max_new_tokens"], args["batch_size"])
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for ref, (c,) in zip(refs, outputs):
        for key, value in scorer.score(ref, c.text.strip()).items():
            totals[key] += value.fmeasure
    return {**{k: v / len(rows) for k, v in totals.items()}, "stop_rate": sum(c.stopped for (c,) in outputs) / len(rows),
            "examples": len(rows)}


def _pass_at_k(model, tokenizer, problems, args) -> dict[str, Any]:
    from .code_eval import score, truncate

    n = args["num_samples"]
    sample = {"temperature": args["temperature"], "top_p": args["top_p"]} if n > 1 else None
    outputs = generate_texts(model, tokenizer, [p["prompt"] for p in problems], args["max_new_tokens"],
                             args["batch_size"], sample, num_return_sequences=n)
    completions = [[truncate(c.text) for c in cs] for cs in outputs]
    result = score(problems, completions, args["k"], args["timeout_s"], args["memory_mb"])
    for p, cs in zip(result["per_problem"], completions):
        p["completions"] = cs
    return result


def _eval_rows(ctx: StageContext):
    """What the generation-based harnesses score, loaded once for every compared model."""
    from ..config.dataset import DatasetConfig
    from ..data.loading import load_rows, load_splits

    stage, args = ctx.stage, ctx.spec.args
    limit = args["limit"]
    if args["harness"] == "pass_at_k":
        rows = load_rows(stage.dataset, "code")[0]
    elif stage.dataset is not None:
        rows = load_rows(stage.dataset, "sft")[0]
    elif args.get("held_out_dataset"):
        held = load_splits(DatasetConfig.model_validate(args["held_out_dataset"]), "sft")[1]
        if not held:
            raise StageError(f"`{ctx.spec.name}`: the {args['held_out_of']!r} stage's dataset has no held-out rows")
        rows = held
    else:
        rows = None
    return rows[:limit] if rows and limit else rows


def _generation_harness(ctx: StageContext) -> dict[str, Any]:
    from ..data.loading import load_rows

    stage, args, template = ctx.stage, ctx.spec.args, ctx.spec.args["template"]
    harness = args["harness"]
    rows = _eval_rows(ctx)
    pairs = load_rows(stage.preference_dataset, "preference")[0] if stage.preference_dataset else None
    results = {}
    for label, entry in _models(ctx):
        t0 = time.perf_counter()
        src = model_source(entry)
        tokenizer = load_tokenizer(ctx.spec, src, template)
        model = load_input_model(ctx.spec, entry, "fp32").eval()
        scores: dict[str, Any] = {}
        if harness == "rouge":
            scores.update(_rouge(model, tokenizer, rows, template, args))
        elif harness == "pass_at_k":
            scores.update(_pass_at_k(model, tokenizer, rows, args))
        elif rows:
            scores.update(_exact_match(model, tokenizer, rows, template, args))
        if pairs and harness == "builtin":
            scores.update(_preference(model, tokenizer, pairs, template, args["batch_size"]))
        scores["seconds"] = round(time.perf_counter() - t0, 2)  # loading and scoring this model
        results[label] = scores
        log.info("[%s] %s (%s): %s", ctx.spec.name, label, src,
                 ", ".join(f"{k} {v:.3g}" for k, v in scores.items() if isinstance(v, float)))
    return {"harness": harness, "results": results}


def _lm_eval(ctx: StageContext) -> dict[str, Any]:
    """EleutherAI lm-evaluation-harness on the input model and every `compare` model."""
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError as exc:
        raise StageError("the lm_eval harness needs lm-eval: pip install 'neuralchat-recipes[eval]'") from exc
    args = ctx.spec.args
    tasks = TaskManager(include_path=str(Path(args["include_path"]).expanduser().resolve())) if args["include_path"] else None
    by_shots: dict[int | None, list[str]] = {}
    for task in args["tasks"]:  # lm-eval takes one few-shot count per call: group the tasks by theirs
        name, _, shots = task.partition(":")
        by_shots.setdefault(int(shots) if shots else args["num_fewshot"], []).append(name)
    results: dict[str, dict[str, float]] = {}
    for label, entry in _models(ctx):
        src = model_source(entry.get("adapter_base") or entry)
        model_args = f"pretrained={src},dtype=auto,trust_remote_code={ctx.spec.model['trust_remote_code']}"
        if entry.get("adapter_base"):
            model_args += f",peft={model_source(entry)}"
        if ctx.spec.model["revision"] and not Path(src).is_dir():  # a hub id: pin the entry's revision
            model_args += f",revision={ctx.spec.model['revision']}"
        results[label] = {}
        for shots, names in by_shots.items():
            try:
                out = lm_eval.simple_evaluate(
                    model="hf", model_args=model_args, tasks=names, num_fewshot=shots,
                    limit=args["limit"], batch_size=args["batch_size"], device=ctx.backend.torch_device(), task_manager=tasks,
                    apply_chat_template=args["apply_chat_template"], system_instruction=args["system_instruction"],
                )
            except Exception as exc:  # lm-eval raises many kinds; say which tasks and what usually causes it
                offline = [k for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE") if os.environ.get(k) == "1"]
                raise StageError(
                    f"`{ctx.spec.name}`: lm-eval could not run tasks {names} ({type(exc).__name__}: {str(exc)[:300]}). "
                    "Hub tasks download their data" + (f", but {' and '.join(offline)}=1 is set" if offline else "")
                    + f"; run with network access, or evaluate local tasks with `{ctx.spec.name}.include_path`, or skip "
                    f"the stage with `pipeline=[...]` without {ctx.spec.name!r}"
                ) from exc
            results[label].update({f"{task}/{metric.split(',')[0]}": value for task, metrics in out["results"].items()
                                   for metric, value in metrics.items()
                                   if isinstance(value, (int, float)) and "stderr" not in metric})
        log.info("[%s] %s (%s): %s", ctx.spec.name, label, src, ", ".join(f"{k} {v:.3g}" for k, v in results[label].items()))
    return {"harness": "lm_eval", "results": results}


def run(ctx: StageContext) -> dict[str, Any]:
    metrics = _lm_eval(ctx) if ctx.spec.args["harness"] == "lm_eval" else _generation_harness(ctx)
    (ctx.final / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics
