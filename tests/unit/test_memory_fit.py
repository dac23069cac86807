"""The memory estimate (memory.py) and what the planner does with it (fit.py): refusals, proposals, mode=fit."""

from __future__ import annotations

import shlex
from dataclasses import replace

import pytest

from neuralchat_recipes.compose import group_options
from neuralchat_recipes.config import ConfigError
from neuralchat_recipes.memory import GIB, Workload, estimate, shape_from_config
from tests.conftest import compose_recipe, plan_for, run_cli

# LLaMA-65B's config.json (huggyllama/llama-65b): the model of the QLoRA paper's headline figure
LLAMA_65B = {
    "model_type": "llama",
    "hidden_size": 8192,
    "intermediate_size": 22016,
    "num_hidden_layers": 80,
    "num_attention_heads": 64,
    "vocab_size": 32000,
    "hidden_act": "silu",
}


def test_every_model_entry_has_a_shape_that_counts_its_parameters():
    """An entry's `shape` (copied from its config.json) must agree with its stated size: a typo in a hidden size
    would silently skew every estimate for it."""
    for name in group_options("model"):
        model = compose_recipe("recipe=instruct", f"model={name}", "hardware=gpu_8x").model
        if model.path.startswith("builtin:") or model.path.startswith("package:"):
            continue
        assert model.shape, f"model entry {name} has no `shape`"
        shape = shape_from_config(model.shape)
        assert shape is not None, name
        if model.params_billion and model.architecture == "causal":
            counted = shape.parameters / 1e9
            assert abs(counted - model.params_billion) / model.params_billion < 0.08, (name, counted)


def test_qlora_65b_fits_one_48gb_gpu_and_16_bit_does_not():
    """QLoRA (Dettmers et al. 2023): finetuning LLaMA-65B needs more than 780 GB in 16 bits, under 48 GB in
    4 bits (LoRA on every linear layer, r 64, gradient checkpointing, paged optimizer)."""
    shape = shape_from_config(LLAMA_65B)
    assert 63e9 < shape.parameters < 67e9
    full = Workload(kind="train", precision="bf16", device="cuda", peft="none", micro_batch=1, sequence=512)
    assert estimate(shape, full).total > 780e9
    linear = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    qlora = Workload(
        kind="train",
        precision="bf16",
        device="cuda",
        peft="lora",
        lora_rank=64,
        lora_targets=linear,
        quantization="nf4",
        optim="paged_adamw_32bit",
        gradient_checkpointing=True,
        micro_batch=1,
        sequence=512,
    )
    assert estimate(shape, qlora).total < 48 * GIB
    assert estimate(shape, replace(qlora, quantization=None)).total > 48 * GIB


def test_each_memory_saver_lowers_the_estimate_where_it_acts():
    shape = shape_from_config(LLAMA_65B)
    base = Workload(kind="train", precision="bf16", device="cuda", peft="none", world=8, micro_batch=4, sequence=2048)
    parts = estimate(shape, base).parts
    checkpointed = estimate(shape, replace(base, gradient_checkpointing=True)).parts
    assert checkpointed["activations"] < parts["activations"] / 5
    zero2 = estimate(shape, replace(base, zero_stage=2)).parts
    assert zero2["optimizer"] < parts["optimizer"] and zero2["gradients"] == parts["gradients"] / 8
    zero3 = estimate(shape, replace(base, zero_stage=3)).parts
    assert zero3["weights"] < parts["weights"] / 7
    assert estimate(shape, replace(base, micro_batch=1)).parts["activations"] == parts["activations"] / 4
    dpo = replace(base, sequences_per_sample=2, peft="lora", reference="copy")
    assert estimate(shape, dpo).parts["reference model"] == estimate(shape, dpo).parts["weights"]
    assert "reference model" not in estimate(shape, replace(dpo, reference="precomputed")).parts


def test_the_plan_shows_each_stage_estimate_against_the_device():
    plan = plan_for("recipe=neural_chat_v3", "hardware=gaudi2_8x")
    sft = plan.stage("sft").to_dict()["memory"]
    assert sft["limit_gib"] == 96 and sft["fits"] is True
    assert 10 < sft["peak_gib"] < 96 and sft["parts_gib"]["weights"] > 13
    assert plan.stage("merge").memory["notes"] == ["runs in the host's memory, not on the device"]


