"""The model card an export stage writes: README.md with Hugging Face metadata, from the stages' manifests.

The metadata block (base_model, datasets, license, tags, model-index with the evaluation results)
is rendered by ``huggingface_hub.ModelCardData``, so the Hub reads it as it reads its own; the
body lists the pipeline with each stage's fingerprint, the settings every training stage ran
with, the evaluation tables and how to load the files.
"""

from __future__ import annotations

from typing import Any

from .execution.present import NOT_SCORES, eval_table, markdown_table

# Training settings worth a row in the card, in this order (from the plan's resolved args).
TRAINING_KEYS = (
    "learning_rate",
    "lr_scheduler_type",
    "warmup_ratio",
    "warmup_steps",
    "num_train_epochs",
    "max_steps",
    "global_batch_size",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "weight_decay",
    "optim",
    "max_seq_length",
    "max_length",
    "max_prompt_length",
    "packing",
    "loss_on",
    "template",
    "beta",
    "loss_type",
    "precision",
)


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def _trained(manifest: dict[str, Any]) -> bool:
    """A stage that trained (it has training settings), whatever its kind."""
    return "learning_rate" in (manifest.get("args") or {})


def _datasets(manifests: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """(hub dataset ids for the metadata, every dataset by name and source for the body)."""
    hub, named = [], []
    for m in manifests:
        for entry in (m.get("datasets") or {}).values():
            if entry.get("hub_id") and entry["hub_id"] not in hub:
                hub.append(entry["hub_id"])
            named.append(
                f"{m['name']}: `{entry['name']}` ({entry.get('hub_id') or entry.get('path')}, "
                f"format {entry.get('format')})"
            )
    return hub, named


def _eval_results(manifests: list[dict[str, Any]], model_name: str):
    """model-index entries for the final model's numeric scores."""
    from huggingface_hub import EvalResult

    results = []
    for m in manifests:
        scores = (m.get("metrics", {}).get("results") or {}).get("final") or {}
        dataset = next(iter((m.get("datasets") or {}).values()), {}).get("name") or m["name"]
        for metric, value in scores.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and metric not in NOT_SCORES:
                results.append(
                    EvalResult(
                        task_type="text-generation",
                        dataset_type=dataset,
                        dataset_name=dataset,
                        metric_type=metric,
                        metric_value=float(value),
                    )
                )
    return results


def render_card(recipe, model, manifests: list[dict[str, Any]], files: dict[str, str]) -> str:
    """README.md for an exported model. ``manifests`` are the earlier stages' (pipeline order); ``files``
    maps what was written (``gguf``) to its file name."""
    from huggingface_hub import ModelCard, ModelCardData

    base = model.origin or (
        model.path if "/" in model.path and not model.path.startswith((".", "/", "package:")) else None
    )
    hub_datasets, named = _datasets(manifests)
    tags = [
        "neuralchat-recipes",
        *dict.fromkeys(m["kind"] for m in manifests if _trained(m)),
        *(["lora"] if any((m.get("peft") or {}).get("method") == "lora" for m in manifests) else []),
        *(["gguf"] if files.get("gguf") else []),
    ]
    name = f"{recipe.name}-{model.name}"
    data = ModelCardData(
        base_model=base,
        datasets=hub_datasets or None,
        license=model.license,
        tags=tags,
        library_name="transformers",
        pipeline_tag="text-generation",
        model_name=name,
        eval_results=_eval_results(manifests, name) or None,
    )
    lines = [
        f"# {name}",
        "",
        recipe.description or f"Fine-tuned from {base or model.path} with neuralchat-recipes.",
        "",
        f"Base model: `{base or model.path}`"
        + (f" (loaded from `{model.path}`)" if base and base != model.path else ""),
        "",
        "## Pipeline",
        "",
        "| stage | kind | result | fingerprint |",
        "|---|---|---|---|",
    ]
    for m in manifests:
        metrics = m.get("metrics", {})
        result = []
        if metrics.get("first_loss") is not None:
            result.append(f"loss {_value(metrics['first_loss'])} → {_value(metrics.get('last_loss'))}")
        if metrics.get("last_rewards/accuracies") is not None:
            result.append(
                f"reward accuracy {_value(metrics.get('first_rewards/accuracies'))} → "
                f"{_value(metrics['last_rewards/accuracies'])}"
            )
        lines.append(f"| {m['name']} | {m['kind']} | {'; '.join(result) or '-'} | `{m['fingerprint'][:16]}` |")
    lines += ["", "Data: " + ("; ".join(named) if named else "-"), ""]
    training = [m for m in manifests if _trained(m)]
    if training:
        lines += [
            "## Training settings",
            "",
            "| setting | " + " | ".join(m["name"] for m in training) + " |",
            "|---|" + "---|" * len(training),
        ]
        for key in TRAINING_KEYS:
            if any(key in m.get("args", {}) for m in training):
                lines.append(f"| {key} | " + " | ".join(_value(m.get("args", {}).get(key)) for m in training) + " |")
        for key in ("method", "r", "alpha", "dropout", "target_modules"):
            if any(key in (m.get("peft") or {}) for m in training):
                lines.append(
                    f"| peft.{key} | " + " | ".join(_value((m.get("peft") or {}).get(key)) for m in training) + " |"
                )
        lines.append("")
    for m in manifests:
        results = m.get("metrics", {}).get("results")
        if not isinstance(results, dict) or not results or not all(isinstance(v, dict) for v in results.values()):
            continue
        header, rows = eval_table(results)
        lines += [
            f"## Evaluation ({m['name']}, {m.get('metrics', {}).get('harness')})",
            "",
            *markdown_table(header, rows),
            "",
            "`final` is this model; `base` the untrained base model; other rows are earlier stages.",
            "",
        ]
    lines += [
        "## Use it",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        'tokenizer = AutoTokenizer.from_pretrained("path/to/this/directory")',
        'model = AutoModelForCausalLM.from_pretrained("path/to/this/directory")',
        'messages = [{"role": "user", "content": "..."}]',
        'inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", '
        "return_dict=True)",
        'print(tokenizer.decode(model.generate(**inputs, max_new_tokens=64)[0][inputs["input_ids"].shape[1]:], '
        "skip_special_tokens=True))",
        "```",
        "",
    ]
    if files.get("gguf"):
        lines += [f"With llama.cpp: `llama-cli -m {files['gguf']} -cnv` (the chat template is in the file).", ""]
    lines += [
        "## Reproduce",
        "",
        "Made with neuralchat-recipes from recipe "
        f"`{recipe.name}`; `neuralchat_recipe.json` next to this card is the whole resolved recipe:",
        "",
        "```bash",
        f"python -m neuralchat_recipes recipe={recipe.name}",
        "```",
        "",
    ]
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)))
