"""The lm_eval harness on a local multiple-choice task (offline), before and after training."""

import json

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow
SYS = "You are a helpful, respectful and honest assistant."


def write_task(directory):
    rows = [
        {
            "question": f"What is {a} plus {b} ?",
            "choices": [f"{a} plus {b} is {a + b} .", f"{a} plus {b} is {a + b + 1} ."],
            "label": 0,
        }
        for a in range(6)
        for b in range(6)
    ]
    (directory / "arith.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (directory / "arith.yaml").write_text(f"""task: tiny_arith_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {directory / "arith.jsonl"}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
""")


def test_lm_eval_local_task_scores_trained_above_base(tmp_path):
    pytest.importorskip("lm_eval")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    write_task(tasks)
    proc = run_cli(
        "pipeline=[sft,merge,eval]",
        "eval.harness=lm_eval",
        "eval.tasks=[tiny_arith_mc]",
        f"eval.include_path={tasks}",
        "eval.apply_chat_template=true",
        f"eval.system_instruction='{SYS}'",
        "eval.compare=[base]",
        "eval.batch_size=8",
        f"output_root={tmp_path / 'out'}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((next((tmp_path / "out").glob("artifacts/eval-*")) / "metrics.json").read_text())["results"]
    assert results["final"]["tiny_arith_mc/acc"] >= 0.9
    assert results["final"]["tiny_arith_mc/acc"] > results["base"]["tiny_arith_mc/acc"]
    assert "tiny_arith_mc/acc" in proc.stdout  # shown in the summary table
