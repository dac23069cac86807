"""What every training kind shares at plan time: its resolved settings, their mapping onto the trainer, its rules.

``ResolvedTraining`` is a training stage as it will run: the global batch split over the devices, the
ZeRO stage actually used and its DeepSpeed config, the optimizer this device can run, the device's own
arguments. ``training_arguments`` maps it onto a TrainingArguments-like class, next to the fields it
reads. ``TrainingKind`` gives the kinds that train (sft, dpo ...) their place in the graph and the rules
they share. Running the trainer is train_loop.py.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from pydantic import Field

from ..backends.deepspeed_config import build_ds_config
from ..backends.device import DeviceArgs
from ..config.base import NOT_FINGERPRINTED
from ..config.peft import PeftConfig
from .common import default_system
from .kind import PlanContext, PlanError, Resolved, StageKind

log = logging.getLogger("neuralchat_recipes")

NF = NOT_FINGERPRINTED


class ResolvedTraining(Resolved):
    bf16: bool
    fp16: bool
    global_batch_size: int
    per_device_train_batch_size: int = Field(json_schema_extra=NF)
    gradient_accumulation_steps: int = Field(json_schema_extra=NF)
    learning_rate: float
    lr_scheduler_type: str
    warmup_ratio: float
    warmup_steps: int
    weight_decay: float
    optim: str
    adam_epsilon: float
    max_grad_norm: float
    num_train_epochs: float | None
    max_steps: int | None
    gradient_checkpointing: bool = Field(json_schema_extra=NF)
    seed: int
    save_steps: int = Field(json_schema_extra=NF)
    save_total_limit: int | None = Field(json_schema_extra=NF)
    save_strategy: str = Field(json_schema_extra=NF)
    logging_steps: int = Field(json_schema_extra=NF)
    run_name: str = Field(json_schema_extra=NF)
    per_device_eval_batch_size: int = Field(json_schema_extra=NF)
    eval_strategy: str = Field(json_schema_extra=NF)  # when held-out loss is computed: no (at the end only) | steps
    remove_unused_columns: bool
    lr_schedule: str = Field(json_schema_extra=NF)  # the schedule that runs: the trainer's, or DeepSpeed's scheduler
    template: str
    default_system: str | None  # put in the saved chat template for conversations without a system message
    do_eval: bool
    eval_steps: int | None = Field(json_schema_extra=NF)
    mix_stopping: str  # how a mixture of datasets ends (the stage's `mix`)
    zero_stage: int | None = Field(default=None, json_schema_extra=NF)  # (the deepspeed config says it too)
    deepspeed: dict[str, Any] | None
    report_to: list[str] = Field(json_schema_extra=NF)
    device_args: DeviceArgs = Field(json_schema_extra=NF)
    packed_attention: str = Field(default="auto", json_schema_extra=NF)  # the kernel packed rows attend with
    peft: PeftConfig  # the adapter, target modules resolved from the model entry (the plan shows it as `peft`)

    def fingerprint_payload(self) -> dict[str, Any]:
        data = super().fingerprint_payload()
        if data.get("deepspeed"):  # DeepSpeed's own logging cadence does not change the weights
            data["deepspeed"] = {k: v for k, v in data["deepspeed"].items() if k != "steps_per_print"}
        return data

    def view(self) -> dict[str, Any]:
        data = self.model_dump(mode="json", exclude={"device_args", "peft", "zero_stage"})
        return {**data, **self.device_args.set_values()}

    def training_arguments(self, output_dir: str, fields: set[str], device, extra: dict[str, Any]) -> dict[str, Any]:
        """Keywords for a TrainingArguments-like class with these dataclass ``fields``."""
        kwargs = self.wanted_arguments(output_dir, fields, device, extra)
        dropped = sorted(k for k in kwargs if k not in fields)
        if dropped:  # a setting the installed library does not know: say so rather than train differently
            log.warning("training arguments this trainer does not take, left out: %s", ", ".join(dropped))
        return {k: v for k, v in kwargs.items() if k in fields}

    def wanted_arguments(self, output_dir: str, fields: set[str], device, extra: dict[str, Any]) -> dict[str, Any]:
        """Every keyword the stage asks for (names that differ between library versions picked by ``fields``)."""
        warm: dict[str, Any] = {}
        if self.warmup_steps:
            warm["warmup_steps"] = self.warmup_steps
        elif self.warmup_ratio:  # newer transformers take a ratio through warmup_steps (a float below 1)
            warm["warmup_ratio" if "warmup_ratio" in fields else "warmup_steps"] = self.warmup_ratio
        kwargs: dict[str, Any] = dict(
            output_dir=output_dir,
            learning_rate=self.learning_rate,
            per_device_train_batch_size=self.per_device_train_batch_size,
            gradient_accumulation_steps=self.gradient_accumulation_steps,
            num_train_epochs=self.num_train_epochs or 1,
            max_steps=self.max_steps or -1,
            lr_scheduler_type=self.lr_scheduler_type,
            weight_decay=self.weight_decay,
            optim=self.optim,
            adam_epsilon=self.adam_epsilon,
            max_grad_norm=self.max_grad_norm,
            bf16=self.bf16,
            fp16=self.fp16,
            gradient_checkpointing=self.gradient_checkpointing,
            seed=self.seed,
            data_seed=self.seed,
            save_strategy=self.save_strategy,
            save_steps=self.save_steps,
            save_total_limit=self.save_total_limit,
            logging_steps=self.logging_steps,
            logging_first_step=True,
            run_name=self.run_name,
            eval_strategy=self.eval_strategy,
            per_device_eval_batch_size=self.per_device_eval_batch_size,
            disable_tqdm=True,  # progress comes from our callback: one line per logging step
            report_to=list(self.report_to),  # the run's report.md is written regardless
            dataloader_num_workers=0,
            remove_unused_columns=self.remove_unused_columns,
            **self.eval_arguments(),
            **warm,
            **device.runtime_training_kwargs(self.device_args),
            **extra,
        )
        if kwargs.pop("group_by_length", False):  # transformers 5 renamed it to train_sampling_strategy
            if "train_sampling_strategy" in fields:
                kwargs["train_sampling_strategy"] = "group_by_length"
            else:
                kwargs["group_by_length"] = True
        return kwargs

    def eval_arguments(self) -> dict[str, Any]:
        """Held-out evaluation (do_eval): at the end, and every eval_steps if set."""
        if not self.do_eval:
            return {}
        return {
            "eval_steps": self.eval_steps,
            "eval_on_start": bool(self.eval_steps),  # a "before" point for the held-out curves
        }


def _micro_and_accum(global_batch: int, world: int, micro_max: int) -> tuple[int, int]:
    per_device = global_batch // world
    micro = max(d for d in range(1, min(micro_max, per_device) + 1) if per_device % d == 0)
    return micro, per_device // micro


def _check_quantization(p: PlanContext, zero: int | None) -> None:
    """QLoRA needs bitsandbytes kernels for the device, and weights ZeRO-3 does not shard."""
    quantization = getattr(p.stage.peft, "quantization", None)
    if not quantization:
        return
    where = f"`{p.name}.peft.quantization` = {quantization!r} on hardware {p.hardware.name!r} is not supported because"
    if not p.device.can("quantized_base"):
        raise PlanError(
            [
                f"{where} bitsandbytes has no {p.hardware.device} kernels for a quantized base (cpu and cuda have "
                f"them); set `{p.name}.peft.quantization=null`, or run the stage on a cpu or cuda profile"
            ]
        )
    if zero == 3:
        raise PlanError(
            [
                f"{where} ZeRO-3 would shard the packed 4-/8-bit weights as if they were bf16; use ZeRO-2 "
                f"(`{p.name}.deepspeed.zero_stage=2`): the quantized base is small enough to keep whole"
            ]
        )


def _zero_stage(p: PlanContext) -> int | None:
    """The ZeRO stage actually used: only for multi-device launches that can run DeepSpeed."""
    stage, hw = p.stage, p.hardware
    if stage.deepspeed is None or not stage.deepspeed.zero_stage:
        return None
    zero = stage.deepspeed.zero_stage
    if p.world == 1:
        p.notes.append(f"deepspeed ZeRO-{zero} not used: the stage runs on one device")
        return None
    if not hw.supports_deepspeed:
        p.notes.append(f"deepspeed ZeRO-{zero} not used: {hw.name} runs plain DDP ({hw.launcher}, {hw.ddp_backend})")
        return None
    if stage.deepspeed.scheduler == "warmup_decay" and stage.deepspeed.warmup_type == "cosine":
        p.notes.append(
            "DeepSpeed's WarmupDecayLR knows log and linear warmup; `cosine` (as in ITREX's ds_config) "
            "falls back to log warmup, then decays linearly"
        )
    return zero


def _lr_schedule(stage, deepspeed: dict[str, Any] | None) -> str:
    """The learning-rate schedule that will run: a DeepSpeed config's scheduler replaces the trainer's."""
    scheduler = (deepspeed or {}).get("scheduler")
    if not scheduler:
        return stage.lr_scheduler_type
    params = scheduler.get("params", {})
    warmup = params.get("warmup_type")
    if scheduler.get("type") == "WarmupDecayLR":
        shape = {"cosine": "log (DeepSpeed has no cosine warmup)", None: "log"}.get(warmup, warmup)
        return f"deepspeed WarmupDecayLR: {shape} warmup, then linear decay (replaces {stage.lr_scheduler_type})"
    return f"deepspeed {scheduler.get('type')} (replaces {stage.lr_scheduler_type})"


def _peft(stage, model):
    """The stage's adapter, LoRA targets filled in from the model entry when the peft entry names none."""
    peft = stage.peft
    if peft.method == "lora" and not peft.target_modules and not peft.all_linear:
        return peft.model_copy(update={"target_modules": list(model.lora_target_modules)})
    return peft


