"""Launch commands and environments per hardware profile (computed without Habana's stack)."""

import sys

from tests.conftest import plan_for


def test_stack_llama_zero3_on_gaudi_sets_the_sync_env():
    plan = plan_for("recipe=stack_llama2_70b", "hardware=gaudi2_8x")
    sft = plan.stage("sft")
    assert sft.launch["env"]["DEEPSPEED_HPU_ZERO3_SYNC_MARK_STEP_REQUIRED"] == "1"
    assert sft.launch["env"]["PT_HPU_MAX_COMPOUND_OP_SIZE"] == "10"
    assert "--use_deepspeed" in sft.launch["command"]
    assert sft.args.view()["deepspeed"]["zero_optimization"]["stage"] == 3
    assert sft.args.view()["deepspeed"]["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    a = sft.args.view()
    assert (a["per_device_train_batch_size"], a["gradient_accumulation_steps"]) == (1, 2)
    assert a["max_steps"] == 500 and a["weight_decay"] == 0.05 and a["optim"] == "paged_adamw_32bit"
    assert [s.kind for s in plan.stages] == ["sft", "merge", "dpo", "merge", "generate"]
    dpo = plan.stage("dpo")
    assert dpo.args.view()["max_prompt_length"] == 256 and dpo.args.view()["max_length"] == 512
    assert (
        plan.stage("merge_dpo").inputs[0].adapter_base.stage == "merge_sft"
    )  # DPO adapter merges into the merged SFT model
    assert "optimum" not in sys.modules and "habana_frameworks" not in sys.modules


def test_mixtral_on_four_cards():
    plan = plan_for("recipe=mixtral_sft")  # the recipe's default hardware
    sft = plan.stage("sft")
    assert plan.hardware == "gaudi2_4x" and sft.launch["world_size"] == 4
    a = sft.args.view()
    assert (a["per_device_train_batch_size"], a["gradient_accumulation_steps"]) == (2, 2)
    assert sft.datasets["dataset"]["hub_id"] == "philschmid/dolly-15k-oai-style" and a["max_seq_length"] == 512
    assert sft.launch["env"] == {"DEEPSPEED_HPU_ZERO3_SYNC_MARK_STEP_REQUIRED": "1"}


def test_xeon_ddp_is_mpirun_with_a_hostfile_and_ccl():
    plan = plan_for(
        "recipe=instruct",
        "hardware=xeon_spr_ddp",
        "model=mpt_7b",
        "sft.global_batch_size=64",
        "sft.micro_batch_size=4",
        "hardware.master_addr=10.0.0.1",
    )
    spec = plan.stage("sft")
    cmd = spec.launch["command"]
    assert cmd[:8] == ["mpirun", "-f", "nodefile", "-n", "16", "-ppn", "4", "-genv"]
    assert cmd[:10] == ["mpirun", "-f", "nodefile", "-n", "16", "-ppn", "4", "-genv", "OMP_NUM_THREADS=56", "python"]
    assert spec.launch["env"]["CCL_WORKER_COUNT"] == "1" and spec.launch["env"]["MASTER_ADDR"] == "10.0.0.1"
    assert (
        spec.args.view()["ddp_backend"] == "ccl"
        and spec.args.view()["use_cpu"] is True
        and spec.args.view()["bf16"] is True
    )
    assert (spec.args.view()["per_device_train_batch_size"], spec.args.view()["gradient_accumulation_steps"]) == (4, 1)
    assert spec.model["trust_remote_code"] is True and spec.model["tokenizer"] == "EleutherAI/gpt-neox-20b"


def test_gpu_8x_uses_torchrun_without_zero_and_deepspeed_with_it():
    plain = plan_for("recipe=instruct", "hardware=gpu_8x").stage("sft").launch
    assert plain["launcher"] == "torchrun" and plain["command"][0] == "torchrun"
    assert "--nproc_per_node" in plain["command"]
    zero = plan_for("recipe=neural_chat_v3", "hardware=gpu_8x").stage("sft").launch
    assert zero["launcher"] == "deepspeed" and zero["command"][:1] == ["deepspeed"] and "--module" in zero["command"]


def test_cpu_runs_in_process_and_ignores_zero_with_a_note():
    plan = plan_for("recipe=neural_chat_v3", "hardware=cpu", "model=tiny_llama")
    sft = plan.stage("sft")
    assert sft.launch["launcher"] == "inprocess" and sft.launch["world_size"] == 1
    assert sft.args.view()["deepspeed"] is None and any("ZeRO-2 not used" in n for n in sft.notes)
    assert sft.args.view()["per_device_train_batch_size"] * sft.args.view()["gradient_accumulation_steps"] == 64


def test_dl1_multi_card_uses_gaudi_spawn_mpi():
    spec = plan_for(
        "recipe=instruct", "hardware=gaudi1_8x", "sft.global_batch_size=64", "sft.micro_batch_size=2"
    ).stage("sft")
    assert "--use_mpi" in spec.launch["command"]
    assert (spec.args.view()["per_device_train_batch_size"], spec.args.view()["gradient_accumulation_steps"]) == (2, 4)


def test_cpu_precision_follows_native_bf16(monkeypatch):
    from neuralchat_recipes.backends import cpu

    assert cpu.cpu_has_native_bf16(frozenset({"avx512f", "amx_bf16"}))
    assert cpu.cpu_has_native_bf16(frozenset({"avx512_bf16"}))
    assert not cpu.cpu_has_native_bf16(frozenset({"avx2", "avx512f"}))
    monkeypatch.setattr(cpu, "cpu_has_native_bf16", lambda flags=None: False)
    assert plan_for("recipe=tiny").stage("sft").args.view()["precision"] == "fp32"
    monkeypatch.setattr(cpu, "cpu_has_native_bf16", lambda flags=None: True)
    # native bf16: bf16 for a model big enough to gain from it, or of unknown size; fp32 for the tiny demo model,
    # which runs 2x slower in bf16 (bench/)
    assert plan_for("recipe=tiny", "model.params_billion=7").stage("sft").args.view()["precision"] == "bf16"
    assert plan_for("recipe=tiny", "model.params_billion=null").stage("sft").args.view()["precision"] == "bf16"
    assert plan_for("recipe=tiny").stage("sft").args.view()["precision"] == "fp32"


def test_arc_gpu_matches_the_itrex_command():
    spec = plan_for(
        "recipe=instruct", "hardware=arc_gpu", "model=gemma_2b", "sft.global_batch_size=8", "sft.micro_batch_size=2"
    ).stage("sft")
    assert spec.args.view()["gradient_checkpointing"] is True and spec.args.view()["precision"] == "fp32"
    assert (spec.args.view()["per_device_train_batch_size"], spec.args.view()["gradient_accumulation_steps"]) == (2, 4)


def test_a_user_deepspeed_json_is_used_as_is_and_must_agree_with_zero_stage(tmp_path):
    import json

    import pytest

    from neuralchat_recipes.config import ConfigError

    mine = {"train_batch_size": "auto", "zero_optimization": {"stage": 3, "sub_group_size": 1e9}}
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(mine))
    sft = plan_for("recipe=stack_llama2_70b", "hardware=gaudi2_8x", f"sft.deepspeed.config_file={path}").stage("sft")
    assert sft.args.view()["deepspeed"] == mine and "--use_deepspeed" in sft.launch["command"]
    default = plan_for("recipe=stack_llama2_70b", "hardware=gaudi2_8x").stage("sft")
    assert sft.fingerprint != default.fingerprint
    path.write_text(json.dumps({**mine, "zero_optimization": {"stage": 3, "sub_group_size": 5e8}}))
    edited = plan_for("recipe=stack_llama2_70b", "hardware=gaudi2_8x", f"sft.deepspeed.config_file={path}").stage("sft")
    assert edited.fingerprint != sft.fingerprint  # the file's content is part of the stage's identity
    with pytest.raises(ConfigError, match=r"sft.deepspeed.*zero_optimization.stage 3, but zero_stage is 2"):
        plan_for(
            "recipe=stack_llama2_70b",
            "hardware=gaudi2_8x",
            f"sft.deepspeed.config_file={path}",
            "sft.deepspeed.zero_stage=2",
        )
    with pytest.raises(ConfigError, match="cannot read it"):
        plan_for("recipe=stack_llama2_70b", "hardware=gaudi2_8x", f"sft.deepspeed.config_file={tmp_path / 'no.json'}")


