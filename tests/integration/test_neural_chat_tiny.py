"""neural_chat_v3's own pipeline on CPU with the tiny model and local files in the real schemas."""

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow

SYSTEM = "You are a helpful, respectful and honest assistant."


def write_slimorca(path: Path, n: int = 60) -> None:
    with open(path, "w") as fh:
        for i in range(n):
            a, b = i % 10, (i * 7) % 10
            row = {
                "conversations": [
                    {"from": "system", "value": "" if i % 2 else SYSTEM, "weight": None},
                    {"from": "human", "value": f"What is {a} plus {b} ?", "weight": 0.0},
                    {"from": "gpt", "value": f"{a} plus {b} is {a + b} .", "weight": 1.0},
                ]
            }
            fh.write(json.dumps(row) + "\n")


def write_orca_dpo_pairs(path: Path, n: int = 40) -> None:
    with open(path, "w") as fh:
        for i in range(n):
            a, b = i % 10, (i * 3) % 10
            fh.write(
                json.dumps(
                    {
                        "system": SYSTEM if i % 3 else "",
                        "question": f"Add {a} and {b} .",
                        "chosen": f"{a} plus {b} is {a + b} .",
                        "rejected": f"{a} plus {b} is {a + b + 1} .",
                    }
                )
                + "\n"
            )


def neural_chat_overrides(tmp: Path, slimorca: Path, pairs: Path) -> list[str]:
    return [
        "recipe=neural_chat_v3",
        "hardware=cpu",
        "model=tiny_llama",
        f"output_root={tmp / 'out'}",
        "sft.dataset.hub_id=null",
        f"sft.dataset.path={slimorca}",
        "dpo.dataset.hub_id=null",
        f"dpo.dataset.path={pairs}",
        "sft.num_train_epochs=null",
        "sft.max_steps=40",
        "sft.global_batch_size=8",
        "sft.micro_batch_size=8",
        "sft.learning_rate=3e-3",
        "sft.max_seq_length=64",
        "sft.max_prompt_length=48",
        "dpo.max_steps=8",
        "dpo.warmup_steps=1",
        "dpo.global_batch_size=8",
        "dpo.max_length=64",
        "dpo.max_prompt_length=48",
        # the leaderboard tasks need the hub: score the recipe's eval stage on local rows instead
        "eval.harness=builtin",
        "+dataset@eval.dataset=tiny_eval",
        "eval.dataset.max_samples=10",
        "eval.batch_size=10",
        "eval.max_new_tokens=8",
        "generate.max_new_tokens=8",
    ]


