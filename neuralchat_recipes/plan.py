"""Turn a validated RecipeConfig into a Plan: ordered stages with fingerprints, resolved settings and launch.

Pure and fast: no torch, no transformers. Nothing here knows a stage kind: the graph gives each stage its
inputs, its kind gives its datasets and its resolved settings (stages/kind.py). A stage's fingerprint
hashes what decides its output: its resolved settings (minus logging and checkpoint cadence), the base
model's identity, the rows of its datasets (a local file by its bytes), the upstream fingerprints and the
engine's fingerprint version, so two runs or two sweep jobs that agree on a stage share its artifact, and a
change to one stage re-runs that stage and what follows, nothing before it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from . import ENGINE_FINGERPRINT_VERSION, fit, graph
from .backends import get_device, launch_spec
from .data.paths import resolve_data_path
from .graph import StageInput
from .model_sources import ModelSourceError, eos_warning, model_facts
from .recipe import RecipeConfig
from .stages import KINDS, PlanContext, PlanError, Resolved

__all__ = ["Plan", "PlanError", "StageSpec", "build_plan", "data_identity", "file_sha256"]


@dataclass(frozen=True)
class StageSpec:
    name: str
    kind: str
    inputs: list[StageInput]
    fingerprint: str
    output_dir: str
    staging_dir: str
    model: dict[str, Any]  # the base model entry, with the `source` this stage loads from
    datasets: dict[str, dict[str, Any]]  # by the stage's key (dataset, preference_dataset): settings, file, sha256
    args: Resolved  # the kind's resolved settings
    launch: dict[str, Any]
    hardware: dict[str, Any] = field(default_factory=dict)  # the profile this stage runs on, and what it overrides
    notes: list[str] = field(default_factory=list)
    memory: dict[str, Any] | None = None  # the estimated peak per device (fit.StageFit.view); None: not known

    @property
    def peft(self) -> dict[str, Any] | None:
        peft = getattr(self.args, "peft", None)
        return peft.model_dump(mode="json") if peft is not None else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "inputs": [i.to_dict() for i in self.inputs],
            "fingerprint": self.fingerprint,
            "output_dir": self.output_dir,
            "staging_dir": self.staging_dir,
            "model": self.model,
            "datasets": self.datasets,
            "peft": self.peft,
            "args": self.args.view(),
            "hardware": self.hardware,
            "launch": self.launch,
            "notes": self.notes,
            "memory": self.memory,
        }


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
        return {
            "recipe": self.recipe,
            "hardware": self.hardware,
            "world_size": self.world_size,
            "output_root": self.output_root,
            "stages": [s.to_dict() for s in self.stages],
            "warnings": self.warnings,
        }

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


def _dataset_info(key: str, dataset) -> dict[str, Any]:
    """What the plan shows of a dataset: its settings, and a local file's resolved path and bytes."""
    info = dataset.model_dump(mode="json")
    if dataset.path:
        path = resolve_data_path(dataset.path)
        if not path.is_file():
            raise PlanError(
                [
                    f"`{key}.path` = {dataset.path!r}: file not found (looked at {path}); "
                    f"point it at the data file, e.g. `{key}.path=/data/alpaca_data.json`"
                ]
            )
        info["resolved_path"] = str(path)
        info["sha256"] = file_sha256(path)
    return info


def data_identity(info: dict[str, Any]) -> dict[str, Any]:
    """What decides a dataset entry's rows (from its plan info): every setting that shapes them;
    a local file by its bytes (sha256) rather than its name or place."""
    drop = ("name", "path", "resolved_path") if "sha256" in info else ("name",)
    return {k: v for k, v in info.items() if k not in drop}


def content_key(payload: Any) -> str:
    """The hash fingerprints are made of, for other content-keyed caches (an evaluation's per-model scores)."""
    return _hash(payload)


def dataset_identity(key: str, dataset) -> dict[str, Any]:
    """What decides a dataset entry's rows, its local file by its bytes (``key`` names it in errors)."""
    return data_identity(_dataset_info(key, dataset))


def base_model_identity(recipe: RecipeConfig) -> dict[str, Any]:
    """What decides the recipe's base model, as the fingerprints hash it (a GGUF file by its bytes)."""
    return _model_identity(recipe.model, _base_model_facts(recipe))


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


