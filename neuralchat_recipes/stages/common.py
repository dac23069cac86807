"""Factories shared by the stages: model and tokenizer loading, training arguments, progress.

Read top to bottom like alignment-handbook's get_model / get_tokenizer: each takes the stage
spec from the plan and the backend; nothing here asks which device it is on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any

from ..data.templates import jinja_chat_template

log = logging.getLogger("neuralchat_recipes")

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


class StageError(RuntimeError):
    """A stage that cannot run, with a message that says what to change."""


def model_source(entry: dict[str, Any]) -> str:
    """Local path or hub id of a plan input: an upstream artifact, or the recipe's base model."""
    if entry.get("output_dir"):
        return entry["output_dir"]
    from ..model_sources import loadable

    return loadable(entry["model"], entry.get("package"))


def load_tokenizer(spec, source: str, template: str | None):
    from transformers import AutoTokenizer

    model = spec.model
    name = source if (Path(source).is_dir() and (Path(source) / "tokenizer_config.json").is_file()) else (model["tokenizer"] or source)
    tokenizer = AutoTokenizer.from_pretrained(
        name,
        use_fast=model["use_fast_tokenizer"],
        trust_remote_code=model["trust_remote_code"],
        revision=model["revision"] if name == model["path"] else None,  # a separate tokenizer repo has its own
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = model["pad_token"] or tokenizer.eos_token
    if template and template != "tokenizer":
        tokenizer.chat_template = jinja_chat_template(template)
    elif template == "tokenizer" and not tokenizer.chat_template:
        raise StageError(f"template `tokenizer` needs a chat template in {name!r}, which has none; pick e.g. neural_chat")
    return tokenizer


def torch_dtype(spec, precision: str):
    import torch

    requested = spec.model["torch_dtype"]
    name = DTYPES[precision] if requested == "auto" else requested
    return getattr(torch, name)


def load_model(spec, source: str, precision: str, causal: bool = True, dtype=None):
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    model = spec.model
    cls = AutoModelForCausalLM if model["architecture"] == "causal" and causal else AutoModelForSeq2SeqLM
    kwargs = dict(
        dtype=dtype or torch_dtype(spec, precision),
        trust_remote_code=model["trust_remote_code"],
        use_safetensors=None if model["allow_pickle"] else True,
    )
    if not Path(source).is_dir():
        kwargs["revision"] = model["revision"]
    try:
        return cls.from_pretrained(source, **kwargs)
    except (OSError, EnvironmentError) as exc:
        if not model["allow_pickle"] and "safetensors" in str(exc).lower():
            raise StageError(
                f"{source}: no safetensors weights found. Pickle (.bin) checkpoints can run code when loaded; "
                f"if you trust this one, set `model.allow_pickle=true`"
            ) from exc
        raise


def render_prompt(tokenizer, template: str, messages: list[dict[str, str]]) -> str:
    """The text a model continues for these messages: the template's prompt, or the tokenizer's
    own chat template with the generation prompt."""
    from ..data.templates import prompt_text

    if template == "tokenizer":
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return prompt_text(template, messages, tokenizer.eos_token)


@dataclasses.dataclass(frozen=True)
class Completion:
    text: str  # special tokens removed
    stopped: bool  # ended with EOS or the chat template's end-of-turn token within the token budget


def generate_texts(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int,
                   sample: dict[str, Any] | None = None, num_return_sequences: int = 1) -> list[list[Completion]]:
    """Batched generation (left padding, KV cache, prompts of similar length together): for each prompt, its
    completions. Generation stops at EOS or at the token the chat template ends a turn with."""
    import torch

    from ..model_sources import stop_token_ids

    tokenizer.padding_side = "left"
    stops = stop_token_ids(tokenizer)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    by_index: dict[int, list[Completion]] = {}
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        enc = tokenizer([prompts[i] for i in chunk], return_tensors="pt", padding=True,
                        add_special_tokens=False).to(model.device)
        kwargs = dict(do_sample=True, **sample) if sample else dict(do_sample=False)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=max_new_tokens, use_cache=True, num_return_sequences=num_return_sequences,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=stops or None, **kwargs)
        new = out[:, enc["input_ids"].shape[1]:]
        texts = tokenizer.batch_decode(new, skip_special_tokens=True)
        stopped = torch.isin(new, torch.tensor(stops, device=new.device)).any(dim=1).tolist() if stops else [False] * len(texts)
        completions = [Completion(t, bool(s)) for t, s in zip(texts, stopped)]
        for j, i in enumerate(chunk):
            by_index[i] = completions[j * num_return_sequences:(j + 1) * num_return_sequences]
    return [by_index[i] for i in range(len(prompts))]


