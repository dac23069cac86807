"""Export: the input model's Hugging Face files, a GGUF file for llama.cpp, and a model card, in one directory.

The directory is what one would upload to the Hub: config, safetensors weights, tokenizer and chat
template, generation config (hard links to the input artifact, which is never modified), plus
``gguf/<recipe>-<dtype>.gguf`` (gguf_export.py), ``README.md`` (model_card.py) and
``neuralchat_recipe.json`` (the resolved recipe, secrets scrubbed). The GGUF file has a folder of its
own: transformers' ``from_pretrained(dir, gguf_file=...)`` prefers a ``tokenizer.json`` it finds next
to the file over the tokenizer inside it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from ..config.stage import StageBase
from ..execution.secrets import write_text
from .common import StageError, log, model_source
from .kind import PlanContext, Resolved, StageKind


class ExportStage(StageBase):
    kind: Literal["export"] = Field(
        default="export",
        description="Publish a model: its Hugging Face files, a GGUF file for llama.cpp and a model card (README.md "
        "with Hugging Face metadata, every stage's settings, the evaluation tables and the fingerprints).",
    )
    gguf_dtype: Literal["f16", "f32"] | None = Field(
        default="f16", description="Precision of the GGUF file (f32 is exact, f16 half the size); null writes none."
    )
    tokenizer_pre: str | None = Field(
        default=None,
        description="llama.cpp pre-tokenizer name written into the GGUF (how text is split before BPE: `smollm`, "
        "`llama-bpe`, ...); null: the base model's own when it came from a GGUF file, else `default`.",
    )
    model_card: bool = Field(default=True, description="Write README.md, a Hugging Face model card.")


class ResolvedExport(Resolved):
    gguf_dtype: str | None
    tokenizer_pre: str
    model_card: bool


class ExportKind(StageKind):
    name = "export"
    config = ExportStage

    def produces(self, stage) -> str | None:
        return "model"

    def extra_inputs(self, recipe, name, stage, upstream, by_name):
        """Every earlier stage, which the model card describes: their results are inputs too."""
        from dataclasses import replace

        from ..graph import stage_input

        return [replace(stage_input(spec), described=True) for spec in by_name.values()]

    def resolve(self, p: PlanContext) -> ResolvedExport:
        stage = p.stage
        pre = stage.tokenizer_pre or (p.model_facts or {}).get("tokenizer_pre") or "default"
        return ResolvedExport(
            precision=p.precision, gguf_dtype=stage.gguf_dtype, tokenizer_pre=pre, model_card=stage.model_card
        )

    def run(self, ctx) -> dict[str, Any]:
        return run(ctx)


KIND = ExportKind()


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or links not allowed
        shutil.copy2(src, dst)


def _portable_tokenizer_config(src: Path, dst: Path) -> None:
    """transformers 5 names its Rust-backed tokenizers `TokenizersBackend`, a class older releases (4.x, as
    optimum-habana pins) cannot load; `PreTrainedTokenizerFast` loads the same tokenizer.json in both."""
    config = json.loads(src.read_text(encoding="utf-8"))
    if config.get("tokenizer_class") == "TokenizersBackend":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
    dst.write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")  # a new file, not a link


def _earlier_manifests(ctx) -> list[dict[str, Any]]:
    """Manifests of the stages this export describes (finished before it: the plan orders them)."""
    out = []
    for entry in ctx.inputs:
        manifest = Path(entry.output_dir or "") / "manifest.json"
        if entry.described and manifest.is_file():
            out.append(json.loads(manifest.read_text()))
    return out


def run(ctx) -> dict[str, Any]:
    from ..execution import recipe_json
    from ..gguf_export import ExportError, write_gguf
    from ..model_card import render_card

    args = ctx.args
    source = Path(model_source(ctx.inputs[0]))
    if not (source / "config.json").is_file():
        raise StageError(
            f"`{ctx.name}`: {source} is not a local model directory; export a model this recipe trained "
            "or a local base model"
        )
    for item in sorted(source.iterdir()):
        if item.name == "tokenizer_config.json":
            _portable_tokenizer_config(item, ctx.final / item.name)
        elif item.is_file() and item.name not in ("manifest.json", "README.md", "metrics.json", "generations.jsonl"):
            _link_or_copy(item, ctx.final / item.name)
    files: dict[str, str] = {}
    metrics: dict[str, Any] = {"source": str(source)}
    if args.gguf_dtype:
        gguf_name = f"gguf/{ctx.recipe.name}-{args.gguf_dtype}.gguf"
        log.info("[%s] writing %s (%s, pre-tokenizer %s)", ctx.name, gguf_name, args.gguf_dtype, args.tokenizer_pre)
        (ctx.final / "gguf").mkdir()
        try:
            metrics["gguf"] = write_gguf(
                source,
                ctx.final / gguf_name,
                args.gguf_dtype,
                name=f"{ctx.recipe.name}-{ctx.recipe.model.name}",
                tokenizer_pre=args.tokenizer_pre,
            )
        except ExportError as exc:
            raise StageError(
                f"`{ctx.name}`: {exc}; or set `{ctx.name}.gguf_dtype=null` to export without GGUF"
            ) from None
        files["gguf"] = gguf_name
    (ctx.final / "neuralchat_recipe.json").write_text(recipe_json(ctx.recipe))
    if args.model_card:
        card = render_card(ctx.recipe, ctx.recipe.model, _earlier_manifests(ctx), files)
        write_text(ctx.final / "README.md", card)
        metrics["model_card"] = "README.md"
    metrics["files"] = sorted(p.name for p in ctx.final.iterdir())
    return metrics
