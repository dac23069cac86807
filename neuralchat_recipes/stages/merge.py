"""Merge an upstream LoRA adapter into the model it was trained on; save a standalone model.

The result loads with plain ``AutoModelForCausalLM.from_pretrained`` and
``AutoTokenizer.from_pretrained`` (safetensors weights, tokenizer with its chat template,
generation config that stops where the chat template ends a turn).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from ..config.stage import StageBase
from ..model_sources import apply_generation_tokens
from .common import load_model, log, model_source
from .kind import PlanContext, Resolved, StageKind


class MergeStage(StageBase):
    kind: Literal["merge"] = Field(default="merge", description="Merge an upstream LoRA adapter into its base model.")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        default="auto", description="dtype of the saved model; auto keeps the base model's dtype."
    )
    onto: Literal["trained_base", "model"] = Field(
        default="trained_base",
        description="The weights the adapter is added to: `trained_base`, the model it was trained on (right); "
        "`model`, the recipe's base model, which differs when the adapter was trained on a merged SFT model "
        "(optimum-habana's StackLlama-2 merges its DPO adapter onto Llama-2-70b-hf this way).",
    )


class ResolvedMerge(Resolved):
    dtype: str
    onto: str


class MergeKind(StageKind):
    name = "merge"
    config = MergeStage
    accepts = frozenset({"adapter"})

    def produces(self, stage) -> str | None:
        return "model"

    def rules(self, recipe, name: str, stage) -> list[str]:
        from ..graph import produces, upstream_of

        upstream = upstream_of(recipe, name)
        if upstream is None:
            return [f"`{name}`: a merge stage needs an upstream adapter, but its input is the base model"]
        up = recipe.stages.get(upstream)
        if up is None:
            return []
        if produces(up) != "adapter":
            return [f"`{name}`: a merge stage needs an upstream LoRA adapter, but {upstream!r} produces no adapter"]
        if up.peft.method != "lora":
            return [
                f"`{name}`: a merge stage needs an upstream LoRA adapter, but {upstream!r} produces a "
                f"{up.peft.method} adapter; only LoRA weights can be merged into the base"
            ]
        return []

    def extra_inputs(self, recipe, name, stage, upstream, by_name):
        from ..graph import base_input

        return [base_input(recipe)] if stage.onto == "model" else []

    def resolve(self, p: PlanContext) -> ResolvedMerge:
        from ..graph import upstream_of

        upstream = upstream_of(p.recipe, p.name)
        trained_on = upstream_of(p.recipe, upstream) if upstream else None
        if p.stage.onto == "model" and trained_on is not None:
            p.notes.append(
                f"the {upstream!r} adapter was trained on {trained_on!r}, and is merged onto the recipe's base model "
                "instead (`onto: model`): the weights it learned on top of the SFT model land on the raw model"
            )
        return ResolvedMerge(precision=p.precision, dtype=p.stage.dtype, onto=p.stage.onto)

    def memory_workload(self, p: PlanContext, resolved):
        from ..memory import Workload

        # the base loads in the merge's dtype ("auto": the checkpoint's, taken as the profile's precision), in the
        # runner's host memory whatever the stage's device
        dtype = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(resolved.dtype, p.precision)
        return Workload(kind="merge", precision=dtype, device="cpu")

    def run(self, ctx) -> dict[str, Any]:
        import torch
        from peft import PeftModel
        from transformers import AutoTokenizer

        adapter_dir = ctx.inputs[0].output_dir
        base = model_source(ctx.inputs[1] if ctx.args.onto == "model" else ctx.inputs[0].adapter_base)
        dtype = "auto" if ctx.args.dtype == "auto" else getattr(torch, ctx.args.dtype)
        log.info(
            "[%s] merging adapter %s with its base %s into a new model (the base is not modified)",
            ctx.name,
            adapter_dir,
            base,
        )
        model = load_model(ctx.model, base, "fp32", dtype=dtype)
        merged = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
        tokenizer = AutoTokenizer.from_pretrained(adapter_dir, trust_remote_code=ctx.model.trust_remote_code)
        apply_generation_tokens(merged, tokenizer)  # plain generate() stops where the chat template ends a turn
        merged.save_pretrained(str(ctx.final), safe_serialization=True)
        tokenizer.save_pretrained(str(ctx.final))
        return {"parameters": sum(p.numel() for p in merged.parameters()), "base": base, "adapter": adapter_dir}


KIND = MergeKind()
