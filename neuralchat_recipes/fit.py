"""Will each stage fit its devices: the plan's memory estimate per stage, and the cheapest overrides that make it fit.

The planner asks every stage's kind for its memory workload (StageKind.memory_workload), estimates its peak per
device (memory.py) against the profile's memory, and refuses a stage whose estimate is over by more than the
estimate's error (MARGIN) with the changes that would make it fit. `mode=fit` prints the same for every stage.
A proposal is a set of changes, each an exact command-line override; they are ranked by COST, a rough order of
how much slower (or different) the run gets, and no proposal contains a cheaper one that fits on its own.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

from .config.hardware import set_fields
from .memory import ALL_LINEAR, GIB, Estimate, Shape, Workload, estimate, shape_from_config
from .stages import KINDS

# the estimate's error against measured peaks (bench/memory.py: within +-25%): a stage is refused only past it
MARGIN = 1.25
# ranks of the changes (higher: the run gets slower or further from what was asked)
COST = {
    "micro_batch": 1,  # the same global batch in more, smaller steps: the same math, a less busy device
    "zero2": 1,  # gradients and optimizer state sharded; the reduction overlaps the backward
    "checkpointing": 2,  # recompute each layer in the backward: about a third more compute
    "zero3": 2,  # weights sharded too: gathered layer by layer, more communication
    "qlora": 3,  # base weights in 4 bits: dequantized every matmul, and a slightly different model
    "offload_optimizer": 4,  # optimizer state in host memory: the step waits for host transfers
    "offload_param": 5,  # weights in host memory too
    "more_devices": 6,  # other hardware
}
SHOWN = 5  # proposals printed


@dataclass(frozen=True)
class Proposal:
    overrides: tuple[str, ...]
    estimate: Estimate
    cost: int


@dataclass(frozen=True)
class Profile:
    """A hardware profile of the `hardware/` group, as far as a proposal to move to it goes."""

    name: str
    device: str
    world: int
    memory_gb: float | None
    supports_deepspeed: bool


@lru_cache(maxsize=1)
def profiles() -> tuple[Profile, ...]:
    """The shipped hardware profiles (read as YAML: composing each with Hydra would cost seconds)."""
    import yaml

    from .compose import config_dir
    from .config.hardware import HardwareConfig

    def field(data: dict, key: str):  # a key the file leaves out takes the schema's default (written once there)
        return data[key] if key in data else HardwareConfig.model_fields[key].default

    found = []
    for path in sorted((config_dir() / "hardware").glob("*.yaml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        found.append(
            Profile(
                name=data["name"],
                device=data["device"],
                world=int(field(data, "devices_per_node")) * int(field(data, "num_nodes")),
                memory_gb=field(data, "memory_gb"),
                supports_deepspeed=bool(field(data, "supports_deepspeed")),
            )
        )
    return tuple(found)


@lru_cache(maxsize=1)
def qlora_adapter() -> dict[str, Any]:
    """The adapter of the `peft/qlora` entry (what `peft@<stage>.peft=qlora` trains), as Workload fields."""
    import yaml

    from .compose import config_dir

    entry = yaml.safe_load((config_dir() / "peft" / "qlora.yaml").read_text(encoding="utf-8"))
    targets = ALL_LINEAR if entry.get("all_linear") else tuple(entry.get("target_modules") or ())
    return {"lora_rank": int(entry.get("r", 8)), "lora_targets": targets}


def host_memory_bytes() -> float | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def device_limit(hw, world: int) -> float | None:
    """Bytes a device (a process, on CPU) may use: the profile's memory_gb, else this host's RAM shared by its
    processes."""
    if hw.memory_gb:
        return hw.memory_gb * GIB
    host = host_memory_bytes()
    return host / max(world, 1) if host and hw.device == "cpu" else host


def model_shape(model, params_billion: float | None) -> Shape | None:
    """The base model's shape from its config on this machine, else its entry's `shape` block."""
    from .model_sources import model_config

    config = model_config(model.path, model.package) or model.shape
    if not config:
        return None
    return shape_from_config(config, int(params_billion * 1e9) if params_billion else None)


@dataclass
class StageFit:
    """A stage's estimate, and what to change when it does not fit."""

    stage: str
    estimate: Estimate
    proposals: list[Proposal]

    @property
    def over(self) -> float:
        """Estimate over limit (1.0: exactly the device's memory)."""
        return self.estimate.total / self.estimate.limit if self.estimate.limit else 0.0

    @property
    def refused(self) -> bool:
        """Over the device's memory beyond the estimate's error, or by the weights alone (counted exactly)."""
        if not self.estimate.limit:
            return False
        exact = sum(self.estimate.parts.get(k, 0.0) for k in ("runtime", "weights", "reference model"))
        return self.over > MARGIN or exact > self.estimate.limit

    def view(self) -> dict[str, Any]:
        view = self.estimate.view()
        if self.proposals:
            view["proposals"] = [
                {"overrides": list(p.overrides), "peak_gib": round(p.estimate.total / GIB, 2)} for p in self.proposals
            ]
        return view


