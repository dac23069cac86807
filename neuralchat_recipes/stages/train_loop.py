"""Running a training stage's trainer: its arguments before the model, resume, progress lines, saving, metrics.

Every training kind's ``run`` builds its trainer and hands it to ``train_and_save``; the helpers here are
what those runs share (nothing here depends on a kind).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any

from ..data.packed_attention import kernels_used, reset_kernels_used
from .common import SettingError, StageError, load_model

log = logging.getLogger("neuralchat_recipes")


def check_adapter_fits(ctx, model) -> None:
    """Adapter settings that depend on the model's shape, checked with a message naming the key."""
    peft = ctx.stage.peft
    layers = getattr(model.config, "num_hidden_layers", None)
    if peft.method == "llama_adapter" and layers is not None and peft.adapter_layers > layers:
        raise SettingError(
            f"`{ctx.name}.peft.adapter_layers` = {peft.adapter_layers}: the model has only {layers} "
            f"layers; set `{ctx.name}.peft.adapter_layers={layers}` or fewer"
        )
    resolved = getattr(ctx.args, "peft", None)
    if resolved is not None and resolved.method == "lora" and resolved.target_modules and not resolved.all_linear:
        check_lora_targets(model, resolved.target_modules, ctx.name, from_model_entry=not peft.target_modules)


def check_lora_targets(model, targets: list[str], name: str, from_model_entry: bool) -> None:
    """LoRA targets match module names as PEFT matches them (the whole name, or its last dotted parts). None
    matching is an error naming the model's linear layers; some not matching (a seed's list written for several
    architectures) is logged."""
    import torch

    names = [n for n, _ in model.named_modules() if n]
    linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
    unmatched = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if not unmatched:
        return
    key = "model.lora_target_modules" if from_model_entry else f"{name}.peft.target_modules"
    if len(unmatched) == len(targets):
        raise SettingError(
            f"`{key}` = {targets}: no module of {type(model).__name__} has these names; its linear layers are "
            f"named {', '.join(linear)} (e.g. `{key}=[{','.join(linear[:2])}]`, or `{name}.peft.all_linear=true`)"
        )
    log.info("[%s] LoRA targets not in %s, skipped: %s", name, type(model).__name__, ", ".join(unmatched))


def training_model(ctx, source: str):
    """The model a training stage starts from, ready to wrap: loaded in the stage's precision (its base 4- or
    8-bit for QLoRA, then made trainable in k-bit: norms in fp32, inputs that keep gradients for checkpointing)."""
    args = ctx.args
    quantization = getattr(args.peft, "quantization", None)
    model = load_model(ctx.model, source, args.precision, quantization=quantization)
    if quantization:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=args.gradient_checkpointing)
    ready_to_train(ctx, model)
    return model


def ready_to_train(ctx, model) -> None:
    """A freshly loaded model, before a training stage wraps it: shape checks, then the memory saver for
    SwiGLU MLPs (same results; where the device allows it)."""
    check_adapter_fits(ctx, model)
    if ctx.device.can("swiglu_recompute"):
        from .activations import recompute_swiglu

        if n := recompute_swiglu(model):
            log.info(
                "[%s] %d MLPs keep gate and up projections only for the backward (activation recomputed)", ctx.name, n
            )


def deepspeed_file(ctx) -> str | None:
    """Write the plan's DeepSpeed config next to the checkpoints; the path for the training arguments."""
    import json

    if not ctx.args.deepspeed:
        return None
    path = ctx.checkpoints.parent / "ds_config.json"
    path.write_text(json.dumps(ctx.args.deepspeed, indent=2))
    return str(path)


def training_config(ctx, config_cls, extra: dict[str, Any]):
    """The stage's training arguments, built before the model is loaded.

    Reading ``.device`` sets up the process group now, so that with ZeRO-3 ``from_pretrained`` creates
    the weights already sharded over every rank (deepspeed.zero.Init) instead of loading the whole model
    in each process.
    """
    fields = {f.name for f in dataclasses.fields(config_cls)}
    config = config_cls(
        **ctx.args.training_arguments(
            str(ctx.checkpoints), fields, ctx.device, {"deepspeed": deepspeed_file(ctx), **extra}
        )
    )
    config.device  # noqa: B018 - initializes distributed state
    if ctx.args.deepspeed:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            import deepspeed

            # on CPU accelerate sets up torch.distributed alone; zero.Init reads DeepSpeed's own comm state
            deepspeed.init_distributed(dist_backend=dist.get_backend())
    return config


@contextlib.contextmanager
def completion_only_lm_head(device):
    """Let TRL's fused LM head score only the positions that have a label, where the device allows it.

    TRL (1.16) projects only labelled positions through the LM head on Triton devices; elsewhere it
    scores every position, prompt and padding included, to keep tile shapes fixed for graph compilers.
    Where shapes change from batch to batch anyway (a CPU), the compact path gives the same log-probs for
    less work (the prompt's share of the LM head). No-op elsewhere or if TRL changes.
    """
    try:
        from trl.trainer import utils as trl_utils
    except ImportError:  # pragma: no cover
        yield
        return
    original = getattr(trl_utils, "_use_triton", None)
    if not device.can("compact_lm_head") or not callable(original):
        yield
        return
    trl_utils._use_triton = lambda d: d.type == "cpu" or original(d)
    try:
        yield
    finally:
        trl_utils._use_triton = original