def resolve_training(p: PlanContext, template: str, family: str | None = None) -> dict[str, Any]:
    """The fields every ResolvedTraining has, for a kind's resolve to complete with its own; ``family`` is the
    trainer the kind runs, which the device must have."""
    stage, hw = p.stage, p.hardware
    if family and not p.device.has_trainer(family):
        has = sorted(f for f in ("sft", "dpo", "orpo", "cpo", "kto", "reward", "grpo") if p.device.has_trainer(f))
        raise PlanError(
            [
                f"`{p.name}`: a {stage.kind} stage does not run on hardware {hw.name!r}: its device "
                f"({hw.device}) has no {family} trainer (it runs {', '.join(has)}); run this stage with a "
                "cpu, cuda or xpu profile"
            ]
        )
    zero = _zero_stage(p)
    _check_quantization(p, zero)
    micro, accum = _micro_and_accum(stage.global_batch_size, p.world, stage.micro_batch_size)
    if micro != stage.micro_batch_size:
        p.notes.append(
            f"micro batch lowered from {stage.micro_batch_size} to {micro} so that "
            f"{micro} x {accum} x {p.world} = {stage.global_batch_size}"
        )
    deepspeed = None
    if zero:
        deepspeed = (
            stage.deepspeed.user_config()
            if stage.deepspeed.config_file
            else build_ds_config(stage.deepspeed, stage, p.precision)
        )
    return dict(
        precision=p.precision,
        bf16=p.precision == "bf16",
        fp16=p.precision == "fp16",
        global_batch_size=stage.global_batch_size,
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=accum,
        learning_rate=stage.learning_rate,
        lr_scheduler_type=stage.lr_scheduler_type,
        warmup_ratio=stage.warmup_ratio,
        warmup_steps=stage.warmup_steps,
        weight_decay=stage.weight_decay,
        optim=p.device.resolve_optim(stage.optim, p.notes),
        adam_epsilon=stage.adam_epsilon,
        max_grad_norm=stage.max_grad_norm,
        num_train_epochs=stage.num_train_epochs,
        max_steps=stage.max_steps,
        gradient_checkpointing=hw.gradient_checkpointing
        if stage.gradient_checkpointing is None
        else stage.gradient_checkpointing,
        seed=stage.seed,
        save_steps=stage.save_steps,
        save_total_limit=stage.save_total_limit,
        save_strategy=stage.save_strategy,
        logging_steps=stage.logging_steps,
        run_name=stage.run_name or p.name,
        per_device_eval_batch_size=stage.per_device_eval_batch_size or micro,
        eval_strategy="steps" if stage.do_eval and stage.eval_steps else "no",
        remove_unused_columns=stage.remove_unused_columns,
        lr_schedule=_lr_schedule(stage, deepspeed),
        template=template,
        default_system=default_system(p.recipe, p.name),
        do_eval=stage.do_eval,
        eval_steps=stage.eval_steps,
        mix_stopping=stage.mix_stopping,
        zero_stage=zero,
        deepspeed=deepspeed,
        report_to=list(p.recipe.report_to),
        device_args=p.device.training_args(stage, p.world > 1),
        packed_attention=hw.packed_attention,
        peft=_peft(stage, p.recipe.model),
    )


