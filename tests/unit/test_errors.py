"""Bad configs tried as a new user would: each error names the key, the value and what to change."""

import subprocess
import sys

import pytest

from neuralchat_recipes.config import ConfigError
from tests.conftest import compose_recipe, plan_for


def error_of(*overrides) -> str:
    with pytest.raises(ConfigError) as info:
        plan_for(*overrides)
    return str(info.value)


def test_misspelt_stage_key_suggests_the_right_one():
    msg = error_of("recipe=neural_chat_v3", "sft.learnig_rate=3e-4")
    assert "`sft.learnig_rate`" in msg and "did you mean `sft.learning_rate`" in msg and "3e-4" in msg


def test_misspelt_nested_and_top_level_keys():
    assert "did you mean `dpo.peft.r`" in error_of("recipe=neural_chat_v3", "dpo.peft.rank=4")
    assert "did you mean `mode`" in error_of("recipe=tiny", "moed=plan")


def test_wrong_type_names_key_value_and_expectation():
    msg = error_of("recipe=neural_chat_v3", "hardware=gaudi2_8x", "sft.learning_rate=fast")
    assert "`sft.learning_rate` = 'fast'" in msg and "valid number" in msg


def test_out_of_range_and_bad_literal():
    assert "`dpo.beta` = -1" in error_of("recipe=neural_chat_v3", "hardware=gaudi2_8x", "dpo.beta=-1")
    msg = error_of("recipe=neural_chat_v3", "hardware=gaudi2_8x", "sft.lr_scheduler_type=cosin")
    assert "`sft.lr_scheduler_type` = 'cosin'" in msg and "'cosine'" in msg


def test_unknown_group_option_lists_choices_and_close_match():
    msg = error_of("recipe=neural_chat_v3", "hardware=gaudi2_8", "mode=plan")
    assert "`hardware=gaudi2_8`" in msg and "did you mean 'gaudi2_8x'" in msg and "gaudi2_1x" in msg
    msg = error_of("recipe=neural_chat", "mode=plan")
    assert "did you mean 'neural_chat_v3'" in msg


def test_dpo_needs_a_preference_dataset():
    msg = error_of("recipe=neural_chat_v3", "hardware=gaudi2_8x", "dataset@dpo.dataset=slimorca")
    assert "`dpo.dataset` = 'slimorca'" in msg and "preference dataset" in msg and "orca_dpo_pairs" in msg


def test_merge_needs_an_upstream_lora_adapter():
    msg = error_of("recipe=neural_chat_v3", "hardware=gaudi2_8x", "peft@sft.peft=prefix_tuning")
    assert "`merge`" in msg and "LoRA" in msg and "prefix_tuning" in msg
    msg = error_of("recipe=neural_chat_v3", "hardware=gaudi2_8x", "merge.input=base")
    assert "upstream adapter" in msg


def test_input_must_name_an_earlier_stage():
    msg = error_of("recipe=neural_chat_v3", "hardware=gaudi2_8x", "dpo.input=sfft")
    assert "`dpo.input` = 'sfft'" in msg and "did you mean 'sft'" in msg


def test_seq2seq_model_cannot_run_dpo():
    msg = error_of("recipe=dpo_llama2_7b_chat", "model=flan_t5_xl")
    assert "seq2seq" in msg and "`dpo`" in msg


def test_peft_method_the_model_does_not_support():
    msg = error_of(
        "recipe=instruct", "hardware=gaudi2_8x", "model=mpt_7b", "peft@sft.peft=p_tuning", "sft.packing=false"
    )
    assert "`sft.peft.method` = 'p_tuning'" in msg and "supported: lora" in msg


def test_world_size_must_divide_global_batch():
    msg = error_of("recipe=instruct", "hardware=gaudi2_8x", "sft.global_batch_size=12")
    assert "`sft.global_batch_size` = 12" in msg and "world size 8" in msg


def test_remote_code_only_when_the_model_entry_opts_in():
    msg = error_of("recipe=instruct", "hardware=gaudi2_8x", "model=mpt_7b", "model.trust_remote_code=false")
    assert "`model`" in msg and "model.trust_remote_code=true" in msg
    assert compose_recipe("recipe=instruct", "model=llama2_7b").model.trust_remote_code is False


def test_epochs_and_steps_are_exclusive():
    msg = error_of("recipe=neural_chat_v3", "hardware=gaudi2_8x", "sft.max_steps=10")
    assert "`sft`" in msg and "exactly one of `num_train_epochs` and `max_steps`" in msg


def test_missing_local_data_file_is_reported_with_the_key():
    msg = error_of(
        "recipe=instruct",
        "hardware=gaudi2_8x",
        "dataset@sft.dataset=alpaca_file",
        "sft.dataset.path=/nonexistent/alpaca_data.json",
    )
    assert "`sft.dataset.path` = '/nonexistent/alpaca_data.json'" in msg and "file not found" in msg


def test_model_too_big_for_hardware_says_not_supported_because():
    # Generation's sharding needs several devices, and says so first; without it the
    # training stage's memory is what does not fit, and the error proposes the fixes.
    msg = error_of("recipe=stack_llama2_70b", "hardware=gpu_1x", "generate.deepspeed_inference=false")
    assert "`sft` on hardware 'gpu_1x' is not supported because" in msg and "llama2_70b" in msg
    assert "`sft.peft.quantization=nf4`" in msg and "`hardware=gpu_8x`" in msg