def test_a_stage_over_the_device_is_refused_with_overrides_that_make_it_fit():
    with pytest.raises(ConfigError) as info:
        plan_for("recipe=instruct", "model=llama2_70b", "hardware=gpu_8x")
    text = str(info.value)
    assert "`sft` on hardware 'gpu_8x' is not supported because model 'llama2_70b'" in text
    assert "needs about 143 GB per device" in text and "a device has 80 GB" in text
    assert "`+deepspeed@sft.deepspeed=zero3`" in text and "`sft.peft.quantization=nf4`" in text


def _proposals(*overrides):
    plan = plan_for("mode=fit", *overrides)
    return {spec.name: spec.memory.get("proposals", []) for spec in plan.stages if spec.memory}


@pytest.mark.parametrize(
    "overrides",
    [
        ("recipe=instruct", "model=llama2_70b", "hardware=gpu_8x", "pipeline=[sft]"),
        ("recipe=instruct", "model=llama2_70b", "hardware=gpu_1x", "peft@sft.peft=none", "pipeline=[sft]"),
        ("recipe=stack_llama2_70b", "hardware=gpu_1x", "pipeline=[sft]"),
        ("recipe=neural_chat_v3", "hardware=gaudi2_1x", "sft.max_seq_length=16384", "pipeline=[sft]"),
    ],
)
def test_every_proposal_pasted_as_is_makes_the_stage_fit(overrides):
    proposals = _proposals(*overrides)["sft"]
    assert proposals, "a stage that does not fit gets proposals"
    for proposal in proposals:
        # the overrides are pasted after the user's own, exactly as printed
        plan = plan_for(*[o for o in overrides if o != "mode=fit"], *proposal["overrides"])
        memory = plan.stage("sft").memory
        assert memory["fits"], (proposal, memory)
        assert memory["peak_gib"] == pytest.approx(proposal["peak_gib"], rel=0.01)


def test_an_evaluation_over_the_device_is_told_the_largest_batch_that_fits():
    """lm-eval's logits grow with the batch (Gemma's 256k vocabulary: 1 GB per 512-token sequence in fp32)."""
    base = (
        "recipe=instruct",
        "model=gemma_2b",
        "hardware=arc_gpu",
        "sft.global_batch_size=8",
        "sft.micro_batch_size=2",
    )
    memory = plan_for(*base).stage("eval").memory
    assert not memory["fits"]
    (proposal,) = memory["proposals"]
    (override,) = proposal["overrides"]
    assert override.startswith("eval.batch_size=")
    batch = int(override.split("=")[1])
    assert plan_for(*base, override).stage("eval").memory["fits"]
    assert not plan_for(*base, f"eval.batch_size={batch + 1}").stage("eval").memory["fits"]


def test_mode_fit_prints_every_stage_and_the_fixes():
    proc = run_cli("mode=fit", "recipe=instruct", "model=llama2_70b", "hardware=gpu_1x")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "sft (sft, gpu_1x):" in out and "DOES NOT FIT" in out and "eval (eval, gpu_1x):" in out
    fixes = [line.split(": ", 1)[1].split("   (")[0] for line in out.splitlines() if line.strip().startswith("fix ")]
    assert fixes and all(shlex.split(f) for f in fixes)
    assert "sft.peft.quantization=nf4" in out


def test_qlora_is_refused_where_bitsandbytes_does_not_run_or_cannot_load_it():
    with pytest.raises(ConfigError, match="quantization.*not supported because bitsandbytes has no hpu kernels"):
        plan_for("recipe=neural_chat_v3", "hardware=gaudi2_8x", "sft.peft.quantization=nf4")
    with pytest.raises(ConfigError, match="not supported because ZeRO-3"):
        plan_for("recipe=stack_llama2_70b", "hardware=gpu_8x", "sft.peft.quantization=nf4")
    with pytest.raises(ConfigError, match="quantization.*not supported for the seq2seq model"):
        plan_for("recipe=instruct", "model=flan_t5_xl", "hardware=gpu_8x", "sft.peft.quantization=nf4")
    plan = plan_for("recipe=tiny", "sft.peft.quantization=nf4")  # bitsandbytes' CPU backend
    assert plan.stage("sft").args.peft.quantization == "nf4"
