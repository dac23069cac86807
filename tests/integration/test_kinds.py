"""The kinds beyond SFT and DPO train on the tiny model and move their own metric the right way.

Held-out figures come from each stage's own evaluation of the pairs its dataset holds out
(`validation_split_percentage`), run before the first step and after the last (do_eval + eval_steps).
"""

import json
from pathlib import Path

import pytest

from tests.conftest import assert_trains_as_the_padded_run, run_cli

pytestmark = pytest.mark.slow

HELD_OUT = ["do_eval=true", "eval_steps=1000", "dataset.validation_split_percentage=20"]


def manifests(out: Path) -> dict:
    return {m["name"]: m for m in (json.loads(p.read_text()) for p in out.glob("artifacts/*/manifest.json"))}


def held_out(manifest: dict, key: str) -> tuple[float, float]:
    """(before the first step, after the last) of a held-out metric."""
    history = manifest["metrics"]["history"]
    before = next(h[key] for h in history if key in h and h["step"] == 0)
    return before, manifest["metrics"][key]


@pytest.fixture(scope="module")
def preference(tmp_path_factory):
    out = tmp_path_factory.mktemp("preference")
    proc = run_cli("recipe=tiny_preference", f"output_root={out}")  # its stages hold out 20% of their pairs
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, proc


def test_simpo_and_orpo_raise_held_out_preference_accuracy(preference):
    out, _ = preference
    stages = manifests(out)
    for name in ("simpo", "orpo"):
        before, after = held_out(stages[name], "eval_rewards/accuracies")
        assert after > before + 0.15, (name, before, after)
    assert stages["orpo"]["inputs"][0]["stage"] is None  # ORPO started from the base model


def test_kto_widens_the_gap_between_desirable_and_undesirable_rewards(preference):
    out, _ = preference
    kto = manifests(out)["kto"]["metrics"]
    assert kto["last_rewards/margins"] > kto["first_rewards/margins"] + 0.1, kto
    before, after = held_out(manifests(out)["kto"], "eval_rewards/margins")
    assert after > before + 0.1, (before, after)  # on held-out pairs too
    assert kto["samples"] == 2 * 480  # each of the 480 training pairs as a desirable and an undesirable example


def test_the_reward_model_ranks_held_out_pairs(preference):
    from transformers import AutoModelForSequenceClassification

    out, _ = preference
    reward = manifests(out)["reward"]
    assert reward["metrics"]["eval_accuracy"] > 0.8, reward["metrics"]
    assert AutoModelForSequenceClassification.from_pretrained(next(out.glob("artifacts/reward-*"))).num_labels == 1


def test_one_evaluation_compares_every_method_and_the_report_draws_their_curves(preference):
    out, proc = preference
    results = manifests(out)["eval"]["metrics"]["results"]
    assert set(results) == {"base", "merge", "merge_simpo", "merge_kto", "final", "reward"}
    assert results["final"]["preference_accuracy"] > results["base"]["preference_accuracy"]
    # the reward model, judged on the evaluation's pairs: it scores the chosen answer higher
    assert results["reward"]["preference_accuracy"] > 0.8 and results["reward"]["reward_margin"] > 0, results["reward"]
    run_dir = next((out / "runs").iterdir())
    assert (run_dir / "rewards.png").is_file() and "simpo" in proc.stdout