def test_several_problems_are_all_reported():
    msg = error_of("recipe=neural_chat_v3", "hardware=gaudi2_8x", "sft.learning_rate=-1", "dpo.beta=0")
    assert "`sft.learning_rate`" in msg and "`dpo.beta`" in msg


def test_cli_exits_2_with_the_message_on_stderr_and_nothing_on_stdout():
    proc = subprocess.run(
        [sys.executable, "-m", "neuralchat_recipes", "mode=plan", "recipe=neural_chat_v3", "sft.learnig_rate=1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "did you mean `sft.learning_rate`" in proc.stderr


def test_bad_sweep_value_fails_before_any_job_runs(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "neuralchat_recipes",
            "-m",
            "mode=validate",
            "recipe=neural_chat_v3",
            "hardware=gaudi2_8x",
            "sft.peft.r=8,0",
            f"output_root={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "OK" not in proc.stdout
    assert "`sft.peft.r` = 0" in proc.stderr


def test_selecting_a_group_the_recipe_lacks_says_to_add_it():
    msg = error_of("recipe=instruct", "hardware=gpu_8x", "deepspeed@sft.deepspeed=zero3")
    assert "add one with `+deepspeed@sft.deepspeed=zero3`" in msg
    assert (
        plan_for("recipe=instruct", "hardware=gpu_8x", "+deepspeed@sft.deepspeed=zero3")
        .stage("sft")
        .args.view()["deepspeed"]
    )


def test_stage_after_an_eval_consumes_the_last_model_not_the_eval():
    plan = plan_for("recipe=tiny", "pipeline=[sft,merge,eval,dpo,merge_dpo]")
    assert plan.stage("dpo").inputs[0].stage == "merge"
    msg = error_of("recipe=tiny", "pipeline=[sft,merge,eval,dpo,merge_dpo]", "dpo.input=eval")
    assert "`dpo`: its input 'eval' produces no model (eval stages produce none)" in msg


def test_stage_reading_an_adapter_without_merge():
    msg = error_of("recipe=neural_chat_v3", "hardware=gaudi2_8x", "dpo.input=sft")
    assert "its input 'sft' produces a lora adapter" in msg and "merge stage" in msg


def test_do_eval_without_held_out_data_names_the_fix():
    msg = error_of("recipe=tiny", "sft.do_eval=true")
    assert "`sft`" in msg and "`do_eval` needs held-out data" in msg and "validation_split_percentage" in msg
    assert plan_for("recipe=tiny", "sft.do_eval=true", "sft.dataset.validation_split_percentage=10")


def test_column_mapping_keys_must_be_the_formats_columns():
    msg = error_of("recipe=instruct", "hardware=cpu", "model=tiny_llama", "sft.dataset.columns={instrction: question}")
    assert "'instrction' is not a column of format 'alpaca'" in msg and "instruction, input, output" in msg


def test_eval_split_is_for_hub_datasets():
    msg = error_of("recipe=tiny", "sft.dataset.eval_split=test")
    assert "`eval_split` names a hub split" in msg and "validation_split_percentage" in msg


def test_packing_with_virtual_token_adapters_is_refused():
    msg = error_of("recipe=tiny", "sft.packing=true", "peft@sft.peft=prompt_tuning")
    assert "`sft`: `packing` is not supported with peft method 'prompt_tuning'" in msg and "sft.packing=false" in msg


@pytest.mark.parametrize(
    "override,key",
    [
        ("sft.learning_rate=inf", "`sft.learning_rate` = inf"),
        ("dpo.beta=inf", "`dpo.beta` = inf"),
        ("sft.warmup_ratio=nan", "`sft.warmup_ratio` = nan"),
        ("dpo.peft.alpha=-inf", "`dpo.peft.alpha` = -inf"),
    ],
)
def test_non_finite_numbers_are_refused_everywhere(override, key):
    msg = error_of("recipe=tiny", override)
    assert key in msg and "finite number" in msg


def test_absurd_step_and_epoch_counts_are_refused():
    assert "`sft.max_steps` = 100000000000" in error_of(
        "recipe=tiny", "sft.num_train_epochs=null", "sft.max_steps=1e11"
    )
    assert "at most 10M" in error_of("recipe=tiny", "dpo.max_steps=20000000")
    msg = error_of("recipe=tiny", "sft.num_train_epochs=1e9")
    assert "`sft.num_train_epochs`" in msg and "at most 10,000" in msg


def test_an_empty_output_root_is_refused_rather_than_the_current_directory():
    msg = error_of("recipe=tiny", "output_root=")
    assert "`output_root`: is empty" in msg and "output_root=outputs" in msg


def test_a_misspelt_group_package_suggests_the_spelling_not_a_new_entry():
    msg = error_of("recipe=tiny", "dataset@sft.datset=alpaca")
    assert "did you mean `dataset@sft.dataset=alpaca`?" in msg
    msg = error_of("recipe=tiny", "peft@dpo.pft=lora")
    assert "did you mean `peft@dpo.peft=lora`?" in msg


def cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "neuralchat_recipes", *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    "override,expected",
    [
        ("sft." + "a" * 300 + "=1", "(304 characters): no recipe has such a key"),
        ("sft.dataset.default_system=Vous êtes", "'sft.dataset.default_system=\"Vous êtes\"'"),
        ("sft.dataset.default_system=日本語", "must be quoted"),
    ],
)
def test_overrides_hydra_cannot_read_get_a_sentence_and_exit_2(override, expected):
    proc = cli("mode=validate", override)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert expected in proc.stderr
