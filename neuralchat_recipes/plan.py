"""Turn a validated RecipeConfig into a Plan: ordered stages with fingerprints, args and launch.

Pure and fast: no torch, no transformers. A stage's fingerprint hashes what decides its
output (its own settings minus logging/checkpoint cadence, the base model identity, the bytes
of local data files, the resolved precision, the upstream fingerprints and the engine's
fingerprint version), so two runs or two sweep jobs that agree on a stage share its artifact,
and a change to one stage re-runs that stage and what follows, nothing before it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from . import ENGINE_FINGERPRINT_VERSION
from .backends import get_backend
from .backends.deepspeed_config import build_ds_config
from .config import ConfigError, RecipeConfig
from .config.recipe import produces
from .config.stage import TRAIN_KINDS
from .data.paths import resolve_data_path
from .model_sources import ModelSourceError, eos_warning, model_facts


class PlanError(ConfigError):
    """The config is valid but cannot run as asked (e.g. does not fit the hardware)."""


@dataclass(frozen=True)
class StageSpec:
    name: str
    kind: str
    inputs: list[dict[str, Any]]
    fingerprint: str
    output_dir: str
    staging_dir: str
    model: dict[str, Any]
    dataset: dict[str, Any] | None
    peft: dict[str, Any] | None
    args: dict[str, Any]
    launch: dict[str, Any]
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Plan:
    recipe: str
    hardware: str
    world_size: int
    output_root: str
    stages: list[StageSpec]
    warnings: list[str] = field(default_factory=list)

    def stage(self, name: str) -> StageSpec:
        for spec in self.stages:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def _hash(payload: Any) -> str:
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def file_sha256(path: Path) -> str:
    stat = path.stat()
    return _sha256_of(str(path), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=64)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:
    """Content hash, computed once per (path, size, mtime) in a process (a sweep plans many jobs)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fingerprinted_dump(model) -> dict[str, Any]:
    """model_dump(mode=json) without `input` and the fields marked as not affecting the output."""
    data = model.model_dump(mode="json")
    data.pop("input", None)

    def strip(obj, dumped: dict[str, Any]) -> None:
        for name, info in type(obj).model_fields.items():
            extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
            if extra.get("fingerprint") is False:
                dumped.pop(name, None)
            elif hasattr(type(getattr(obj, name)), "model_fields") and isinstance(dumped.get(name), dict):
                strip(getattr(obj, name), dumped[name])

    strip(model, data)
    return data


def _dataset_identity(name: str, dataset) -> tuple[dict[str, Any], dict[str, Any]]:
    """(what goes into the plan, what goes into the fingerprint)."""
    info = dataset.model_dump(mode="json")
    if dataset.path:
        path = resolve_data_path(dataset.path)
        if not path.is_file():
            raise PlanError(
                [f"`{name}.path` = {dataset.path!r}: file not found (looked at {path}); "
                 f"point it at the data file, e.g. `{name}.path=/data/alpaca_data.json`"]
            )
        info["resolved_path"] = str(path)
        info["sha256"] = file_sha256(path)
    return info, data_identity(info)


def data_identity(info: dict[str, Any]) -> dict[str, Any]:
    """What decides a dataset entry's rows (from its plan info): every setting that shapes them;
    a local file by its bytes (sha256) rather than its name or place."""
    drop = ("name", "path", "resolved_path") if "sha256" in info else ("name",)
    return {k: v for k, v in info.items() if k not in drop}


def _directory_identity(key: str, directory: str) -> str:
    """Hash of every file under a directory (lm-eval task definitions and their data)."""
    root = Path(directory).expanduser().resolve()
    if not root.is_dir():
        raise PlanError([f"`{key}` = {directory!r}: not a directory (looked at {root})"])
    return _hash({str(p.relative_to(root)): file_sha256(p) for p in sorted(root.rglob("*")) if p.is_file()})


def _model_identity(model, facts: dict[str, Any] | None) -> dict[str, Any]:
    keep = ("path", "revision", "architecture", "tokenizer", "use_fast_tokenizer", "torch_dtype", "pad_token")
    identity = {k: getattr(model, k) for k in keep}
    if facts and "sha256" in facts:  # a GGUF file: its bytes, not its name or place
        identity.pop("path")
        identity["gguf_sha256"] = facts["sha256"]
    return identity


