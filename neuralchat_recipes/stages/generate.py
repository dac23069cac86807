"""Generate answers to the stage's prompts (and prompts file) with the upstream model.

Prompts are wrapped in the stage's template (``tokenizer``: the model's own chat template) with
the optional system prompt, generated in batches (greedy unless ``do_sample``) and saved as
``generations.jsonl``: one ``{"prompt", "completion"}`` per prompt, in order.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import StageContext
from .common import StageError, generate_texts, load_input_model, load_tokenizer, log, model_source, render_prompt


def read_prompts(path: str) -> list[str]:
    """Prompts of a .txt file (one per non-empty line) or a .jsonl file (a `prompt` field per line)."""
    file = Path(path)
    if file.suffix == ".jsonl":
        prompts = []
        for i, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise StageError(f"{file}, line {i}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
                raise StageError(f"{file}, line {i}: expected an object with a string `prompt`")
            prompts.append(row["prompt"])
        return prompts
    return [line for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]


def run(ctx: StageContext) -> dict[str, Any]:
    import torch

    spec, args = ctx.spec, ctx.spec.args
    source = model_source(spec.inputs[0])
    tokenizer = load_tokenizer(spec, source, args["template"])
    model = load_input_model(spec, spec.inputs[0], args["precision"]).eval()
    torch.manual_seed(args["seed"])
    prompts = list(args["prompts"]) + (read_prompts(args["prompts_file"]) if args.get("prompts_file") else [])
    system = [{"role": "system", "content": args["system"]}] if args["system"] else []
    texts = [render_prompt(tokenizer, args["template"], [*system, {"role": "user", "content": p}]) for p in prompts]
    sample = {"temperature": args["temperature"], "top_p": args["top_p"]} if args["do_sample"] else None
    outputs = generate_texts(model, tokenizer, texts, args["max_new_tokens"], args["batch_size"], sample)
    with open(ctx.final / "generations.jsonl", "w", encoding="utf-8") as fh:
        for prompt, (completion,) in zip(prompts, outputs):
            fh.write(json.dumps({"prompt": prompt, "completion": completion.text.strip(),
                                 "stopped": completion.stopped}) + "\n")
            log.info("[%s] %r -> %r%s", spec.name, prompt, completion.text.strip(),
                     "" if completion.stopped else f" (no end of turn within {args['max_new_tokens']} tokens)")
    return {"generations": len(prompts), "stop_rate": sum(c.stopped for (c,) in outputs) / max(len(outputs), 1)}