def test_xeon_ccl_falls_back_to_gloo_without_the_oneccl_bindings(monkeypatch):
    import importlib.util

    from neuralchat_recipes.backends import DeviceArgs, get_device
    from tests.conftest import compose_recipe

    recipe = compose_recipe(
        "recipe=instruct",
        "hardware=xeon_spr_ddp",
        "model=mpt_7b",
        "sft.global_batch_size=64",
        "hardware.master_addr=10.0.0.1",
    )
    backend = get_device(recipe.hardware)
    args = DeviceArgs(ddp_backend="ccl", use_cpu=True)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "oneccl_bindings_for_pytorch" else real(name, *a)
    )
    assert backend.runtime_training_kwargs(args) == {"use_cpu": True, "ddp_backend": "gloo"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    assert backend.runtime_training_kwargs(args)["ddp_backend"] == "ccl"


def test_multi_node_torchrun_takes_node_rank_and_master_from_each_nodes_environment():
    import sys

    import pytest

    from neuralchat_recipes.execution.supervise import launch_command
    from neuralchat_recipes.stages.common import StageError

    spec = plan_for("recipe=instruct", "hardware=gpu_8x", "hardware.num_nodes=2", "sft.global_batch_size=64").stage(
        "sft"
    )
    cmd = spec.launch["command"]
    assert cmd[cmd.index("--node_rank") + 1] == "$NODE_RANK" and cmd[cmd.index("--master_addr") + 1] == "$MASTER_ADDR"
    with pytest.raises(StageError, match="NODE_RANK, MASTER_ADDR in the environment"):
        launch_command(spec, {})
    ready = launch_command(spec, {"NODE_RANK": "1", "MASTER_ADDR": "10.0.0.1"})
    assert ready[ready.index("--node_rank") + 1] == "1" and ready[ready.index("--master_addr") + 1] == "10.0.0.1"
    mpi = plan_for(
        "recipe=instruct",
        "hardware=xeon_spr_ddp",
        "model=mpt_7b",
        "sft.global_batch_size=64",
        "hardware.master_addr=10.0.0.1",
    ).stage("sft")
    assert sys.executable in launch_command(mpi, {})  # the plan's `python` is this interpreter