def _base_model_facts(recipe: RecipeConfig) -> dict[str, Any] | None:
    """What the base model's local files say (GGUF or directory); None for hub ids and builtin models."""
    model = recipe.model
    try:
        return model_facts(model.path, model.package)
    except ModelSourceError as exc:
        raise PlanError([f"`model.path` = {model.path!r}: {exc}"]) from None


def params_billion(model, facts: dict[str, Any] | None) -> float | None:
    """The entry's parameter count, else the one counted in the local weights."""
    if model.params_billion:
        return model.params_billion
    return round(facts["parameters"] / 1e9, 4) if facts and facts.get("parameters") else None


def _micro_and_accum(global_batch: int, world: int, micro_max: int) -> tuple[int, int]:
    per_device = global_batch // world
    micro = max(d for d in range(1, min(micro_max, per_device) + 1) if per_device % d == 0)
    return micro, per_device // micro


def _host_memory_gb() -> float | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return None


def _check_fits(recipe: RecipeConfig, name: str, stage, precision: str, zero_stage: int | None, world: int,
                params: float | None) -> None:
    """Refuse plans whose weights cannot fit the profile's memory (rough, weights + optimizer only)."""
    hw = recipe.hardware
    memory = hw.memory_gb or _host_memory_gb()
    if not params or not memory:
        return
    weight_bytes = 4 if precision == "fp32" else 2
    full = stage.kind in TRAIN_KINDS and stage.peft.method == "none"
    if full:
        # weights + grads + fp32 master + Adam moments (mixed precision: ~16 bytes/param)
        states = 16
        if zero_stage == 3:
            need = params * states / world
        elif zero_stage in (1, 2):
            need = params * (weight_bytes + (states - weight_bytes) / world)
        else:
            need = params * states
    else:
        need = params * weight_bytes / (world if zero_stage == 3 else 1)
    if need > memory * 0.9:
        how = (
            "use a profile with more devices and ZeRO-3 (e.g. hardware=gaudi2_8x), or a smaller model"
            if zero_stage != 3 or world == 1
            else "use more devices or a smaller model"
        )
        raise PlanError(
            [f"`{name}` on hardware {hw.name!r} is not supported because model {recipe.model.name!r} "
             f"({params:g}B parameters, {precision}) needs about {need:.0f} GB per device "
             f"{'(ZeRO-3 over ' + str(world) + ' devices) ' if zero_stage == 3 and world > 1 else ''}"
             f"and a device has {memory:.0f} GB; {how}"]
        )


def _base_input(recipe: RecipeConfig) -> dict[str, Any]:
    entry = {"stage": None, "model": recipe.model.path, "revision": recipe.model.revision}
    if recipe.model.package:
        entry["package"] = recipe.model.package
    return entry


def _stage_input(spec: StageSpec) -> dict[str, Any]:
    return {"stage": spec.name, "fingerprint": spec.fingerprint, "output_dir": spec.output_dir}


def _inputs(recipe: RecipeConfig, stage, upstream: str | None, by_name: dict[str, StageSpec]) -> list[dict[str, Any]]:
    """inputs[0] is what the stage consumes; a merge adds the base its adapter was trained on,
    an evaluation adds the models it compares against."""
    inputs = [_stage_input(by_name[upstream]) if upstream else _base_input(recipe)]
    if stage.kind == "merge" and upstream:
        inputs.append(by_name[upstream].inputs[0])
    elif stage.kind in ("eval", "generate") and upstream and produces(recipe.stages[upstream]) == "adapter":
        inputs[0]["adapter_base"] = by_name[upstream].inputs[0]  # evaluated as base + adapter
    for other in getattr(stage, "compare", []):
        inputs.append(_base_input(recipe) if other == "base" else _stage_input(by_name[other]))
    if stage.kind == "export":  # the model card describes every earlier stage: their results are inputs too
        inputs += [{**_stage_input(spec), "described": True} for spec in by_name.values()]
    return inputs