def _plan_stage(
    recipe: RecipeConfig, name: str, by_name: dict[str, StageSpec], facts, params, shape, root: Path
) -> StageSpec:
    stage = recipe.stages[name]
    kind = KINDS[stage.kind]
    hw = recipe.hardware_for(name)
    device = get_device(hw)
    inputs = graph.inputs(recipe, name, by_name)
    datasets = {key: _dataset_info(f"{name}.{key}", ds) for key, ds, _ in kind.datasets(stage)}
    distributed = kind.runs_on_every_device(stage) and hw.world_size > 1
    p = PlanContext(
        recipe=recipe,
        name=name,
        stage=stage,
        hardware=hw,
        device=device,
        precision=device.precision(params),
        world=hw.world_size if distributed else 1,
        model_facts=facts,
        params_billion=params,
    )
    resolved = kind.resolve(p)
    memory = _memory(recipe, p, kind.memory_workload(p, resolved), shape)
    fingerprint = _hash(
        {
            "engine": ENGINE_FINGERPRINT_VERSION,
            "kind": stage.kind,
            "settings": resolved.fingerprint_payload(),
            "model": _model_identity(recipe.model, facts),
            "upstream": [i.fingerprint for i in inputs],
            "data": {key: data_identity(info) for key, info in datasets.items()},
        }
    )
    artifact_id = f"{stage.kind}-{fingerprint[:16]}"
    staging_dir = root / "staging" / artifact_id
    zero = getattr(resolved, "zero_stage", None)
    env = device.env(zero, recipe.model)
    return StageSpec(
        name=name,
        kind=stage.kind,
        inputs=inputs,
        fingerprint=fingerprint,
        output_dir=str(root / "artifacts" / artifact_id),
        staging_dir=str(staging_dir),
        model={
            **recipe.model.model_dump(mode="json"),
            "params_billion": params,
            "source": inputs[0].output_dir or recipe.model.path,
        },
        datasets=datasets,
        args=resolved,
        launch=launch_spec(
            hw, name, str(staging_dir / "recipe.json"), bool(zero) or kind.runs_deepspeed(stage), distributed, env
        ),
        hardware=_hardware_view(hw, stage),
        notes=p.notes,
        memory=memory,
    )


def _memory(recipe: RecipeConfig, p: PlanContext, workload, shape) -> dict[str, Any] | None:
    """The stage's memory estimate; a PlanError when it is over the device's memory by more than the estimate's
    error or by its weights alone (`mode=fit` reports instead of refusing)."""
    if workload is None or shape is None:
        return None
    stage_fit = fit.stage_fit(p, workload, shape)
    if stage_fit.refused and recipe.mode != "fit":
        raise PlanError([fit.refusal(p, stage_fit, recipe.model.name, p.params_billion)])
    return stage_fit.view()


def _hardware_view(hw, stage) -> dict[str, Any]:
    """What the plan shows of a stage's hardware: the profile, its size, and the keys the stage overrides."""
    from .config.hardware import set_fields

    view = {"name": hw.name, "device": hw.device, "world_size": hw.world_size, "precision": hw.precision}
    overrides = set_fields(stage.hardware)
    if overrides:
        view["overrides"] = overrides
    return view


def build_plan(recipe: RecipeConfig) -> Plan:
    hw = recipe.hardware
    root = Path(recipe.output_root).expanduser().resolve()
    facts = _base_model_facts(recipe)
    params = params_billion(recipe.model, facts)
    shape = fit.model_shape(recipe.model, params)
    by_name: dict[str, StageSpec] = {}
    problems: list[str] = []
    for name in recipe.pipeline:
        upstream = graph.upstream_of(recipe, name)
        if upstream and upstream not in by_name:
            continue  # the upstream stage already failed; its problem is reported
        try:
            by_name[name] = _plan_stage(recipe, name, by_name, facts, params, shape, root)
        except PlanError as exc:
            problems += exc.problems
    if problems:
        raise PlanError(problems)
    warnings = [w for w in (eos_warning(recipe.model.name, facts),) if w]
    for spec in by_name.values():
        if spec.memory and spec.memory.get("fits") is False:
            warnings.append(
                f"`{spec.name}` may not fit: about {spec.memory['peak_gib']:g} GB a device of "
                f"{spec.memory['limit_gib']:g} GB (within the estimate's error; `mode=fit` shows what to change)"
            )
    return Plan(
        recipe=recipe.name,
        hardware=hw.name,
        world_size=hw.world_size,
        output_root=str(root),
        stages=list(by_name.values()),
        warnings=warnings,
    )
