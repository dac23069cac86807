"""The eval stage: a task picks its default evaluation; generation-based harnesses need data."""

import pytest

from tests.conftest import plan_for
from tests.unit.test_errors import error_of


def _eval(*overrides):
    plan = plan_for("recipe=instruct", "model=tiny_llama", *overrides)
    return plan.stage("eval")


@pytest.mark.parametrize(
    "task,harness,tasks",
    [
        ("completion", "lm_eval", ["truthfulqa_mc2:0"]),
        ("chat", "lm_eval", ["truthfulqa_mc2:0"]),
    ],
)
def test_task_default_evaluation(task, harness, tasks):
    spec = _eval(f"sft.task={task}")
    assert (spec.args.view()["harness"], spec.args.view()["tasks"]) == (harness, tasks)


def test_summarization_defaults_to_rouge_on_the_held_out_split():
    spec = _eval("sft.task=summarization", "dataset@sft.dataset=cnn_dailymail")
    assert spec.args.view()["harness"] == "rouge" and spec.args.view()["held_out_of"] == "sft"
    assert spec.args.view()["held_out_dataset"]["eval_split"] == "validation"
    # base + the SFT adapter: no merge stage needed to evaluate it
    assert spec.inputs[0].stage == "sft" and spec.inputs[0].adapter_base.model == "builtin:tiny-llama"


def test_rouge_without_held_out_rows_names_the_fix():
    msg = error_of("recipe=instruct", "model=tiny_llama", "sft.task=summarization", "dataset@sft.dataset=alpaca_file")
    assert "ROUGE needs held-out summaries" in msg and "sft.dataset.validation_split_percentage=5" in msg


def test_code_generation_needs_humaneval_problems():
    msg = error_of("recipe=instruct", "model=tiny_llama", "sft.task=code-generation", "sft.packing=false")
    assert "judged by pass@k" in msg and "+dataset@eval.dataset=humaneval" in msg
    spec = _eval("sft.task=code-generation", "sft.packing=false", "+dataset@eval.dataset=humaneval")
    assert spec.args.view()["harness"] == "pass_at_k" and spec.args.view()["k"] == [1]


def test_pass_at_k_needs_enough_samples_and_task_syntax_is_checked():
    assert "raise `num_samples` to 5" in error_of(
        "recipe=tiny", "eval.harness=pass_at_k", "dataset@eval.dataset=humaneval", "eval.k=[1,5]"
    )
    assert "'arc:x' is not `name` or `name:shots`" in error_of(
        "recipe=tiny", "eval.harness=lm_eval", "eval.tasks=[arc:x]"
    )


def test_harness_task_without_an_sft_stage():
    msg = error_of("recipe=tiny", "pipeline=[eval]", "eval.harness=task")
    assert "no SFT stage before it" in msg
