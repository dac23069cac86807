"""The new kinds at plan time: what they refuse, and what their errors say (no training)."""

import pytest

from neuralchat_recipes.config import ConfigError
from tests.conftest import compose_recipe, plan_for


def error_of(*overrides) -> str:
    with pytest.raises(ConfigError) as info:
        plan_for(*overrides)
    return str(info.value)


@pytest.mark.parametrize("stage", ["simpo", "kto", "orpo"])
def test_kinds_optimum_habana_has_no_trainer_for_are_refused_on_gaudi_naming_why(stage):
    msg = error_of("recipe=tiny_preference", "hardware=gaudi2_8x")
    assert f"`{stage}`: a " in msg and "does not run on hardware 'gaudi2_8x'" in msg and "cpu, cuda or xpu" in msg


RM_GRPO = (
    "recipe=tiny_grpo",
    "pipeline=[sft,merge,reward,grpo]",
    "+stage@reward=reward",
    "+dataset@reward.dataset=tiny_pairs",
    "+peft@reward.peft=tiny_dpo_lora",
)


def test_grpo_plans_on_gaudi_with_optimum_habanas_trainer_and_the_reward_model_is_refused():
    plan = plan_for("recipe=tiny_grpo", "hardware=gaudi2_8x")
    assert plan.stage("grpo").launch["launcher"] == "gaudi_spawn"
    msg = error_of(*RM_GRPO, "hardware=gaudi2_8x")
    assert "`reward`: a reward stage does not run on hardware 'gaudi2_8x'" in msg and "`grpo`" not in msg


def test_kto_on_pairs_without_conversion_names_the_key_and_the_fix():
    msg = error_of("recipe=tiny_preference", "kto.from_pairs=false")
    assert "`kto.dataset` = 'tiny_pairs'" in msg and "unpaired examples" in msg and "kto.from_pairs=true" in msg
    assert msg.count("kto.from_pairs=true") == 1


def test_an_unknown_reward_function_gets_a_did_you_mean():
    msg = error_of("recipe=tiny_grpo", "grpo.rewards=[{name: final_anwser}]")
    assert "no reward function 'final_anwser'; did you mean 'final_answer'?" in msg


def test_a_reward_model_reward_must_name_an_earlier_reward_stage():
    msg = error_of(*RM_GRPO, "grpo.rewards=[{name: reward_model, stage: merge}]")
    assert "`grpo.rewards[0]` (reward_model): `stage` = 'merge' is not an earlier reward stage" in msg
    assert "earlier reward stages: reward" in msg
    assert "needs `stage`" in error_of(*RM_GRPO, "grpo.rewards=[{name: reward_model}]")
    plan = plan_for(*RM_GRPO, "grpo.rewards=[{name: final_answer}, {name: reward_model, stage: reward}]")
    assert "reward" in [i.stage for i in plan.stage("grpo").inputs]  # the reward model runs before GRPO


def test_grpo_batches_hold_whole_groups():
    msg = error_of("recipe=tiny_grpo", "grpo.global_batch_size=12")
    assert "`global_batch_size` (12) counts completions and must be a multiple of `num_generations` (8)" in msg


def test_dpo_loss_types_are_the_installed_trls_with_a_did_you_mean():
    msg = error_of("recipe=tiny", "dpo.loss_type=ipp")
    assert "'ipp' is not a DPO loss of the installed TRL; did you mean 'ipo'?" in msg
    plan = plan_for("recipe=tiny", "dpo.loss_type=[sigmoid,bco_pair,sft]", "dpo.loss_weights=[0.8,0.2,1.0]")
    assert plan.stage("dpo").args.loss_type == ["sigmoid", "bco_pair", "sft"]
    assert "one per loss" in error_of("recipe=tiny", "dpo.loss_type=[sigmoid,sft]", "dpo.loss_weights=[1.0]")
    # optimum-habana's GaudiDPOConfig takes one loss type and no weights: refused at plan time, not dropped
    msg = error_of("recipe=neural_chat_v3", "hardware=gaudi2_8x", "dpo.loss_type=[sigmoid,sft]")
    assert "`dpo.loss_type` / `dpo.loss_weights`: hardware 'gaudi2_8x' (hpu) trains DPO with one loss type" in msg
    assert "loss_weights" not in plan_for("recipe=tiny").stage("dpo").args.dpo_config_extra()


