"""Merge an upstream LoRA adapter into the model it was trained on; save a standalone model.

The result loads with plain ``AutoModelForCausalLM.from_pretrained`` and
``AutoTokenizer.from_pretrained`` (safetensors weights, tokenizer with its chat template,
generation config).
"""

from __future__ import annotations

from typing import Any

from . import StageContext
from ..model_sources import apply_generation_tokens
from .common import load_model, log, model_source


def run(ctx: StageContext) -> dict[str, Any]:
    import torch
    from peft import PeftModel
    from transformers import AutoTokenizer

    spec = ctx.spec
    adapter_dir = spec.inputs[0]["output_dir"]
    base = model_source(spec.inputs[1])
    dtype = "auto" if spec.args["dtype"] == "auto" else getattr(torch, spec.args["dtype"])
    log.info("[%s] merging adapter %s with its base %s into a new model (the base is not modified)",
             spec.name, adapter_dir, base)
    model = load_model(spec, base, "fp32", dtype=dtype)
    merged = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir, trust_remote_code=spec.model["trust_remote_code"])
    apply_generation_tokens(merged, tokenizer)  # plain generate() stops where the chat template ends a turn
    merged.save_pretrained(str(ctx.final), safe_serialization=True)
    tokenizer.save_pretrained(str(ctx.final))
    return {"parameters": sum(p.numel() for p in merged.parameters()), "base": base, "adapter": adapter_dir}