def answer_logprobs(model, tokenizer, items: list[tuple[str, str]], batch_size: int) -> list[tuple[float, int]]:
    """For each (prompt, answer): the summed log-probability of the answer and the token that ends its turn,
    and that token count. Batched (right padding, similar lengths together); log-softmax only over answer tokens."""
    import torch

    from ..model_sources import end_of_turn_id

    end = end_of_turn_id(tokenizer)
    end_text = tokenizer.convert_ids_to_tokens(end) if end is not None else tokenizer.eos_token
    encoded = []
    for prompt, answer in items:
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        a_ids = tokenizer(answer + end_text, add_special_tokens=False)["input_ids"]
        encoded.append((p_ids, a_ids))
    order = sorted(range(len(items)), key=lambda i: len(encoded[i][0]) + len(encoded[i][1]))
    results: dict[int, tuple[float, int]] = {}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        width = max(len(encoded[i][0]) + len(encoded[i][1]) for i in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, i in enumerate(chunk):
            seq = encoded[i][0] + encoded[i][1]
            ids[row, :len(seq)] = torch.tensor(seq)
            mask[row, :len(seq)] = 1
        with torch.no_grad():
            logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits
        for row, i in enumerate(chunk):
            p_len, a_ids = len(encoded[i][0]), encoded[i][1]
            rows = logits[row, p_len - 1:p_len - 1 + len(a_ids)].float()
            target = torch.tensor(a_ids, device=rows.device)[:, None]
            results[i] = (torch.log_softmax(rows, dim=-1).gather(1, target).sum().item(), len(a_ids))
        del logits
    return [results[i] for i in range(len(items))]


def load_input_model(spec, entry: dict[str, Any], precision: str):
    """The model a plan input stands for: a full model, or (``adapter_base``) base + adapter."""
    base = entry.get("adapter_base")
    if not base:
        return load_model(spec, model_source(entry), precision)
    from peft import PeftModel

    return PeftModel.from_pretrained(load_model(spec, model_source(base), precision), model_source(entry))


def check_adapter_fits(spec, model) -> None:
    """Adapter settings that depend on the model's shape, checked with a message naming the key."""
    peft = spec.peft or {}
    layers = getattr(model.config, "num_hidden_layers", None)
    if peft.get("method") == "llama_adapter" and layers is not None and peft["adapter_layers"] > layers:
        raise StageError(
            f"`{spec.name}.peft.adapter_layers` = {peft['adapter_layers']}: the model has only {layers} layers; "
            f"set `{spec.name}.peft.adapter_layers={layers}` or fewer"
        )


def ready_to_train(ctx, model) -> None:
    """A freshly loaded model, before a training stage wraps it: shape checks, then the memory saver
    for SwiGLU MLPs (same results; not on Gaudi, where optimum-habana swaps in its own modules)."""
    check_adapter_fits(ctx.spec, model)
    if ctx.backend.device != "hpu":
        from .activations import recompute_swiglu

        if n := recompute_swiglu(model):
            log.info("[%s] %d MLPs keep gate and up projections only for the backward (activation recomputed)",
                     ctx.spec.name, n)


def config_kwargs(args: dict[str, Any], output_dir: str, backend, fields: set[str],
                  extra: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Training-argument keywords from the plan's resolved args for a config class with these
    dataclass ``fields``: (what it takes, the names it does not know and that are left out)."""
    warm: dict[str, Any] = {}
    if args["warmup_steps"]:
        warm["warmup_steps"] = args["warmup_steps"]
    elif args["warmup_ratio"]:
        warm["warmup_ratio" if "warmup_ratio" in fields else "warmup_steps"] = args["warmup_ratio"]
    kwargs: dict[str, Any] = dict(
        output_dir=output_dir,
        learning_rate=args["learning_rate"],
        per_device_train_batch_size=args["per_device_train_batch_size"],
        gradient_accumulation_steps=args["gradient_accumulation_steps"],
        num_train_epochs=args["num_train_epochs"] or 1,
        max_steps=args["max_steps"] or -1,
        lr_scheduler_type=args["lr_scheduler_type"],
        weight_decay=args["weight_decay"],
        optim=args["optim"],
        adam_epsilon=args["adam_epsilon"],
        max_grad_norm=args["max_grad_norm"],
        bf16=args["bf16"],
        fp16=args["fp16"],
        gradient_checkpointing=args["gradient_checkpointing"],
        seed=args["seed"],
        data_seed=args["seed"],
        save_strategy="steps",
        save_steps=args["save_steps"],
        save_total_limit=args["save_total_limit"],
        logging_steps=args["logging_steps"],
        logging_first_step=True,
        disable_tqdm=True,  # progress comes from our callback: one line per logging step
        report_to=list(args.get("report_to") or []),  # the run's report.md is written regardless
        dataloader_num_workers=0,
        remove_unused_columns=False,
        **warm,
        **backend.runtime_training_kwargs(args),
        **extra,
    )
    if kwargs.pop("group_by_length", False):  # transformers 5 renamed it to train_sampling_strategy
        kwargs["train_sampling_strategy" if "train_sampling_strategy" in fields else "group_by_length"] = (
            "group_by_length" if "train_sampling_strategy" in fields else True)
    dropped = sorted(k for k in kwargs if k not in fields)
    return {k: v for k, v in kwargs.items() if k in fields}, dropped


def training_kwargs(args: dict[str, Any], output_dir: str, backend, config_cls, extra: dict[str, Any]) -> dict[str, Any]:
    """TrainingArguments keyword arguments from the plan's resolved args, filtered to what config_cls takes."""
    kwargs, dropped = config_kwargs(args, output_dir, backend, {f.name for f in dataclasses.fields(config_cls)}, extra)
    if dropped:
        log.debug("training arguments not taken by %s: %s", config_cls.__name__, dropped)
    return kwargs


def training_config(ctx, config_cls, extra: dict[str, Any]):
    """The stage's training arguments, built before the model is loaded.

    Reading ``.device`` sets up the process group now, so that with ZeRO-3 ``from_pretrained``
    creates the weights already sharded over every rank (deepspeed.zero.Init) instead of loading
    the whole model in each process.
    """
    config = config_cls(**training_kwargs(ctx.spec.args, str(ctx.checkpoints), ctx.backend, config_cls, extra))
    config.device  # noqa: B018 - initializes distributed state
    if extra.get("deepspeed"):
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            import deepspeed

            # on CPU accelerate sets up torch.distributed alone; zero.Init reads DeepSpeed's own comm state
            deepspeed.init_distributed(dist_backend=dist.get_backend())
    return config


@contextlib.contextmanager
def completion_only_lm_head(device: str):
    """Let TRL's fused LM head score only the positions that have a label, on CPU too.

    TRL (1.16) projects only labelled positions through the LM head on Triton devices; elsewhere
    it scores every position, prompt and padding included, to keep tile shapes fixed for graph
    compilers. On CPU shapes change from batch to batch anyway, so the compact path gives the same
    log-probs for less work (the prompt's share of the LM head). No-op elsewhere or if TRL changes.
    """
    try:
        from trl.trainer import utils as trl_utils
    except ImportError:  # pragma: no cover
        yield
        return
    original = getattr(trl_utils, "_use_triton", None)
    if device != "cpu" or not callable(original):
        yield
        return
    trl_utils._use_triton = lambda d: d.type == "cpu" or original(d)
    try:
        yield
    finally:
        trl_utils._use_triton = original


def eval_kwargs(args: dict[str, Any]) -> dict[str, Any]:
    """Training arguments for held-out evaluation (do_eval): periodic when eval_steps is set."""
    if not args["do_eval"]:
        return {}
    steps = args["eval_steps"]
    return {"eval_strategy": "steps" if steps else "no", "eval_steps": steps,
            "per_device_eval_batch_size": args["per_device_train_batch_size"]}


def deepspeed_file(ctx) -> str | None:
    """Write the plan's DeepSpeed config next to the checkpoints; the path for the training arguments."""
    import json

    config = ctx.spec.args.get("deepspeed")
    if not config:
        return None
    path = ctx.checkpoints.parent / "ds_config.json"
    path.write_text(json.dumps(config, indent=2))
    return str(path)


def latest_checkpoint(checkpoint_dir: Path) -> str | None:
    """The newest complete checkpoint (one whose trainer state was written), if any."""
    if not checkpoint_dir.is_dir():
        return None
    done = [p for p in checkpoint_dir.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    if not done:
        return None
    return str(max(done, key=lambda p: int(p.name.split("-")[-1])))


def attach_progress(trainer, stage_name: str) -> list[dict[str, Any]]:
    """Replace the trainer's printers with one line per logging step (step, loss, rate, ETA).

    Returns the list the log history is collected into (for the manifest and the summary)."""
    from transformers import PrinterCallback, ProgressCallback, TrainerCallback

    history: list[dict[str, Any]] = []

    class Progress(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.t0, self.step0 = time.time(), state.global_step

        def on_step_end(self, args, state, control, **kwargs):
            if not hasattr(trainer, "_ncr_first_step_s"):  # from process start to the first optimizer step
                from .. import PROCESS_START

                trainer._ncr_first_step_s = round(time.time() - PROCESS_START, 3)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or not state.is_world_process_zero:
                return
            entry = {"step": state.global_step, **{k: v for k, v in logs.items() if isinstance(v, (int, float))}}
            history.append(entry)
            done = state.global_step - self.step0
            rate = done / max(time.time() - self.t0, 1e-9)
            eta = (state.max_steps - state.global_step) / rate if rate > 0 else float("nan")
            keys = ("loss", "rewards/accuracies", "rewards/margins", "learning_rate", "train_loss")
            text = " ".join(f"{k.split('/')[-1]}={entry[k]:.4g}" for k in keys if k in entry)
            pct = 100 * state.global_step / max(state.max_steps, 1)
            log.info("[%s] step %d/%d (%.0f%%) %s | %.2f steps/s, eta %.0fs", stage_name, state.global_step,
                     state.max_steps, pct, text, rate, eta if math.isfinite(eta) else 0)

    for cb in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(cb)
    trainer.add_callback(Progress())
    return history


def train_and_save(ctx, trainer, tokenizer, summarize: tuple[str, ...] = ("loss",)) -> dict[str, Any]:
    """Train (resuming from the newest complete checkpoint), save the result on rank 0, report metrics."""
    name = ctx.spec.name
    history = attach_progress(trainer, name)
    resume = latest_checkpoint(ctx.checkpoints)
    if resume:
        log.info("[%s] resuming from %s", name, resume)
    t0 = time.time()
    result = trainer.train(resume_from_checkpoint=resume)
    train_runtime = time.time() - t0
    trainer.save_model(str(ctx.final))  # every rank: under ZeRO-3 saving gathers the sharded weights; rank 0 writes
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(ctx.final))
    metrics: dict[str, Any] = {}
    if trainer.eval_dataset is not None:
        evaluated = trainer.evaluate()
        metrics.update({k: v for k, v in evaluated.items() if k.startswith("eval_") and isinstance(v, (int, float))})
        if "eval_loss" in metrics:
            metrics["eval_perplexity"] = math.exp(min(metrics["eval_loss"], 50.0))
        log.info("[%s] held-out eval loss %.4g (perplexity %.4g)", name, metrics.get("eval_loss", float("nan")),
                 metrics.get("eval_perplexity", float("nan")))
    metrics.update({
        "train_loss": result.training_loss,
        "steps": trainer.state.global_step,
        "tokens_seen": int(getattr(trainer.state, "num_input_tokens_seen", 0) or 0),
        "samples": len(trainer.train_dataset),
        "resumed_from": resume,
        "train_runtime_s": round(train_runtime, 3),
        "first_step_s": getattr(trainer, "_ncr_first_step_s", None),
    })
    for key in summarize:
        metrics.update(loss_summary(history, key))
    metrics["history"] = history
    return metrics


def loss_summary(history: list[dict[str, Any]], key: str = "loss") -> dict[str, float | None]:
    values = [h[key] for h in history if key in h and isinstance(h[key], (int, float)) and math.isfinite(h[key])]
    return {f"first_{key}": values[0] if values else None, f"last_{key}": values[-1] if values else None}