def latest_checkpoint(checkpoint_dir: Path) -> str | None:
    """The newest complete checkpoint (one whose trainer state was written), if any."""
    if not checkpoint_dir.is_dir():
        return None
    done = [p for p in checkpoint_dir.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    if not done:
        return None
    return str(max(done, key=lambda p: int(p.name.split("-")[-1])))


def logged_before(checkpoint: str) -> list[dict[str, Any]]:
    """The log history a checkpoint saved (what the runs before the resume logged), as attach_progress records it."""
    import json

    try:
        state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return []
    return [
        {"step": h.get("step"), **{k: v for k, v in h.items() if isinstance(v, (int, float)) and k != "step"}}
        for h in state.get("log_history", [])
        if isinstance(h, dict)
    ]


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
            log.info(
                "[%s] step %d/%d (%.0f%%) %s | %.2f steps/s, eta %.0fs",
                stage_name,
                state.global_step,
                state.max_steps,
                pct,
                text,
                rate,
                eta if math.isfinite(eta) else 0,
            )

    for cb in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(cb)
    trainer.add_callback(Progress())
    return history


class Diverged(StageError):
    """The loss or the gradient norm stopped being a finite number: what the stage would publish is garbage."""


def guard_finite(trainer, ctx) -> None:
    """Stop the stage at the first micro-batch whose loss, or the first step whose gradient norm, is inf or nan.

    The Trainer on its own logs the mean of earlier losses in place of a nan one (``logging_nan_inf_filter``)
    and steps on: a diverged stage "finished" with an adapter of NaNs. Checked where the Trainer already reads
    the value, so no extra device synchronisation: each micro-batch's loss, and the gradient norm the Trainer
    computes for clipping (before the optimizer step, so the weights it would corrupt are never updated).
    With fp16 an inf gradient norm is the loss scaler's normal signal to skip a step, and is left to it."""
    state = {"last": None}  # (step, loss) of the last finite micro-batch loss
    name, args = ctx.name, ctx.args

    def fail(what: str, value: float) -> None:
        step = trainer.state.global_step + 1
        last = state["last"]
        before = f" (last finite loss {last[1]:.4g}, at step {last[0]})" if last else ""
        if step == 1 and last is None:
            likely = (
                "it is so before any update: check the model's weights and precision "
                f"(`hardware.precision`, now {args.precision})"
            )
        else:
            likely = f"lower `{name}.learning_rate` (now {args.learning_rate:g})"
            if not args.max_grad_norm:
                likely += f" or clip gradients (`{name}.max_grad_norm=1.0`)"
            if args.precision == "fp16":
                likely += " or train in bf16 or fp32 (`hardware.precision`)"
        raise Diverged(
            f"`{name}`: training diverged at step {step}: the {what} became {value}{before}. Nothing was "
            f"published; the checkpoints before step {step} are kept under {ctx.checkpoints}. Likely fix: {likely}"
        )

    training_step = trainer.training_step

    def checked_training_step(*a, **kw):
        loss = training_step(*a, **kw)
        value = float(loss.detach().float().mean())
        if not math.isfinite(value):
            fail("loss", value)
        state["last"] = (trainer.state.global_step + 1, value)
        return loss

    trainer.training_step = checked_training_step
    trainer.args.logging_nan_inf_filter = False  # a nan is reported, not averaged away
    grad_norm_of = getattr(trainer, "_get_grad_norm", None)  # transformers >= 5: the norm of every step
    if callable(grad_norm_of) and not args.fp16:

        def checked_grad_norm(*a, **kw):
            norm = grad_norm_of(*a, **kw)
            if norm is not None and not math.isfinite(float(norm)):
                fail("gradient norm", float(norm))
            return norm

        trainer._get_grad_norm = checked_grad_norm


def train_and_save(ctx, trainer, tokenizer, summarize: tuple[str, ...] = ("loss",)) -> dict[str, Any]:
    """Train (resuming from the newest complete checkpoint), save the result on rank 0, report metrics."""
    name = ctx.name
    if ctx.device.can("lora_dropout_16bit_draws"):
        from .lora_dropout import speed_up_lora_dropout

        if n := speed_up_lora_dropout(trainer.model):
            log.info("[%s] %d LoRA dropouts draw their masks 16 bits at a time", name, n)
    history = attach_progress(trainer, name)
    guard_finite(trainer, ctx)
    resume = latest_checkpoint(ctx.checkpoints)
    if resume:
        log.info("[%s] resuming from %s", name, resume)
        history[:0] = logged_before(resume)  # the stage's curve spans every run that trained it
    reset_kernels_used()
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
        log.info(
            "[%s] held-out eval loss %.4g (perplexity %.4g)",
            name,
            metrics.get("eval_loss", float("nan")),
            metrics.get("eval_perplexity", float("nan")),
        )
    metrics.update(
        {
            "train_loss": result.training_loss,
            "steps": trainer.state.global_step,
            "tokens_seen": int(getattr(trainer.state, "num_input_tokens_seen", 0) or 0),
            "samples": len(trainer.train_dataset) if hasattr(trainer.train_dataset, "__len__") else None,  # (a stream)
            "resumed_from": resume,
            "train_runtime_s": round(train_runtime, 3),
            "first_step_s": getattr(trainer, "_ncr_first_step_s", None),
        }
    )
    for key in summarize:
        metrics.update(loss_summary(history, key))
    if kernels := kernels_used():  # packed or padding-free batches: what kept their samples apart in attention
        metrics["attention_kernels"] = kernels
    metrics["history"] = history
    return metrics


def loss_summary(history: list[dict[str, Any]], key: str = "loss") -> dict[str, float | None]:
    values = [h[key] for h in history if key in h and isinstance(h[key], (int, float)) and math.isfinite(h[key])]
    return {f"first_{key}": values[0] if values else None, f"last_{key}": values[-1] if values else None}
