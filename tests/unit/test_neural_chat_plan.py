"""The neural_chat_v3 plan on 8x Gaudi2 matches RECIPE_FACTS.md value for value."""

import pytest

from tests.conftest import plan_for


@pytest.fixture(scope="module")
def plan():
    return plan_for("recipe=neural_chat_v3", "hardware=gaudi2_8x")


def test_pipeline_and_wiring(plan):
    assert [(s.name, s.kind) for s in plan.stages] == [
        ("sft", "sft"),
        ("merge", "merge"),
        ("dpo", "dpo"),
        ("merge_dpo", "merge"),
        ("eval", "eval"),
        ("generate", "generate"),
    ]
    sft, merge, dpo, merge_dpo, evaluation, generate = plan.stages
    assert sft.inputs[0].model == "mistralai/Mistral-7B-v0.1"
    assert merge.inputs[0].stage == "sft" and merge.inputs[0].fingerprint == sft.fingerprint
    assert merge.inputs[0].adapter_base.model == "mistralai/Mistral-7B-v0.1"  # the base the adapter is merged into
    assert dpo.inputs[0].stage == "merge" and dpo.model["source"] == merge.output_dir
    assert plan.world_size == 8
    # the final model is scored on the Open LLM Leaderboard set against the SFT-only model
    assert evaluation.inputs[0].stage == "merge_dpo" and evaluation.inputs[1].stage == "merge"
    assert evaluation.args.view()["harness"] == "lm_eval" and evaluation.args.view()["tasks"] == [
        "arc_challenge:25",
        "hellaswag:10",
        "mmlu:5",
        "truthfulqa_mc2:0",
        "winogrande:5",
        "gsm8k:5",
    ]
    assert generate.inputs[0].stage == "merge_dpo"


def test_sft_matches_finetune_neuralchat_v3(plan):
    sft = plan.stage("sft")
    a = sft.args.view()
    assert sft.model["path"] == "mistralai/Mistral-7B-v0.1" and sft.model["use_fast_tokenizer"] is False
    assert (
        sft.datasets["dataset"]["hub_id"] == "Open-Orca/SlimOrca"
        and sft.datasets["dataset"]["validation_split_percentage"] == 0
    )
    assert a["max_seq_length"] == 2560 and a["max_prompt_length"] == 1024
    assert (a["per_device_train_batch_size"], a["gradient_accumulation_steps"], sft.launch["world_size"]) == (1, 8, 8)
    assert a["global_batch_size"] == 64
    assert a["learning_rate"] == 1e-4 and a["lr_scheduler_type"] == "cosine" and a["warmup_ratio"] == 0.03
    assert a["weight_decay"] == 0.0 and a["num_train_epochs"] == 2 and a["max_steps"] is None
    assert a["bf16"] is True and a["precision"] == "bf16"
    assert (a["save_steps"], a["save_total_limit"], a["logging_steps"]) == (1000, 10, 10)
    assert sft.peft == {
        "method": "lora",
        "r": 16,
        "alpha": 64.0,
        "dropout": 0.05,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
        "all_linear": False,
        "bias": "none",
        "quantization": None,
    }
    assert a["template"] == "neural_chat" and a["loss_on"] == "assistant"
    ds = a["deepspeed"]
    zero = ds["zero_optimization"]
    assert zero["stage"] == 2 and zero["allgather_partitions"] is True
    assert zero["allgather_bucket_size"] == 5e8 and zero["reduce_bucket_size"] == 5e8 and zero["contiguous_gradients"]
    assert ds["optimizer"] == {
        "type": "AdamW",
        "params": {"lr": "auto", "betas": "auto", "eps": 1e-6, "weight_decay": "auto"},
    }
    assert ds["scheduler"]["type"] == "WarmupDecayLR" and ds["scheduler"]["params"]["warmup_type"] == "cosine"
    assert a["adam_epsilon"] == 1e-6


def test_sft_launch_is_gaudi_spawn_with_deepspeed(plan):
    launch = plan.stage("sft").launch
    assert launch["launcher"] == "gaudi_spawn"
    cmd = launch["command"]
    assert cmd[:6] == [
        "python",
        "-m",
        "neuralchat_recipes.backends.gaudi_spawn",
        "--world_size",
        "8",
        "--use_deepspeed",
    ]
    assert cmd[-2:] == ["--stage", "sft"]
    a = plan.stage("sft").args.view()
    assert a["use_habana"] is True and a["use_lazy_mode"] is True and a["ddp_backend"] == "hccl"
    assert a["gaudi_config"] == {"use_fused_adam": True, "use_fused_clip_norm": True, "use_torch_autocast": True}


def test_dpo_matches_seed_000(plan):
    dpo = plan.stage("dpo")
    a = dpo.args.view()
    assert dpo.datasets["dataset"]["hub_id"] == "Intel/orca_dpo_pairs"
    assert a["learning_rate"] == 5e-4 and a["max_steps"] == 1000 and a["num_train_epochs"] is None
    assert a["per_device_train_batch_size"] == 8 and a["global_batch_size"] == 64
    assert a["lr_scheduler_type"] == "cosine" and a["warmup_steps"] == 100
    assert a["max_length"] == 1536 and a["max_prompt_length"] == 1024
    assert a["pad_to_max"] is True and a["gradient_checkpointing"] is True and a["bf16"] is True
    assert (a["save_steps"], a["logging_steps"]) == (10, 10)
    assert dpo.peft["r"] == 16 and dpo.peft["alpha"] == 16 and dpo.peft["dropout"] == 0.05
    assert dpo.peft["target_modules"] == ["k_proj", "q_proj", "v_proj"] and dpo.peft["all_linear"] is False
    assert a["reference_model"] == "policy with adapter disabled"


def test_dpo_on_one_card_is_the_seed_command_8_by_8():
    a = plan_for("recipe=neural_chat_v3", "hardware=gaudi2_1x").stage("dpo").args.view()
    assert (a["per_device_train_batch_size"], a["gradient_accumulation_steps"]) == (8, 8)


def test_global_batch_means_the_same_on_any_world_size():
    for hw, world in (("gaudi2_1x", 1), ("gaudi2_4x", 4), ("gaudi2_8x", 8), ("gpu_8x", 8)):
        plan = plan_for("recipe=neural_chat_v3", f"hardware={hw}")
        a = plan.stage("sft").args.view()
        assert a["per_device_train_batch_size"] * a["gradient_accumulation_steps"] * world == 64, hw