def _zero_stage(stage, hw, distributed: bool, notes: list[str]) -> int | None:
    """The ZeRO stage actually used: only for multi-device launches that can run DeepSpeed."""
    if stage.deepspeed is None or not stage.deepspeed.zero_stage:
        return None
    zero = stage.deepspeed.zero_stage
    if not distributed:
        notes.append(f"deepspeed ZeRO-{zero} not used: the stage runs on one device")
        return None
    if not hw.supports_deepspeed:
        notes.append(f"deepspeed ZeRO-{zero} not used: {hw.name} runs plain DDP ({hw.launcher}, {hw.ddp_backend})")
        return None
    if stage.deepspeed.scheduler == "warmup_decay" and stage.deepspeed.warmup_type == "cosine":
        notes.append("DeepSpeed's WarmupDecayLR knows log and linear warmup; `cosine` (as in ITREX's ds_config) "
                     "falls back to log warmup, then decays linearly")
    return zero


def _training_args(stage, hw, backend, precision: str, world: int, zero_stage: int | None, notes: list[str]) -> dict[str, Any]:
    micro, accum = _micro_and_accum(stage.global_batch_size, world, stage.micro_batch_size)
    if micro != stage.micro_batch_size:
        notes.append(f"micro batch lowered from {stage.micro_batch_size} to {micro} so that "
                     f"{micro} x {accum} x {world} = {stage.global_batch_size}")
    args: dict[str, Any] = dict(
        global_batch_size=stage.global_batch_size,
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=accum,
        learning_rate=stage.learning_rate,
        lr_scheduler_type=stage.lr_scheduler_type,
        warmup_ratio=stage.warmup_ratio,
        warmup_steps=stage.warmup_steps,
        weight_decay=stage.weight_decay,
        optim=backend.resolve_optim(stage.optim, notes),
        adam_epsilon=stage.adam_epsilon,
        max_grad_norm=stage.max_grad_norm,
        num_train_epochs=stage.num_train_epochs,
        max_steps=stage.max_steps,
        gradient_checkpointing=hw.gradient_checkpointing if stage.gradient_checkpointing is None else stage.gradient_checkpointing,
        seed=stage.seed,
        save_steps=stage.save_steps,
        save_total_limit=stage.save_total_limit,
        logging_steps=stage.logging_steps,
        template=stage.resolved_template,
        do_eval=stage.do_eval,
        eval_steps=stage.eval_steps,
        deepspeed=(None if not zero_stage else stage.deepspeed.user_config() if stage.deepspeed.config_file
                   else build_ds_config(stage.deepspeed, stage, precision)),
    )
    if stage.kind == "sft":
        args.update(task=stage.task, default_eval=stage.default_eval, max_seq_length=stage.max_seq_length,
                    max_prompt_length=stage.max_prompt_length, packing=stage.packing, loss_on=stage.loss_on,
                    group_by_length=stage.group_by_length,
                    pad_to_max=hw.static_shapes if stage.pad_to_max is None else stage.pad_to_max)
    else:
        args.update(
            beta=stage.beta,
            loss_type=stage.loss_type,
            label_smoothing=stage.label_smoothing,
            max_length=stage.max_length,
            max_prompt_length=stage.max_prompt_length,
            pad_to_max=hw.static_shapes if stage.pad_to_max is None else stage.pad_to_max,
            group_by_length=not hw.static_shapes if stage.group_by_length is None else stage.group_by_length,
            precompute_ref_log_probs=(backend.device != "hpu" and not zero_stage if stage.precompute_ref_log_probs is None
                                      else stage.precompute_ref_log_probs),
        )
        args["reference_model"] = ("policy with adapter disabled" if stage.peft.method != "none" else
                                   "input model, scored before training"
                                   if args["precompute_ref_log_probs"] else "frozen copy of the input model")
    args.update(backend.training_extras(stage, bool(zero_stage)))
    return args


def _peft_info(stage, model) -> dict[str, Any]:
    info = stage.peft.model_dump(mode="json")
    if info["method"] == "lora" and not info["target_modules"]:
        info["target_modules"] = "all-linear" if info["all_linear"] else list(model.lora_target_modules)
    return info


