"""A stage may run on other hardware than the recipe's (neural-chat-v3-1: SFT on 8 cards under deepspeed, DPO as
one process); the keys the seeds set reach the trainer; a merge may go onto the raw base; generation may shard."""

import pytest

from neuralchat_recipes.config import ConfigError
from tests.conftest import compose_recipe, plan_for


def test_neural_chat_v3_1_plans_sft_on_eight_cards_and_dpo_on_one_as_published():
    plan = plan_for("recipe=itrex/neural_chat_v3_1")
    sft, merge, dpo = plan.stage("sft"), plan.stage("merge"), plan.stage("dpo")
    assert sft.launch["command"][:5] == [
        "deepspeed",
        "--include",
        "localhost:0,1,2,3,4,5,6,7",
        "--master_port",
        "29501",
    ]
    assert sft.launch["world_size"] == 8 and sft.args.view()["deepspeed"]["zero_optimization"]["stage"] == 2
    a = sft.args.view()
    assert (a["per_device_train_batch_size"], a["gradient_accumulation_steps"]) == (1, 8)
    assert dpo.launch["launcher"] == "inprocess" and dpo.hardware["world_size"] == 1
    d = dpo.args.view()
    assert (d["per_device_train_batch_size"], d["gradient_accumulation_steps"], d["global_batch_size"]) == (8, 8, 64)
    assert dpo.hardware["overrides"] == {"devices_per_node": 1, "launcher": "inprocess"}
    assert merge.launch["launcher"] == "inprocess" and "overrides" not in merge.hardware
    # the DeepSpeed scheduler that replaces the stage's cosine is what the plan reports
    assert a["lr_schedule"].startswith("deepspeed WarmupDecayLR") and "replaces cosine" in a["lr_schedule"]


def test_a_whole_profile_or_single_keys_per_stage():
    plan = plan_for("recipe=neural_chat_v3", "hardware=gaudi2_8x", "+hardware@dpo.hardware=gaudi2_1x")
    assert plan.stage("dpo").hardware["name"] == "gaudi2_1x" and plan.stage("sft").hardware["name"] == "gaudi2_8x"
    plan = plan_for("recipe=tiny", "sft.hardware.precision=fp32", "dpo.hardware.omp_num_threads=1")
    assert plan.stage("sft").hardware["overrides"] == {"precision": "fp32"}
    assert (
        plan.stage("dpo").launch["env"]["OMP_NUM_THREADS"] == "1"
        and "OMP_NUM_THREADS" not in plan.stage("sft").launch["env"]
    )


def test_a_bad_stage_override_names_its_key():
    with pytest.raises(ConfigError) as info:
        plan_for("recipe=neural_chat_v3", "hardware=gaudi2_8x", "dpo.hardware.devices_per_node=0")
    assert "`dpo.hardware.devices_per_node` = 0" in str(info.value)
    with pytest.raises(ConfigError) as info:
        plan_for(
            "recipe=neural_chat_v3",
            "hardware=gaudi2_8x",
            "dpo.hardware.launcher=gaudi_spawn",
            "dpo.hardware.device=cpu",
        )
    assert "`dpo.hardware`: the gaudi_spawn launcher only starts HPU processes" in str(info.value)
    with pytest.raises(ConfigError) as info:
        plan_for(
            "recipe=neural_chat_v3",
            "hardware=gaudi2_8x",
            "sft.hardware.launcher=deepspeed",
            'sft.hardware.include="localhost:0,1"',
        )
    assert "names 2 device(s) on 1 node(s)" in str(info.value)
    with pytest.raises(ConfigError) as info:  # the global batch must divide over the stage's own devices
        plan_for("recipe=tiny", "hardware=cpu", "sft.hardware.devices_per_node=3", "sft.hardware.launcher=torchrun")
    assert "`sft.global_batch_size`" in str(info.value) and "world size 3" in str(info.value)


def test_each_stage_is_checked_for_what_its_own_hardware_needs(tmp_path):
    from neuralchat_recipes.execution.loop import RunError, preflight
    from neuralchat_recipes.plan import build_plan

    recipe = compose_recipe(
        "recipe=tiny", "hardware=cpu", "+hardware@dpo.hardware=gaudi2_1x", f"output_root={tmp_path}"
    )

    with pytest.raises(RunError) as info:
        preflight(recipe, build_plan(recipe))
    assert "hardware 'gaudi2_1x' needs Habana's SynapseAI stack" in str(info.value)


def test_the_keys_the_seeds_set_reach_the_trainer():
    import dataclasses

    from transformers import TrainingArguments

    from neuralchat_recipes.backends import get_device

    plan = plan_for(
        "recipe=tiny",
        "sft.save_strategy=epoch",
        "sft.run_name=sft_mixtral",
        "sft.per_device_eval_batch_size=3",
        "dpo.remove_unused_columns=true",
    )
    sft = plan.stage("sft")
    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    device = get_device(compose_recipe("recipe=tiny").hardware)
    kwargs = sft.args.training_arguments("/tmp/x", fields, device, {})
    assert (kwargs["save_strategy"], kwargs["run_name"], kwargs["per_device_eval_batch_size"]) == (
        "epoch",
        "sft_mixtral",
        3,
    )
    assert kwargs["remove_unused_columns"] is False
    dpo = plan.stage("dpo").args.training_arguments("/tmp/x", fields, device, {})
    assert dpo["remove_unused_columns"] is True and dpo["run_name"] == "dpo"
    with pytest.raises(ConfigError, match="would drop the assistant masks"):
        plan_for("recipe=tiny", "sft.remove_unused_columns=true")


def test_a_merge_goes_onto_the_raw_base_only_when_asked():
    default = plan_for("recipe=stack_llama2_70b", "hardware=gaudi2_8x").stage("merge_dpo")
    assert default.inputs[0].adapter_base.stage == "merge_sft" and len(default.inputs) == 1
    onto = plan_for("recipe=stack_llama2_70b", "hardware=gaudi2_8x", "merge_dpo.onto=model").stage("merge_dpo")
    assert onto.inputs[1].stage is None and onto.inputs[1].model == "meta-llama/Llama-2-70b-hf"
    assert onto.fingerprint != default.fingerprint and "onto: model" in onto.notes[0]


def test_generation_shards_over_the_cards_with_deepspeed_where_it_can():
    spec = plan_for("recipe=optimum_habana/stack_llama2_70b").stage("generate")
    command = spec.launch["command"]
    assert spec.launch["world_size"] == 8 and "--use_deepspeed" in command and "--world_size" in command
    assert spec.args.view()["tensor_parallel"] == 8 and spec.args.view()["use_hpu_graphs"] is True
    with pytest.raises(ConfigError, match="shards the model over several devices"):
        plan_for("recipe=optimum_habana/stack_llama2_70b", "+hardware@generate.hardware=gaudi2_1x")
    with pytest.raises(ConfigError, match="tensor-parallel inference does not run on cpu"):
        plan_for(
            "recipe=tiny",
            "pipeline=[sft,merge,generate]",
            "+stage@generate=generate",
            "generate.prompts=[hi]",
            "generate.deepspeed_inference=true",
            "generate.hardware.devices_per_node=2",
            "generate.hardware.launcher=torchrun",
        )
