"""What goes wrong once a run has started gets a sentence that names the key and the fix, not a traceback;
nothing garbage is published; secrets stay out of every file the engine writes."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow

SFT = ["recipe=tiny", "pipeline=[sft]", "sft.num_train_epochs=null"]


def tiny_model_dir(tmp_path: Path, name: str) -> Path:
    from neuralchat_recipes.tiny_model import resolve_builtin

    target = tmp_path / name
    shutil.copytree(resolve_builtin("builtin:tiny-llama"), target)
    return target


def assert_sentence(proc, code: int, *expected: str) -> None:
    assert proc.returncode == code, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for text in expected:
        assert text in proc.stderr, proc.stderr[-3000:]


def test_a_diverging_stage_stops_and_publishes_nothing(tmp_path):
    proc = run_cli(*SFT, "sft.max_steps=30", "sft.save_steps=1", "sft.learning_rate=1e30", f"output_root={tmp_path}")
    assert_sentence(proc, 1, "training diverged at step", "the loss became nan", "sft.learning_rate")
    assert not list(tmp_path.glob("artifacts/sft-*")), "a diverged stage published an artifact"
    kept = list(tmp_path.glob("staging/sft-*/checkpoints/checkpoint-1/trainer_state.json"))
    assert kept, "the checkpoints before the divergence are kept"


def test_lora_targets_the_model_does_not_have_name_the_ones_it_has(tmp_path):
    proc = run_cli(*SFT, "sft.max_steps=2", "sft.peft.target_modules=[nonexistent_proj]", f"output_root={tmp_path}")
    assert_sentence(proc, 2, "`sft.peft.target_modules` = ['nonexistent_proj']", "q_proj", "sft.peft.all_linear")


def test_a_model_with_its_own_code_names_trust_remote_code(tmp_path):
    model = tiny_model_dir(tmp_path, "custom")
    config = json.loads((model / "config.json").read_text())
    config.update(
        model_type="my_custom_lm",
        auto_map={"AutoConfig": "configuration_my.MyConfig", "AutoModelForCausalLM": "modeling_my.MyLM"},
    )
    (model / "config.json").write_text(json.dumps(config))
    proc = run_cli(*SFT, "sft.max_steps=2", f"model.path={model}", f"output_root={tmp_path / 'out'}")
    assert_sentence(proc, 2, "`model.trust_remote_code`", "model.trust_remote_code=true")


def test_a_pickle_checkpoint_that_holds_code_is_refused_with_a_sentence(tmp_path):
    import torch
    from safetensors.torch import load_file

    model = tiny_model_dir(tmp_path, "pickled")
    weights = load_file(str(model / "model.safetensors"))
    (model / "model.safetensors").unlink()

    class Payload:
        def __reduce__(self):
            return (print, ("PAYLOAD RAN",))

    torch.save({**weights, "extra": Payload()}, model / "pytorch_model.bin")
    refused = run_cli(*SFT, "sft.max_steps=2", f"model.path={model}", f"output_root={tmp_path / 'a'}")
    assert_sentence(refused, 2, "no safetensors weights found", "model.allow_pickle=true")
    opted_in = run_cli(
        *SFT, "sft.max_steps=2", f"model.path={model}", "model.allow_pickle=true", f"output_root={tmp_path / 'b'}"
    )
    assert_sentence(opted_in, 2, "pickle checkpoint holds more than tensors", "a reference to print")
    assert "PAYLOAD RAN" not in opted_in.stdout + opted_in.stderr


def test_offline_hub_model_and_dataset_are_named_before_anything_trains(tmp_path):
    proc = run_cli(*SFT, "sft.max_steps=2", "model.path=someorg/not-cached-model", f"output_root={tmp_path}")
    assert_sentence(proc, 2, "`model.path` = 'someorg/not-cached-model'", "HF_HUB_OFFLINE=1", "hf download")
    assert "running sft stage" not in proc.stderr
    proc = run_cli(*SFT, "sft.max_steps=2", "dataset@sft.dataset=alpaca", f"output_root={tmp_path}")
    assert_sentence(proc, 2, "hub dataset 'tatsu-lab/alpaca' cannot be loaded", "sft.dataset.hub_id=null")


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None, reason="mounting a small tmpfs needs root")
def test_a_full_disk_names_output_root_and_the_run_resumes_once_space_is_freed(tmp_path):
    disk = tmp_path / "small"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1200k", "tmpfs", str(disk)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        args = [*SFT, "peft@sft.peft=none", "sft.max_steps=4", "sft.save_steps=2", f"output_root={disk / 'out'}"]
        proc = run_cli(*args)
        assert_sentence(proc, 2, "`output_root`: stage sft ran out of space", "run the same command again")
        assert not list(disk.glob("out/artifacts/sft-*"))
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        again = run_cli(*args)
        assert again.returncode == 0, again.stderr[-3000:]
        assert list(disk.glob("out/artifacts/sft-*/model.safetensors"))
    finally:
        subprocess.run(["umount", "-l", str(disk)])


def test_secrets_are_scrubbed_from_metrics_written_by_the_engine(tmp_path):
    secret = "hf_scrubme0123456789"
    problem = {  # whatever the untrained model writes lands in a string; the test fails naming the secret
        "task_id": "leak/0",
        "prompt": 'def one():\n    return 1\n\n_ = """',
        "canonical_solution": '"""\n',
        "test": f'"""\n\ndef check(candidate):\n    raise AssertionError("{secret}")\n',
        "entry_point": "one",
    }
    data = tmp_path / "humaneval.jsonl"
    data.write_text(json.dumps(problem) + "\n")
    proc = run_cli(
        "recipe=tiny",
        "pipeline=[eval]",
        "eval.harness=pass_at_k",
        "dataset@eval.dataset=humaneval",
        "eval.dataset.hub_id=null",
        f"eval.dataset.path={data}",
        "eval.max_new_tokens=4",
        "eval.compare=[]",
        f"output_root={tmp_path / 'out'}",
        env={"HF_TOKEN": secret},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = [p for p in (tmp_path / "out").rglob("*") if p.is_file() and p.suffix in (".json", ".md", ".jsonl")]
    assert any(p.name == "metrics.json" for p in written)
    for path in written:
        assert secret not in path.read_text(errors="replace"), path
    metrics = json.loads(next((tmp_path / "out").glob("artifacts/eval-*/metrics.json")).read_text())
    assert "***" in metrics["results"]["final"]["per_problem"][0]["reasons"][0]


def test_rows_cut_by_truncation_are_counted_in_the_manifest_and_warned_about(tmp_path):
    proc = run_cli(*SFT, "sft.max_steps=2", "sft.max_seq_length=30", f"output_root={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads(next(tmp_path.glob("artifacts/sft-*/manifest.json")).read_text())
    rows = manifest["metrics"]["rows"]["train"]
    assert rows == {"rows": 300, "truncated": 300, "dropped": 0}  # every answer's end cut (its rows are ~33 tokens)
    assert "warning:" in proc.stderr and "raise `sft.max_seq_length`" in proc.stderr


def test_the_final_model_line_names_the_pipelines_product_even_when_it_is_an_adapter(tmp_path):
    proc = run_cli("recipe=tiny", "pipeline=[sft,merge,dpo]", "dpo.max_steps=2", f"output_root={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("final model:"))
    assert "/artifacts/dpo-" in line and "an adapter on" in line and "/artifacts/merge-" in line