def stage_fit(p, workload: Workload, shape: Shape) -> StageFit:
    """The estimate of a planned stage (``p``: its PlanContext), with proposals when it does not fit."""
    in_host_memory = workload.device == "cpu" and p.hardware.device != "cpu"
    # (the host that will run an accelerator profile is not this one: its memory is not known here)
    limit = None if in_host_memory else device_limit(p.hardware, p.world)
    est = estimate(shape, workload, limit)
    if in_host_memory:
        est.notes.append("runs in the host's memory, not on the device")
    fit = StageFit(p.name, est, [])
    if est.fits is False and workload.kind == "train":
        fit.proposals = propose(p, workload, shape)
    elif est.fits is False and workload.batch_key:
        fit.proposals = smaller_batches(workload, shape, limit)
    return fit


def smaller_batches(work: Workload, shape: Shape, limit: float) -> list[Proposal]:
    """An evaluation's or a generation's fix: fewer sequences per forward pass (the same results, slower)."""
    for batch in range(work.micro_batch - 1, 0, -1):
        est = estimate(shape, replace(work, micro_batch=batch), limit)
        if est.fits:
            return [Proposal((f"{work.batch_key}={batch}",), est, COST["micro_batch"])]
    return []


def propose(p, work: Workload, shape: Shape) -> list[Proposal]:
    """The cheapest sets of changes after which the training stage ``p`` fits, ranked."""
    stage, hw, name = p.stage, p.hardware, p.name
    peft = stage.peft.method
    here = Profile(hw.name, hw.device, p.world, hw.memory_gb, hw.supports_deepspeed)
    bigger = [
        pr
        for pr in profiles()
        if pr.device == hw.device
        and pr.world > p.world
        and stage.global_batch_size % pr.world == 0
        and pr.name != hw.name
    ]
    options = {
        "checkpointing": [False] if work.gradient_checkpointing else [False, True],
        "qlora": [False, True] if peft in ("lora", "none") and not work.quantization and _quantizes(p) else [False],
        "profile": [here, *bigger],
        "zero": [None, 2, 3],
        "offload_optimizer": [False, True],
        "offload_param": [False, True],
    }
    configured = stage.deepspeed
    found: list[Proposal] = []
    for checkpointing, qlora, profile, zero, offload_opt, offload_param in itertools.product(*options.values()):
        deepspeed = profile.world > 1 and profile.supports_deepspeed
        # the stage's own ZeRO settings apply wherever it runs on several devices that can run DeepSpeed
        zero_now = configured.zero_stage or None if deepspeed and configured else None
        if zero is not None and (not deepspeed or (zero_now or 0) >= zero):
            continue
        zero_after = zero or zero_now
        offloads_optimizer = bool(zero_after and configured and configured.offload_optimizer)
        offloads_param = bool(zero_after == 3 and configured and configured.offload_param)
        if (qlora or work.quantization) and zero_after == 3:  # (a quantized base is not sharded: training.py)
            continue
        if (offload_opt and (not zero_after or offloads_optimizer)) or (
            offload_param and (zero_after != 3 or offloads_param)
        ):
            continue
        changes: list[tuple[str, str]] = []
        if checkpointing:
            changes.append(("checkpointing", f"{name}.gradient_checkpointing=true"))
        if qlora:
            changes.append(("qlora", f"{name}.peft.quantization=nf4" if peft == "lora" else f"peft@{name}.peft=qlora"))
        if profile is not here:
            key = f"hardware@{name}.hardware" if set_fields(stage.hardware) else "hardware"
            changes.append(("more_devices", f"{key}={profile.name}"))
        if zero is not None:
            changes.append(
                (
                    f"zero{zero}",
                    f"{name}.deepspeed.zero_stage={zero}"
                    if stage.deepspeed is not None
                    else f"+deepspeed@{name}.deepspeed=zero{zero}",
                )
            )
        if offload_opt:
            changes.append(("offload_optimizer", f"{name}.deepspeed.offload_optimizer=true"))
        if offload_param:
            changes.append(("offload_param", f"{name}.deepspeed.offload_param=true"))
        changed = replace(
            work,
            world=profile.world,
            gradient_checkpointing=work.gradient_checkpointing or checkpointing,
            quantization="nf4" if qlora else work.quantization,
            zero_stage=zero_after,
            offload_optimizer=offloads_optimizer or offload_opt,
            offload_param=offloads_param or offload_param,
        )
        if qlora and peft == "none":  # the `qlora` peft entry's adapter replaces full fine-tuning
            changed = replace(changed, peft="lora", **qlora_adapter())
        limit = profile.memory_gb * GIB if profile.memory_gb else device_limit(hw, profile.world)
        # micro batches the planner would accept there: divisors of the per-device batch, up to the stage's own
        per_device = stage.global_batch_size // profile.world
        micros = [m for m in range(1, per_device + 1) if per_device % m == 0 and m <= stage.micro_batch_size]
        for micro in sorted(micros, reverse=True):
            est = estimate(shape, replace(changed, micro_batch=micro), limit)
            if est.fits:
                extra = []
                if micro < max(micros):
                    extra = [("micro_batch", f"{name}.micro_batch_size={micro}")]
                all_changes = changes + extra
                if all_changes:
                    found.append(Proposal(tuple(o for _, o in all_changes), est, sum(COST[c] for c, _ in all_changes)))
                break
    found.sort(key=lambda pr: (pr.cost, pr.estimate.total))
    kept: list[Proposal] = []
    for proposal in found:  # drop a proposal that holds all of a cheaper one's changes
        if not any(set(k.overrides) <= set(proposal.overrides) for k in kept):
            kept.append(proposal)
    return kept[:SHOWN]


