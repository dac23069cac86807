"""Fingerprints change when and only when something that affects a stage's output changes."""

import json

from tests.conftest import plan_for

BASE = ("recipe=neural_chat_v3", "hardware=gaudi2_8x")


def fps(*overrides):
    return {s.name: s.fingerprint for s in plan_for(*BASE, *overrides).stages}


def test_same_config_same_fingerprints():
    assert fps() == fps()


def test_dpo_beta_changes_dpo_only():
    a, b = fps(), fps("dpo.beta=0.05")
    assert a["sft"] == b["sft"] and a["merge"] == b["merge"] and a["dpo"] != b["dpo"]


def test_sft_change_propagates_downstream():
    a, b = fps(), fps("sft.learning_rate=2e-4")
    assert all(a[k] != b[k] for k in a)


def test_sft_lora_rank_changes_sft_and_downstream():
    a, b = fps(), fps("sft.peft.r=32")
    assert a["sft"] != b["sft"] and a["dpo"] != b["dpo"]


def test_cadence_and_hardware_layout_do_not_change_fingerprints():
    a = fps()
    assert fps("sft.logging_steps=1", "sft.save_steps=5", "dpo.save_total_limit=1") == a
    assert {s.name: s.fingerprint for s in plan_for("recipe=neural_chat_v3", "hardware=gaudi2_4x").stages} == a
    assert fps("sft.micro_batch_size=2") == a


def test_precision_changes_fingerprints():
    bf16 = plan_for("recipe=neural_chat_v3", "hardware=gpu_8x")
    fp32 = plan_for("recipe=neural_chat_v3", "hardware=gpu_8x", "hardware.precision=fp32")
    assert bf16.stages[0].fingerprint != fp32.stages[0].fingerprint


def test_local_data_content_is_fingerprinted(tmp_path):
    data = tmp_path / "alpaca_data.json"
    data.write_text(json.dumps([{"instruction": "a", "input": "", "output": "b"}]))
    args = ("recipe=instruct", "hardware=gaudi2_8x", "dataset@sft.dataset=alpaca_file", f"sft.dataset.path={data}")
    first = plan_for(*args).stage("sft")
    assert first.datasets["dataset"]["sha256"] and first.datasets["dataset"]["resolved_path"] == str(data)
    assert plan_for(*args).stage("sft").fingerprint == first.fingerprint
    data.write_text(json.dumps([{"instruction": "a", "input": "", "output": "c"}]))
    assert plan_for(*args).stage("sft").fingerprint != first.fingerprint


def test_output_dirs_are_content_addressed(tmp_path):
    plan = plan_for(*BASE, f"output_root={tmp_path}")
    for spec in plan.stages:
        assert spec.output_dir == str(tmp_path / "artifacts" / f"{spec.kind}-{spec.fingerprint[:16]}")


def test_lm_eval_task_files_are_fingerprinted(tmp_path):
    (tmp_path / "t.yaml").write_text("task: a\n")
    args = ("recipe=tiny", "eval.harness=lm_eval", "eval.tasks=[a]", f"eval.include_path={tmp_path}")
    first = plan_for(*args).stage("eval").fingerprint
    assert plan_for(*args).stage("eval").fingerprint == first
    (tmp_path / "t.yaml").write_text("task: b\n")
    assert plan_for(*args).stage("eval").fingerprint != first
    assert plan_for(*args).stage("sft").fingerprint == plan_for("recipe=tiny").stage("sft").fingerprint
