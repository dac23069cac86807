"""Evaluation: lm-evaluation-harness tasks, or the builtin harness (exact match + answer loss).

The builtin harness scores the stage's input model and every model named in ``compare``
(``base`` = the untrained base model), so the summary shows before and after.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from . import StageContext
from .common import StageError, load_model, load_tokenizer, log, model_source


def _models(ctx: StageContext) -> list[tuple[str, str]]:
    """(label, source) of every model scored: the stage's input ("final"), then each `compare` model."""
    first, *others = ctx.spec.inputs
    return [("final", model_source(first))] + [(e["stage"] or "base", model_source(e)) for e in others]


def _answer_logprob(model, tokenizer, prompt: str, answer: str) -> tuple[float, int]:
    """Sum of log-probabilities of the answer (and EOS) after the prompt, and its token count."""
    import torch

    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    a_ids = tokenizer(answer + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([p_ids + a_ids])).logits[0, len(p_ids) - 1:-1].float()
    logp = torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(a_ids)[:, None]).sum().item()
    return logp, len(a_ids)


def _exact_match(model, tokenizer, rows, template: str, args) -> dict[str, float]:
    import torch

    from ..data.templates import prompt_text

    exact, nll, answer_tokens = 0, 0.0, 0
    batch = args["batch_size"]
    for start in range(0, len(rows), batch):
        prompts, refs = [], []
        for row in rows[start:start + batch]:
            messages = row["messages"]
            last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
            prompts.append(prompt_text(template, messages[:last], tokenizer.eos_token))
            refs.append(messages[last]["content"])
        enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=args["max_new_tokens"], do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        for i, ref in enumerate(refs):
            text = tokenizer.decode(out[i, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            exact += int(text.strip() == ref.strip())
            logp, n = _answer_logprob(model, tokenizer, prompts[i], ref)
            nll -= logp
            answer_tokens += n
    return {"exact_match": exact / len(rows), "answer_loss": nll / answer_tokens,
            "answer_perplexity": math.exp(nll / answer_tokens), "examples": len(rows)}


def _preference(model, tokenizer, pairs, template: str) -> dict[str, float]:
    from ..data.templates import prompt_text

    wins, margin = 0, 0.0
    for pair in pairs:
        prompt = prompt_text(template, pair["prompt"], tokenizer.eos_token)
        chosen, _ = _answer_logprob(model, tokenizer, prompt, pair["chosen"])
        rejected, _ = _answer_logprob(model, tokenizer, prompt, pair["rejected"])
        wins += int(chosen > rejected)
        margin += chosen - rejected
    return {"preference_accuracy": wins / len(pairs), "preference_margin": margin / len(pairs), "pairs": len(pairs)}


def _builtin(ctx: StageContext) -> dict[str, Any]:
    from ..data.loading import load_rows

    stage, template = ctx.stage, ctx.spec.args["template"]
    rows = load_rows(stage.dataset, "sft")[0] if stage.dataset else None
    pairs = load_rows(stage.preference_dataset, "preference")[0] if stage.preference_dataset else None
    results = {}
    for label, src in _models(ctx):
        tokenizer = load_tokenizer(ctx.spec, src, template)
        tokenizer.padding_side = "left"
        model = load_model(ctx.spec, src, "fp32").eval()
        scores: dict[str, float] = {}
        if rows:
            scores.update(_exact_match(model, tokenizer, rows, template, ctx.spec.args))
        if pairs:
            scores.update(_preference(model, tokenizer, pairs, template))
        results[label] = scores
        log.info("[%s] %s (%s): %s", ctx.spec.name, label, src,
                 ", ".join(f"{k} {v:.3g}" for k, v in scores.items() if isinstance(v, float)))
    return {"harness": "builtin", "results": results}


def _lm_eval(ctx: StageContext) -> dict[str, Any]:
    """EleutherAI lm-evaluation-harness on the input model and every `compare` model."""
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError as exc:
        raise StageError("the lm_eval harness needs lm-eval: pip install 'neuralchat-recipes[eval]'") from exc
    args = ctx.spec.args
    tasks = TaskManager(include_path=str(Path(args["include_path"]).expanduser().resolve())) if args["include_path"] else None
    results: dict[str, dict[str, float]] = {}
    for label, src in _models(ctx):
        model_args = f"pretrained={src},dtype=auto,trust_remote_code={ctx.spec.model['trust_remote_code']}"
        if ctx.spec.model["revision"] and not Path(src).is_dir():  # a hub id: pin the entry's revision
            model_args += f",revision={ctx.spec.model['revision']}"
        out = lm_eval.simple_evaluate(
            model="hf", model_args=model_args, tasks=list(args["tasks"]), num_fewshot=args["num_fewshot"],
            limit=args["limit"], batch_size=args["batch_size"], device=ctx.backend.torch_device(), task_manager=tasks,
            apply_chat_template=args["apply_chat_template"], system_instruction=args["system_instruction"],
        )
        results[label] = {f"{task}/{metric.split(',')[0]}": value for task, metrics in out["results"].items()
                          for metric, value in metrics.items()
                          if isinstance(value, (int, float)) and "stderr" not in metric}
        log.info("[%s] %s (%s): %s", ctx.spec.name, label, src, ", ".join(f"{k} {v:.3g}" for k, v in results[label].items()))
    return {"harness": "lm_eval", "results": results}


def run(ctx: StageContext) -> dict[str, Any]:
    metrics = _builtin(ctx) if ctx.spec.args["harness"] == "builtin" else _lm_eval(ctx)
    (ctx.final / "results.json").write_text(json.dumps(metrics, indent=2))
    return metrics