def test_a_reward_model_is_not_what_the_next_stage_continues_from():
    from neuralchat_recipes.graph import upstream_of

    recipe = compose_recipe(*RM_GRPO, "grpo.input=null")
    assert upstream_of(recipe, "grpo") == "merge"  # the stage before it is the reward model; it continues from merge
    msg = error_of(*RM_GRPO, "grpo.input=reward")
    assert "`grpo`: its input 'reward' produces a reward model" in msg


def test_kto_rows_read_text_or_turns_and_name_a_bad_label():
    from neuralchat_recipes.data.formats import DataError, convert_rows

    rows = [
        {"prompt": "Add 2 and 3 .", "completion": "2 plus 3 is 5 .", "label": True},
        {
            "prompt": [{"role": "user", "content": "Add 2 and 2 ."}],
            "completion": [{"role": "assistant", "content": "2 plus 2 is 5 ."}],
            "label": False,
        },
    ]
    out = convert_rows(rows, "kto", "unpaired", "kto.jsonl")
    assert out[0] == {
        "prompt": [{"role": "user", "content": "Add 2 and 3 ."}],
        "completion": "2 plus 3 is 5 .",
        "label": True,
    }
    assert out[1]["completion"] == "2 plus 2 is 5 ." and out[1]["label"] is False
    with pytest.raises(DataError, match=r"kto.jsonl, row 1: column 'label' must be true \(desirable\) or false"):
        convert_rows([{"prompt": "a", "completion": "b", "label": "yes"}], "kto", "unpaired", "kto.jsonl")


def test_an_evaluation_judges_earlier_reward_models_on_pairs():
    msg = error_of("recipe=tiny_preference", "eval.reward_models=[merge]")
    assert "`eval.reward_models`: 'merge' is not an earlier reward stage; earlier reward stages: reward" in msg
    msg = error_of("recipe=tiny_preference", "eval.preference_dataset=null")
    assert "`eval.reward_models`: a reward model is judged on preference pairs" in msg
    plan = plan_for("recipe=tiny_preference")
    assert plan.stage("eval").inputs[-1].stage == "reward"  # after the compared models
    assert plan.stage("eval").args.reward_models == {"reward": "neural_chat"}


def test_dpo_runs_padding_free_where_the_device_attends_per_sample():
    assert plan_for("recipe=tiny").stage("dpo").args.padding_free  # cpu: per-sample attention
    assert not plan_for("recipe=tiny", "dpo.pad_to_max=true").stage("dpo").args.padding_free
    assert not plan_for("recipe=neural_chat_v3", "hardware=gaudi2_8x").stage("dpo").args.padding_free  # static shapes
    msg = error_of("recipe=tiny", "dpo.padding_free=true", "dpo.pad_to_max=true")
    assert "`dpo.padding_free` and `dpo.pad_to_max` contradict each other" in msg
    msg = error_of("recipe=neural_chat_v3", "hardware=gaudi2_8x", "dpo.padding_free=true", "dpo.pad_to_max=false")
    assert "`dpo.padding_free`: hardware 'gaudi2_8x' (hpu) has no per-sample attention" in msg


def test_the_other_preference_kinds_run_padding_free_too():
    plan = plan_for("recipe=tiny_preference")
    assert all(plan.stage(name).args.padding_free for name in ("simpo", "kto", "orpo"))  # cpu: per-sample attention
    assert not plan_for("recipe=tiny_preference", "orpo.padding_free=false").stage("orpo").args.padding_free
