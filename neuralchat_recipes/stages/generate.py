"""Generate answers to the stage's prompts with the upstream model; saves generations.jsonl."""

from __future__ import annotations

import json
from typing import Any

from . import StageContext
from .common import load_model, load_tokenizer, log, model_source


def run(ctx: StageContext) -> dict[str, Any]:
    import torch

    from ..data.templates import prompt_text

    spec, args = ctx.spec, ctx.spec.args
    source = model_source(spec.inputs[0])
    tokenizer = load_tokenizer(spec, source, args["template"])
    tokenizer.padding_side = "left"
    model = load_model(spec, source, args["precision"]).eval()
    torch.manual_seed(args["seed"])
    outputs = []
    prompts = list(args["prompts"])
    for start in range(0, len(prompts), args["batch_size"]):
        chunk = prompts[start:start + args["batch_size"]]
        system = [{"role": "system", "content": args["system"]}] if args["system"] else []
        texts = [prompt_text(args["template"], [*system, {"role": "user", "content": p}], tokenizer.eos_token) for p in chunk]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        sample = dict(do_sample=True, temperature=args["temperature"], top_p=args["top_p"]) if args["do_sample"] else dict(do_sample=False)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=args["max_new_tokens"], use_cache=True,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, **sample)
        for i, prompt in enumerate(chunk):
            answer = tokenizer.decode(out[i, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()
            outputs.append({"prompt": prompt, "response": answer})
            log.info("[%s] %r -> %r", spec.name, prompt, answer)
    with open(ctx.final / "generations.jsonl", "w", encoding="utf-8") as fh:
        for row in outputs:
            fh.write(json.dumps(row) + "\n")
    return {"generations": len(outputs)}
