"""Generate answers to the stage's prompts (and prompts file) with the upstream model.

Prompts are wrapped in the stage's template (``tokenizer``: the model's own chat template) with
the optional system prompt, generated in batches (greedy unless ``do_sample``) and saved as
``generations.jsonl``: one ``{"prompt", "completion", "stopped"}`` per prompt, in order.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from ..config.base import NOT_FINGERPRINTED
from ..config.stage import StageBase, Template
from ..data.paths import resolve_data_path
from ..execution.secrets import scrub
from .common import (
    StageError,
    default_system,
    generate_texts,
    load_input_model,
    load_tokenizer,
    log,
    model_source,
    render_prompt,
    sft_template,
)
from .kind import PlanContext, PlanError, Resolved, StageKind


class GenerateStage(StageBase):
    kind: Literal["generate"] = Field(default="generate", description="Generate answers to prompts with a model.")
    prompts: list[str] = Field(default_factory=list, description="Prompts to answer.")
    prompts_file: str | None = Field(
        default=None,
        description="Also answer the prompts in this file: .txt (one per line) or .jsonl (a `prompt` field per line).",
    )
    system: str | None = Field(
        default=None,
        description="System prompt put before every prompt; null: the one the model was trained with (the nearest "
        "earlier SFT stage's dataset `default_system`); an empty string: none.",
    )
    template: Template | None = Field(
        default=None,
        description="Prompt format the prompts are wrapped in; null: the template the nearest earlier SFT stage "
        "trained with (neural_chat without one).",
    )
    max_new_tokens: int = Field(default=100, ge=1, description="Tokens to generate per prompt.")
    do_sample: bool = Field(default=False, description="Sample instead of greedy decoding.")
    temperature: float = Field(default=1.0, gt=0, description="Sampling temperature.")
    top_p: float = Field(default=1.0, gt=0, le=1, description="Nucleus sampling threshold.")
    batch_size: int = Field(default=1, ge=1, description="Prompts per forward pass.")
    seed: int = Field(default=42, description="Sampling seed.")
    use_kv_cache: bool = Field(default=True, description="Keep past keys and values between decoding steps.")
    use_hpu_graphs: bool | None = Field(
        default=None,
        description="Gaudi: run decoding steps as captured HPU graphs (optimum-habana's --use_hpu_graphs); null: on "
        "for hpu devices, off elsewhere.",
        json_schema_extra=NOT_FINGERPRINTED,
    )
    deepspeed_inference: bool = Field(
        default=False,
        description="Shard the model over the stage's devices with DeepSpeed inference (tensor parallel) and "
        "generate on all of them, as optimum-habana's run_generation.py under `gaudi_spawn --use_deepspeed` (a "
        "70B model on 8 cards). Needs a multi-device profile for the stage (e.g. `generate.hardware`); not on CPUs.",
    )

    @model_validator(mode="after")
    def _has_prompts(self) -> GenerateStage:
        if not self.prompts and not self.prompts_file:
            raise ValueError("a generate stage needs `prompts` or a `prompts_file`")
        return self


# prompts are not tokenized at plan time: the memory estimate takes a long chat prompt's length
PROMPT_TOKENS_ESTIMATE = 512


class ResolvedGenerate(Resolved):
    prompts: list[str]
    prompts_file: str | None = Field(json_schema_extra=NOT_FINGERPRINTED)  # (its bytes: prompts_file_sha256)
    prompts_file_sha256: str | None
    system: str | None
    template: str
    max_new_tokens: int
    do_sample: bool
    temperature: float
    top_p: float
    batch_size: int = Field(json_schema_extra=NOT_FINGERPRINTED)
    seed: int
    use_kv_cache: bool = Field(json_schema_extra=NOT_FINGERPRINTED)  # (the same tokens either way)
    use_hpu_graphs: bool = Field(json_schema_extra=NOT_FINGERPRINTED)
    deepspeed_inference: bool = Field(json_schema_extra=NOT_FINGERPRINTED)
    tensor_parallel: int = Field(json_schema_extra=NOT_FINGERPRINTED)  # devices the model is sharded over


class GenerateKind(StageKind):
    name = "generate"
    config = GenerateStage
    accepts = frozenset({"model", "adapter"})  # an adapter generates on its base

    def runs_on_every_device(self, stage) -> bool:
        return stage.deepspeed_inference

    def runs_deepspeed(self, stage) -> bool:
        return stage.deepspeed_inference

    def rules(self, recipe, name: str, stage) -> list[str]:
        hardware = recipe.hardware_for(name)
        if stage.deepspeed_inference and hardware.world_size < 2:
            return [
                f"`{name}.deepspeed_inference` on hardware {hardware.name!r} is not supported because it shards the "
                f"model over several devices and the stage runs on {hardware.world_size}; give it more (e.g. "
                f"`hardware@{name}.hardware=gaudi2_8x`) or turn it off"
            ]
        return []

    def memory_workload(self, p: PlanContext, resolved):
        from ..memory import Workload

        return Workload(
            kind="generate",
            precision=resolved.precision,
            device=p.hardware.device,
            world=resolved.tensor_parallel,
            micro_batch=resolved.batch_size,
            batch_key=f"{p.name}.batch_size",
            sequence=PROMPT_TOKENS_ESTIMATE,
            new_tokens=resolved.max_new_tokens if resolved.use_kv_cache else 0,
        )

    def resolve(self, p: PlanContext) -> ResolvedGenerate:
        from ..plan import file_sha256

        stage = p.stage
        path = resolve_data_path(stage.prompts_file) if stage.prompts_file else None
        if path is not None and not path.is_file():
            raise PlanError([f"`{p.name}.prompts_file` = {stage.prompts_file!r}: file not found (looked at {path})"])
        tensor_parallel = p.world if stage.deepspeed_inference else 1
        if tensor_parallel > 1 and not p.device.can("tensor_parallel_generation"):
            raise PlanError(
                [
                    f"`{p.name}.deepspeed_inference` on hardware {p.hardware.name!r} is not supported because "
                    f"DeepSpeed's tensor-parallel inference does not run on {p.hardware.device} devices here (its CPU "
                    f"path crashes); generate on one process (`{p.name}.deepspeed_inference=false`)"
                ]
            )
        return ResolvedGenerate(
            precision=p.precision,
            prompts=stage.prompts,
            prompts_file=str(path) if path else None,
            prompts_file_sha256=file_sha256(path) if path else None,
            system=default_system(p.recipe, p.name) if stage.system is None else stage.system or None,
            template=sft_template(p.recipe, p.name, stage.template),
            max_new_tokens=stage.max_new_tokens,
            do_sample=stage.do_sample,
            temperature=stage.temperature,
            top_p=stage.top_p,
            batch_size=stage.batch_size,
            seed=stage.seed,
            use_kv_cache=stage.use_kv_cache,
            use_hpu_graphs=p.hardware.device == "hpu" if stage.use_hpu_graphs is None else stage.use_hpu_graphs,
            deepspeed_inference=stage.deepspeed_inference,
            tensor_parallel=tensor_parallel,
        )

    def run(self, ctx) -> dict[str, Any]:
        import torch

        args = ctx.args
        source = model_source(ctx.inputs[0])
        tokenizer = load_tokenizer(ctx.model, source, args.template)
        model = load_input_model(ctx.model, ctx.inputs[0], args.precision).eval()
        if args.tensor_parallel > 1:  # every rank holds a shard and generates the same tokens
            model = ctx.device.tensor_parallel(model, args.tensor_parallel, args.precision, args.use_hpu_graphs)
        elif args.use_hpu_graphs:
            model = ctx.device.capture_graphs(model)
        torch.manual_seed(args.seed)
        prompts = list(args.prompts) + (read_prompts(args.prompts_file) if args.prompts_file else [])
        system = [{"role": "system", "content": args.system}] if args.system else []
        texts = [render_prompt(tokenizer, args.template, [*system, {"role": "user", "content": p}]) for p in prompts]
        sample = {"temperature": args.temperature, "top_p": args.top_p} if args.do_sample else None
        outputs = generate_texts(
            model, tokenizer, texts, args.max_new_tokens, args.batch_size, sample, use_cache=args.use_kv_cache
        )
        rows = [
            scrub({"prompt": prompt, "completion": completion.text.strip(), "stopped": completion.stopped})
            for prompt, (completion,) in zip(prompts, outputs)
        ]
        if _rank() == 0:
            (ctx.final / "generations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        for prompt, (completion,) in zip(prompts, outputs):
            log.info(
                "[%s] %r -> %r%s",
                ctx.name,
                prompt,
                completion.text.strip(),
                "" if completion.stopped else f" (no end of turn within {args.max_new_tokens} tokens)",
            )
        return {"generations": len(prompts), "stop_rate": sum(c.stopped for (c,) in outputs) / max(len(outputs), 1)}


KIND = GenerateKind()


def _rank() -> int:
    import os

    return int(os.environ.get("RANK", "0"))


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
