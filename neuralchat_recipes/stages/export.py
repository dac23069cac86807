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
from typing import Any

from . import StageContext
from .common import StageError, log, model_source


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


def _earlier_manifests(ctx: StageContext) -> list[dict[str, Any]]:
    """Manifests of the stages this export describes (finished before it: the plan orders them)."""
    out = []
    for entry in ctx.spec.inputs:
        manifest = Path(entry.get("output_dir") or "") / "manifest.json"
        if entry.get("described") and manifest.is_file():
            out.append(json.loads(manifest.read_text()))
    return out


def run(ctx: StageContext) -> dict[str, Any]:
    from ..gguf_export import ExportError, write_gguf
    from ..model_card import render_card
    from ..runner import recipe_json

    spec, args = ctx.spec, ctx.spec.args
    source = Path(model_source(spec.inputs[0]))
    if not (source / "config.json").is_file():
        raise StageError(f"`{spec.name}`: {source} is not a local model directory; export a model this recipe trained "
                         "or a local base model")
    for item in sorted(source.iterdir()):
        if item.name == "tokenizer_config.json":
            _portable_tokenizer_config(item, ctx.final / item.name)
        elif item.is_file() and item.name not in ("manifest.json", "README.md", "metrics.json", "generations.jsonl"):
            _link_or_copy(item, ctx.final / item.name)
    files: dict[str, str] = {}
    metrics: dict[str, Any] = {"source": str(source)}
    if args["gguf_dtype"]:
        gguf_name = f"gguf/{ctx.recipe.name}-{args['gguf_dtype']}.gguf"
        log.info("[%s] writing %s (%s, pre-tokenizer %s)", spec.name, gguf_name, args["gguf_dtype"], args["tokenizer_pre"])
        (ctx.final / "gguf").mkdir()
        try:
            metrics["gguf"] = write_gguf(source, ctx.final / gguf_name, args["gguf_dtype"],
                                         name=f"{ctx.recipe.name}-{ctx.recipe.model.name}",
                                         tokenizer_pre=args["tokenizer_pre"])
        except ExportError as exc:
            raise StageError(f"`{spec.name}`: {exc}; or set `{spec.name}.gguf_dtype=null` to export without GGUF") from None
        files["gguf"] = gguf_name
    (ctx.final / "neuralchat_recipe.json").write_text(recipe_json(ctx.recipe))
    if args["model_card"]:
        card = render_card(ctx.recipe, ctx.recipe.model, _earlier_manifests(ctx), files)
        (ctx.final / "README.md").write_text(card, encoding="utf-8")
        metrics["model_card"] = "README.md"
    metrics["files"] = sorted(p.name for p in ctx.final.iterdir())
    return metrics