def test_neural_chat_v3_runs_end_to_end_on_tiny_inputs(tmp_path):
    slimorca, pairs = tmp_path / "slimorca.jsonl", tmp_path / "orca_dpo_pairs.jsonl"
    write_slimorca(slimorca)
    write_orca_dpo_pairs(pairs)
    proc = run_cli(*neural_chat_overrides(tmp_path, slimorca, pairs))
    assert proc.returncode == 0, proc.stderr[-4000:]
    runs = list((tmp_path / "out" / "runs").iterdir())
    summary = json.loads((runs[0] / "summary.json").read_text())
    stages = {s["name"]: s for s in summary["stages"]}
    assert list(stages) == ["sft", "merge", "dpo", "merge_dpo", "eval", "generate"]
    assert set(stages["eval"]["metrics"]["results"]) == {"merge", "final"}  # SFT-only vs SFT + DPO
    generations = (Path(stages["generate"]["output_dir"]) / "generations.jsonl").read_text().splitlines()
    assert len(generations) == 2
    assert stages["sft"]["metrics"]["last_loss"] < stages["sft"]["metrics"]["first_loss"]
    sft_dir = next((tmp_path / "out" / "artifacts").glob("sft-*"))
    manifest = json.loads((sft_dir / "manifest.json").read_text())
    assert manifest["args"]["template"] == "neural_chat" and manifest["args"]["loss_on"] == "assistant"
    assert manifest["peft"]["r"] == 16 and manifest["peft"]["alpha"] == 64.0
    adapter = json.loads((sft_dir / "adapter_config.json").read_text())
    assert adapter["r"] == 16 and sorted(adapter["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    dpo_adapter = json.loads((next((tmp_path / "out" / "artifacts").glob("dpo-*")) / "adapter_config.json").read_text())
    assert sorted(dpo_adapter["target_modules"]) == ["k_proj", "q_proj", "v_proj"] and dpo_adapter["lora_alpha"] == 16


def test_malformed_rows_are_reported_before_training(tmp_path):
    pairs = tmp_path / "orca_dpo_pairs.jsonl"
    write_orca_dpo_pairs(pairs)
    cases = {
        "missing column": ({"conversation": []}, "missing column 'conversations'"),
        "wrong type": (
            {"conversations": [{"from": "human", "value": 5}, {"from": "gpt", "value": "x"}]},
            "conversations[0].value must be a string",
        ),
        "empty conversation": ({"conversations": []}, "empty conversation"),
    }
    for label, (bad_row, expected) in cases.items():
        slimorca = tmp_path / f"slimorca-{label.replace(' ', '_')}.jsonl"
        write_slimorca(slimorca, n=5)
        lines = slimorca.read_text().splitlines()
        lines[2] = json.dumps(bad_row)
        slimorca.write_text("\n".join(lines) + "\n")
        proc = run_cli(*neural_chat_overrides(tmp_path, slimorca, pairs))
        assert proc.returncode == 2, (label, proc.stderr[-2000:])
        assert f"{slimorca}, row 3" in proc.stderr and expected in proc.stderr, (label, proc.stderr[-2000:])
        assert not (tmp_path / "out" / "artifacts").exists(), "nothing trained"
        assert "[sft] running" not in proc.stderr


def test_unwritable_output_location_is_reported_before_training(tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where a directory should be")
    proc = run_cli("recipe=tiny", f"output_root={blocker / 'outputs'}")
    assert proc.returncode == 2
    assert "`output_root`" in proc.stderr and "cannot write there" in proc.stderr
    assert "[sft] running" not in proc.stderr


def test_instruct_recipe_packs_samples_like_itrex_concatenation(tmp_path):
    data = tmp_path / "alpaca_data.json"
    data.write_text(
        json.dumps(
            [
                {"instruction": f"Add {a} and {b} .", "input": "", "output": f"{a} plus {b} is {a + b} ."}
                for a in range(10)
                for b in range(10)
            ]
        )
    )
    proc = run_cli(
        "recipe=instruct",
        "pipeline=[sft]",
        "model=tiny_llama",
        "hardware=cpu",
        "dataset@sft.dataset=alpaca_file",
        f"sft.dataset.path={data}",
        "sft.num_train_epochs=null",
        "sft.max_steps=20",
        "sft.logging_steps=5",
        "sft.max_seq_length=128",
        "sft.learning_rate=3e-3",
        f"output_root={tmp_path / 'out'}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((next((tmp_path / "out" / "artifacts").glob("sft-*")) / "manifest.json").read_text())
    assert manifest["args"]["packing"] is True and manifest["args"]["template"] == "alpaca"
    packing = manifest["metrics"]["packing"]
    # 100 rows of ~40 tokens (alpaca preamble + instruction + answer) packed whole into 128-token blocks
    assert packing["samples"] == 100 and manifest["metrics"]["samples"] == packing["blocks"] < 40
    assert packing["non_pad_fraction_seen"] > 0.85
    assert packing["isolation"] == "per-sample causal attention" and packing["logits"] == "labelled positions only"
    assert manifest["metrics"]["attention_kernels"] == ["sdpa"]  # a CPU's choice: SDPA per sample
    assert manifest["metrics"]["last_loss"] < manifest["metrics"]["first_loss"]