def test_a_rerun_skips_every_kind_and_a_changed_setting_reruns_only_its_stage_and_the_eval(preference):
    from tests.integration.test_tiny_pipeline import latest_summary

    out, _ = preference
    proc = run_cli("recipe=tiny_preference", "kto.beta=0.2", f"output_root={out}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    status = {s["name"]: s["status"] for s in latest_summary(out)["stages"]}
    assert {k for k, v in status.items() if v == "ran"} == {"kto", "merge_kto", "eval"}, status
    proc = run_cli("recipe=tiny_preference", "kto.beta=0.2", f"output_root={out}")
    assert {s["status"] for s in latest_summary(out)["stages"]} == {"cached"}


def test_a_dpo_loss_variant_combined_with_sft_raises_held_out_accuracy(tmp_path):
    proc = run_cli(
        "recipe=tiny",
        "pipeline=[sft,merge,dpo]",
        "sft.max_steps=120",
        "dpo.max_steps=40",
        "dpo.loss_type=[ipo,sft]",
        "dpo.loss_weights=[1.0,0.5]",
        *[f"dpo.{o}" for o in HELD_OUT],
        f"output_root={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    dpo = manifests(tmp_path)["dpo"]
    assert dpo["args"]["loss_type"] == ["ipo", "sft"]
    before, after = held_out(dpo, "eval_rewards/accuracies")
    assert after > before, (before, after)


def test_full_parameter_orpo_trains_a_standalone_model(tmp_path):
    from transformers import AutoModelForCausalLM

    proc = run_cli(
        "recipe=tiny_preference",
        "pipeline=[orpo]",
        "peft@orpo.peft=none",
        "orpo.max_steps=20",
        "orpo.learning_rate=1e-3",
        f"output_root={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    orpo = manifests(tmp_path)["orpo"]
    assert orpo["metrics"]["last_loss"] < orpo["metrics"]["first_loss"]
    assert AutoModelForCausalLM.from_pretrained(next(tmp_path.glob("artifacts/orpo-*")))


@pytest.fixture(scope="module")
def grpo(tmp_path_factory):
    out = tmp_path_factory.mktemp("grpo")
    proc = run_cli("recipe=tiny_grpo", f"output_root={out}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, proc


def test_grpo_raises_the_reward_and_beats_the_sft_model(grpo):
    out, proc = grpo
    stages = manifests(out)
    rewards = [h["reward"] for h in stages["grpo"]["metrics"]["history"] if "reward" in h]
    fifth = len(rewards) // 5
    assert sum(rewards[-fifth:]) > sum(rewards[:fifth]), rewards  # the last fifth of the run above the first
    results = stages["eval"]["metrics"]["results"]
    assert results["final"]["exact_match"] > results["merge"]["exact_match"], results
    assert "reward" in proc.stdout


def test_grpo_can_score_with_a_reward_model_an_earlier_stage_trained(tmp_path):
    proc = run_cli(
        "recipe=tiny_grpo",
        "pipeline=[sft,merge,reward,grpo]",
        "+stage@reward=reward",
        "+dataset@reward.dataset=tiny_pairs",
        "reward.input=merge",
        "reward.max_length=64",
        "reward.num_train_epochs=1",
        "sft.max_steps=40",
        "grpo.max_steps=4",
        "grpo.rewards=[{name: final_answer},{name: reward_model, stage: reward, weight: 0.1}]",
        f"output_root={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    grpo = manifests(tmp_path)["grpo"]
    scores = [h["rewards/reward_model/mean"] for h in grpo["metrics"]["history"] if "rewards/reward_model/mean" in h]
    assert scores and all(0 <= s <= 1 for s in scores)  # the reward model's score, squashed to [0, 1]
    assert grpo["inputs"][1]["stage"] == "reward"  # its artifact is an input: part of the fingerprint


@pytest.mark.parametrize(
    "recipe, stage, steps",
    [
        ("tiny_preference", "simpo", ["simpo.max_steps=4"]),
        ("tiny_preference", "kto", ["kto.max_steps=4"]),
        ("tiny_preference", "reward", ["reward.num_train_epochs=null", "reward.max_steps=4"]),
        ("tiny_grpo", "grpo", ["grpo.max_steps=2"]),
    ],
)
def test_each_new_kind_also_trains_every_parameter(tmp_path, recipe, stage, steps):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    proc = run_cli(
        f"recipe={recipe}",
        f"pipeline=[{stage}]",
        f"{stage}.input=base",
        f"peft@{stage}.peft=none",
        *steps,
        f"output_root={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    (artifact,) = tmp_path.glob("artifacts/*")  # one stage, one artifact (named by kind: simpo is a cpo)
    assert not (artifact / "adapter_config.json").exists()  # a whole model, no adapter
    loader = AutoModelForSequenceClassification if stage == "reward" else AutoModelForCausalLM
    assert loader.from_pretrained(artifact)


@pytest.mark.parametrize(
    "stage, keys",
    [
        ("orpo", ("loss", "nll_loss", "log_odds_ratio", "logps/chosen", "logps/rejected")),
        ("simpo", ("loss", "logps/chosen", "logps/rejected", "rewards/margins")),
        ("kto", ("loss", "logps/chosen", "logps/rejected", "rewards/margins")),
    ],
)
def test_padding_free_preference_kinds_train_as_the_padded_ones(tmp_path, stage, keys):
    """ORPO, SimPO (CPO) and KTO with each batch's sequences in one unpadded row: the same losses and
    log-probs step by step as their trainers' padded batches."""

    def metrics(padding_free: str) -> dict:
        root = tmp_path / padding_free
        proc = run_cli(
            "recipe=tiny_preference",
            f"pipeline=[{stage}]",
            f"{stage}.input=base",
            f"{stage}.max_steps=3",
            f"{stage}.logging_steps=1",
            f"{stage}.do_eval=false",
            f"{stage}.padding_free={padding_free}",
            f"output_root={root}",
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return manifests(root)[stage]["metrics"]

    # KTO's rows are single answers (and mismatched KL ones), not chosen/rejected pairs of one prompt
    assert_trains_as_the_padded_run(metrics("true"), metrics("false"), keys, pairs=stage != "kto")