def build_plan(recipe: RecipeConfig) -> Plan:
    hw = recipe.hardware
    backend = get_backend(hw)
    precision = backend.precision()
    root = Path(recipe.output_root).expanduser().resolve()
    specs: list[StageSpec] = []
    by_name: dict[str, StageSpec] = {}
    problems: list[str] = []
    facts = _base_model_facts(recipe)
    params = params_billion(recipe.model, facts)
    model_info = {**recipe.model.model_dump(mode="json"), "params_billion": params}
    warnings = [w for w in (eos_warning(recipe.model.name, facts),) if w]
    for name in recipe.pipeline:
        stage = recipe.stages[name]
        notes: list[str] = []
        upstream = recipe.upstream_of(name)
        if upstream and upstream not in by_name:
            continue  # the upstream stage already failed; its problem is reported
        inputs = _inputs(recipe, stage, upstream, by_name)
        fp_payload: dict[str, Any] = {
            "engine": ENGINE_FINGERPRINT_VERSION,
            "kind": stage.kind,
            "stage": _fingerprinted_dump(stage),
            "model": _model_identity(recipe.model, facts),
            "upstream": [i.get("fingerprint") for i in inputs],
            "precision": precision,
        }
        dataset_info = None
        try:
            for field_name in ("dataset", "preference_dataset"):
                dataset = getattr(stage, field_name, None)
                if dataset is not None:
                    info, fp_payload[f"data:{field_name}"] = _dataset_identity(f"{name}.{field_name}", dataset)
                    dataset_info = info if field_name == "dataset" else {**(dataset_info or {}), "preference": info}
            if getattr(stage, "include_path", None):
                fp_payload["tasks"] = _directory_identity(f"{name}.include_path", stage.include_path)
        except PlanError as exc:
            problems += exc.problems
            continue

        distributed = stage.kind in TRAIN_KINDS and hw.world_size > 1
        world = hw.world_size if distributed else 1
        args: dict[str, Any] = {"precision": precision, "bf16": precision == "bf16", "fp16": precision == "fp16"}
        zero_stage, peft_info = None, None
        if stage.kind in TRAIN_KINDS:
            zero_stage = _zero_stage(stage, hw, distributed, notes)
            try:
                _check_fits(recipe, name, stage, precision, zero_stage, world, params)
            except PlanError as exc:
                problems += exc.problems
                continue
            args.update(_training_args(stage, hw, backend, precision, world, zero_stage, notes))
            args["report_to"] = list(recipe.report_to)
            if args["deepspeed"] and stage.deepspeed.config_file:
                fp_payload["deepspeed_file"] = args["deepspeed"]  # the user's JSON by content, not by path
            peft_info = _peft_info(stage, recipe.model)
        else:
            args.update({k: v for k, v in stage.model_dump(mode="json").items()
                         if k not in ("kind", "input", "dataset", "preference_dataset")})
            if stage.kind in ("eval", "generate"):
                args["template"] = recipe.template_for(name)
            if stage.kind == "export" and args["tokenizer_pre"] is None:
                args["tokenizer_pre"] = (facts or {}).get("tokenizer_pre") or "default"
            if stage.kind == "eval":
                harness, tasks, sft = recipe.resolve_eval(name)
                args.update(harness=harness, tasks=tasks)
                if harness == "rouge" and stage.dataset is None:
                    # the SFT stage's held-out rows (its fingerprint, an upstream one, covers the data)
                    args["held_out_of"] = sft
                    args["held_out_dataset"] = recipe.stages[sft].dataset.model_dump(mode="json")
            if getattr(stage, "prompts_file", None):
                path = resolve_data_path(stage.prompts_file)
                if not path.is_file():
                    problems.append(f"`{name}.prompts_file` = {stage.prompts_file!r}: file not found (looked at {path})")
                    continue
                args["prompts_file"] = str(path)
                fp_payload["prompts_file"] = file_sha256(path)

        fingerprint = _hash(fp_payload)
        artifact_id = f"{stage.kind}-{fingerprint[:16]}"
        staging_dir = root / "staging" / artifact_id
        env = backend.env(stage, zero_stage, recipe.model)
        spec = StageSpec(
            name=name,
            kind=stage.kind,
            inputs=inputs,
            fingerprint=fingerprint,
            output_dir=str(root / "artifacts" / artifact_id),
            staging_dir=str(staging_dir),
            model={**model_info, "source": inputs[0].get("output_dir") or recipe.model.path},
            dataset=dataset_info,
            peft=peft_info,
            args=args,
            launch=backend.launch(name, str(staging_dir / "recipe.json"), zero_stage, distributed, env),
            notes=notes,
        )
        specs.append(spec)
        by_name[name] = spec
    if problems:
        raise PlanError(problems)
    return Plan(recipe=recipe.name, hardware=hw.name, world_size=hw.world_size, output_root=str(root), stages=specs,
                warnings=warnings)