def _quantizes(p) -> bool:
    kind = KINDS[p.stage.kind]
    return (
        p.device.can("quantized_base")
        and getattr(kind, "quantizes_base", False)
        and (p.recipe.model.architecture == "causal")
    )


def refusal(p, fit: StageFit, model_name: str, params_billion: float | None) -> str:
    """The plan's sentence for a stage that does not fit."""
    est = fit.estimate
    size = f"{params_billion:g}B parameters, " if params_billion else ""
    parts = ", ".join(f"{k} {v:.1f}" for k, v in est.gib().items() if v >= 0.05)
    text = (
        f"`{p.name}` on hardware {p.hardware.name!r} is not supported because model {model_name!r} ({size}"
        f"{p.precision}) needs about {est.total / GIB:.0f} GB per device ({parts}) and a device has "
        f"{est.limit / GIB:.0f} GB"
    )
    if fit.proposals:
        text += "; it fits with: " + " | ".join(f"`{' '.join(pr.overrides)}`" for pr in fit.proposals)
    else:
        text += (
            "; no change of batch size, checkpointing, ZeRO, offload, QLoRA or device count makes it fit: use a "
            "smaller model"
        )
    return text + " (`mode=fit` shows the estimate; if you know it fits, raise `hardware.memory_gb`)"


def report(plan) -> str:
    """What `mode=fit` prints: every stage's peak per device against its limit, and proposals where it is over."""
    lines = [f"memory: recipe {plan.recipe} on {plan.hardware} (estimated peak per device; GB = 2^30 bytes)"]
    for spec in plan.stages:
        memory = spec.memory
        if not memory:
            lines.append(f"  {spec.name} ({spec.kind}): no estimate (the model's shape is not known here)")
            continue
        peak, limit = memory["peak_gib"], memory.get("limit_gib")
        verdict = ""
        if limit is not None:
            verdict = (
                f" of {limit:g} GB: fits, {memory['headroom_gib']:g} GB headroom"
                if memory["fits"]
                else f" of {limit:g} GB: DOES NOT FIT ({peak / limit:.0%} of the device)"
            )
        lines.append(f"  {spec.name} ({spec.kind}, {spec.hardware['name']}): {peak:g} GB{verdict}")
        parts = ", ".join(f"{k} {v:g}" for k, v in memory["parts_gib"].items() if v >= 0.001)
        lines.append(f"      {parts}")
        for note in memory.get("notes", []):
            lines.append(f"      note: {note}")
        for i, proposal in enumerate(memory.get("proposals", []), 1):
            lines.append(f"      fix {i}: {' '.join(proposal['overrides'])}   (about {proposal['peak_gib']:g} GB)")
        if memory.get("fits") is False and not memory.get("proposals"):
            lines.append("      no fix this tool can make: a smaller model, or a device with more memory")
    return "\n".join(lines)
