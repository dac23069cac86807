"""Evaluation stages on the tiny model: ROUGE on a held-out summarization split (base + adapter,
no merge), pass@k on HumanEval-format problems run in the sandbox."""

import json
import random

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow


def test_summarization_recipe_ends_in_rouge_on_its_held_out_split(tmp_path):
    rng = random.Random(0)
    rows = []
    for i in range(150):
        a, b = rng.randrange(10), rng.randrange(10)
        rows.append(
            {
                "article": f"Today {a} and {b} were added . What is {a} plus {b} ? The result was {a + b} .",
                "highlights": f"{a} plus {b} is {a + b} .",
                "id": f"{i:040x}",
            }
        )
    data = tmp_path / "cnn.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = run_cli(
        "recipe=instruct",
        "model=tiny_llama",
        "hardware=cpu",
        "dataset@sft.dataset=cnn_dailymail",
        "sft.dataset.hub_id=null",
        "sft.dataset.revision=null",
        "sft.dataset.config_name=null",
        "sft.dataset.eval_split=null",
        f"sft.dataset.path={data}",
        "sft.dataset.validation_split_percentage=10",
        "sft.task=summarization",
        "sft.loss_on=assistant",
        "sft.num_train_epochs=null",
        "sft.max_steps=150",
        "sft.learning_rate=3e-3",
        "sft.max_seq_length=96",
        "sft.logging_steps=10",
        "sft.peft.r=16",
        "eval.max_new_tokens=10",
        "eval.compare=[base]",
        f"output_root={tmp_path / 'out'}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads(next((tmp_path / "out").glob("artifacts/eval-*/metrics.json")).read_text())
    assert metrics["harness"] == "rouge"
    final, base = metrics["results"]["final"], metrics["results"]["base"]
    assert final["examples"] == 15  # the 10% held out from training
    assert set(final) >= {"rouge1", "rouge2", "rougeL"}
    assert final["rouge1"] > 0.5 and final["rouge1"] > base["rouge1"] + 0.3, metrics["results"]


def test_pass_at_k_stage_runs_generated_code_in_the_sandbox(tmp_path):
    problems = [
        {
            "task_id": "tiny/0",
            "prompt": "def add(a, b):\n",
            "canonical_solution": "    return a + b\n",
            "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n",
            "entry_point": "add",
        },
        {
            "task_id": "tiny/1",
            "prompt": "def neg(a):\n",
            "canonical_solution": "    return -a\n",
            "test": "def check(candidate):\n    assert candidate(2) == -2\n",
            "entry_point": "neg",
        },
        {
            "task_id": "tiny/2",
            "prompt": "def one():\n",
            "canonical_solution": "    return 1\n",
            "test": "def check(candidate):\n    assert candidate() == 1\n",
            "entry_point": "one",
        },
    ]
    data = tmp_path / "humaneval.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in problems))
    proc = run_cli(
        "recipe=tiny",
        "pipeline=[eval]",
        "eval.harness=pass_at_k",
        "dataset@eval.dataset=humaneval",
        "eval.dataset.hub_id=null",
        f"eval.dataset.path={data}",
        "eval.num_samples=2",
        "eval.k=[1,2]",
        "eval.max_new_tokens=6",
        "eval.compare=[]",
        "eval.timeout_s=5",
        f"output_root={tmp_path / 'out'}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads(next((tmp_path / "out").glob("artifacts/eval-*/metrics.json")).read_text())
    final = metrics["results"]["final"]
    assert final["problems"] == 3 and "pass@1" in final and "pass@2" in final
    # the untrained tiny model writes no valid Python: every sample ran and failed, with its reason
    assert final["pass@1"] == 0 and all(len(p["reasons"]) == 2 and p["passed"] == 0 for p in final["per_problem"])
    assert all(len(p["completions"]) == 2 for p in final["per_problem"])