# what a kind's data must hold, and an entry that does
DATA_USES = {
    "sft": ("a supervised dataset", "slimorca"),
    "preference": ("a preference dataset (prompt, chosen, rejected)", "orca_dpo_pairs"),
    "unpaired": ("unpaired examples (prompt, completion, label): a kto-format dataset", "kto_mix"),
    "code": ("HumanEval-format problems", "humaneval"),
}


class TrainingKind(StageKind):
    """A kind that trains on a dataset (optionally an adapter) and produces a model or an adapter."""

    distributed = True
    data_use: ClassVar[str] = "sft"  # the rows it reads: sft | preference | unpaired | code (DATA_USES)
    trainer_family: ClassVar[str | None] = None  # the trainer it runs (Device.trainers), checked at plan time
    supports_seq2seq: ClassVar[bool] = True
    quantizes_base: ClassVar[bool] = True  # LoRA may train on a 4-/8-bit base (QLoRA: train_loop.training_model)
    packs_virtual_tokens: ClassVar[bool] = False

    def produces(self, stage) -> str | None:
        return "model" if stage.peft.method == "none" else "adapter"

    sequences_per_sample: ClassVar[int] = 1  # DPO and its relatives score a chosen and a rejected answer

    def memory_workload(self, p: PlanContext, resolved):
        from ..memory import ALL_LINEAR, Workload

        sequence = getattr(resolved, "max_seq_length", None) or getattr(resolved, "max_length", None) or 512
        peft = resolved.peft
        deepspeed = p.stage.deepspeed
        return Workload(
            kind="train",
            precision=resolved.precision,
            device=p.hardware.device,
            world=p.world,
            micro_batch=resolved.per_device_train_batch_size,
            sequence=sequence,
            sequences_per_sample=self.sequences_per_sample,
            peft=peft.method,
            lora_rank=getattr(peft, "r", 8),
            lora_targets=ALL_LINEAR
            if getattr(peft, "all_linear", False)
            else tuple(getattr(peft, "target_modules", None) or ()),
            quantization=getattr(peft, "quantization", None),
            optim=resolved.optim,
            zero_stage=resolved.zero_stage,
            offload_optimizer=bool(resolved.zero_stage and deepspeed and deepspeed.offload_optimizer),
            offload_param=bool(resolved.zero_stage and deepspeed and deepspeed.offload_param),
            gradient_checkpointing=resolved.gradient_checkpointing,
            swiglu_recompute=p.device.can("swiglu_recompute"),
            reference=self.reference_mode(resolved),
            retain_freed_memory=p.hardware.device == "cpu" and p.hardware.retain_freed_memory,
        )

    def reference_mode(self, resolved) -> str | None:
        """How a kind with a reference model holds it: copy | adapter_disabled | precomputed (None: it has none)."""
        return None

    def use_of(self, stage) -> str:
        """What the stage's rows are read as (DATA_USES)."""
        return self.data_use

    def datasets(self, stage):
        return [(key, dataset, self.use_of(stage)) for key, dataset in stage.all_datasets]

    def rules(self, recipe, name: str, stage) -> list[str]:
        problems = []
        if self.name != "sft":  # only SFT tokenizes per dataset and reads streams; the others read lists of rows
            for key, dataset in stage.all_datasets:
                if dataset.template:
                    problems.append(
                        f"`{name}.{key}.template`: only an SFT stage renders each dataset with its own template; "
                        f"set `{name}.template` instead"
                    )
                if dataset.streaming:
                    problems.append(
                        f"`{name}.{key}.streaming`: only an SFT stage streams its data; a {self.name} stage reads "
                        f"its rows whole (set `{name}.{key}.streaming=false`, with `max_samples` to bound them)"
                    )
        model = recipe.model
        if model.architecture == "seq2seq" and not self.supports_seq2seq:
            problems.append(
                f"`{name}`: a {self.name} stage is not supported for the seq2seq model {model.name!r}; "
                "seq2seq models run sft, merge, eval and generate"
            )
        quantization = getattr(stage.peft, "quantization", None)
        if quantization and (model.architecture != "causal" or not self.quantizes_base):
            what = f"a {self.name} stage" if not self.quantizes_base else f"the {model.architecture} model"
            problems.append(
                f"`{name}.peft.quantization` = {quantization!r} is not supported for {what} {model.name!r} "
                "because only causal language models load a quantized base here; set it to null"
            )
        method = stage.peft.method
        if method not in model.supported_peft:
            problems.append(
                f"`{name}.peft.method` = {method!r}: not supported for model {model.name!r}; "
                f"supported: {', '.join(model.supported_peft)}"
            )
        for key, dataset, use in self.datasets(stage):
            if use not in dataset.uses:
                what, example = DATA_USES[use]
                split = use == "unpaired" and "preference" in dataset.uses
                problems.append(
                    f"`{name}.{key}` = {dataset.name!r}: a {self.name} stage needs {what}, but format "
                    f"{dataset.format!r} is not one; pick e.g. dataset@{name}.{key}={example}"
                    + (
                        f", or set `{name}.from_pairs=true` to split each pair into a desirable and an undesirable "
                        "example"
                        if split
                        else ""
                    )
                )
        hardware = recipe.hardware_for(name)
        world = hardware.world_size
        if stage.global_batch_size % world:
            problems.append(
                f"`{name}.global_batch_size` = {stage.global_batch_size}: not divisible by hardware "
                f"{hardware.name!r}'s world size {world}; use a multiple of {world}"
            )
        return problems
