"""The default demo end to end on this CPU: train, merge, DPO, evaluate; re-runs and changes."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import assert_trains_as_the_padded_run, run_cli

pytestmark = pytest.mark.slow

SECRET = "hf_s3cr3t_value_for_tests"


def statuses(stdout: str) -> dict[str, str]:
    out = {}
    for line in stdout.splitlines():
        m = re.match(r"^(\w+)\s+(sft|merge|dpo|eval|generate)\s+(ran|cached)\s", line)
        if m:
            out[m.group(1)] = m.group(3)
    return out


def latest_summary(root: Path) -> dict:
    runs = sorted((root / "runs").iterdir(), key=lambda p: p.stat().st_mtime)
    return json.loads((runs[-1] / "summary.json").read_text())


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo") / "outputs"
    proc = run_cli(
        f"output_root={root}", "hub_token_env=MY_HUB_TOKEN", env={"MY_HUB_TOKEN": SECRET, "WANDB_API_KEY": SECRET}
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return root, proc


def test_default_command_runs_the_tiny_recipe(demo):
    root, proc = demo
    assert statuses(proc.stdout) == {s: "ran" for s in ("sft", "merge", "dpo", "merge_dpo", "eval")}
    assert not list(root.glob("staging/*.lock"))  # each stage's lock file goes with its lock


def test_the_run_report_has_the_stage_table_curves_and_results(demo):
    root, proc = demo
    run_dir = Path(latest_summary(root)["run_dir"])
    report = (run_dir / "report.md").read_text()
    for stage in ("sft", "merge", "dpo", "merge_dpo", "eval"):
        assert f"| {stage} | " in report
    assert "![Loss per stage](loss.png)" in report
    assert "![Rewards](rewards.png)" in report
    assert "| final |" in report and "| base |" in report and "exact match" in report
    from PIL import Image

    for name in ("loss.png", "rewards.png"):
        with Image.open(run_dir / name) as image:
            assert image.size[0] >= 600 and image.size[1] >= 400
    assert f"report:      {run_dir / 'report.md'}" in proc.stdout
    assert "final model:" in proc.stdout
    assert re.search(r"\[sft\] step \d+/500", proc.stderr), "progress lines while training"


def test_sft_loss_falls_and_dpo_reward_accuracy_rises(demo):
    root, _ = demo
    stages = {s["name"]: s["metrics"] for s in latest_summary(root)["stages"]}
    assert stages["sft"]["last_loss"] < 0.5 * stages["sft"]["first_loss"]
    dpo = stages["dpo"]
    assert dpo["last_rewards/accuracies"] > dpo["first_rewards/accuracies"]
    assert dpo["last_rewards/margins"] > dpo["first_rewards/margins"]


def test_final_model_is_better_than_the_untrained_one(demo):
    root, _ = demo
    results = {s["name"]: s["metrics"] for s in latest_summary(root)["stages"]}["eval"]["results"]
    base, sft, final = results["base"], results["merge"], results["final"]
    assert base["exact_match"] <= 0.05 and final["exact_match"] >= 0.5
    assert final["answer_loss"] < base["answer_loss"] / 5
    assert final["preference_margin"] > sft["preference_margin"]  # what DPO adds on top of SFT
    assert final["preference_accuracy"] >= sft["preference_accuracy"] > base["preference_accuracy"]


def test_merged_model_loads_with_plain_transformers_and_generates(demo):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root, proc = demo
    final = Path(re.search(r"final model: (\S+)", proc.stdout).group(1))  # the default run's (later tests change it)
    assert (final / "model.safetensors").is_file() and not list(final.glob("adapter_*"))
    tokenizer = AutoTokenizer.from_pretrained(final)
    model = AutoModelForCausalLM.from_pretrained(final)
    messages = [
        {"role": "system", "content": "You are a helpful, respectful and honest assistant."},
        {"role": "user", "content": "What is 2 plus 3 ?"},
    ]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("### Assistant:\n") and "### User:\nWhat is 2 plus 3 ?</s>" in prompt
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    answer = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert re.fullmatch(r"2 plus 3 is \d+ \.", answer.strip()), answer


def test_artifacts_have_manifests_without_secrets(demo):
    root, _ = demo
    for path in root.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".yaml", ".txt", ".jsonl"):
            assert SECRET not in path.read_text(errors="ignore"), path
    for art in (root / "artifacts").iterdir():
        manifest = json.loads((art / "manifest.json").read_text())
        assert manifest["fingerprint"].startswith(art.name.split("-", 1)[1])
        assert {"config", "versions", "metrics", "wall_time_s", "inputs"} <= set(manifest)
        assert manifest["versions"]["transformers"]
    dpo = json.loads((next((root / "artifacts").glob("dpo-*")) / "manifest.json").read_text())
    assert dpo["metrics"]["reference_model"] == "policy with adapter disabled"  # no second copy of the weights
    sft = next((root / "artifacts").glob("sft-*"))
    assert json.loads((sft / "manifest.json").read_text())["tokens_seen"] > 0
    assert (sft / "adapter_model.safetensors").is_file() and (sft / "tokenizer_config.json").is_file()


def test_rerun_skips_every_stage_and_changing_beta_reruns_dpo_onward(demo):
    root, _ = demo
    before = {p.name: p.stat().st_mtime for p in (root / "artifacts").iterdir()}
    again = run_cli(f"output_root={root}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert set(statuses(again.stdout).values()) == {"cached"}
    assert "skipped: finished earlier" in again.stderr
    assert {p.name: p.stat().st_mtime for p in (root / "artifacts").iterdir()} == before  # nothing rewritten

    beta = run_cli(f"output_root={root}", "dpo.beta=0.2", "dpo.max_steps=20")
    assert beta.returncode == 0, beta.stderr[-3000:]
    assert statuses(beta.stdout) == {
        "sft": "cached",
        "merge": "cached",
        "dpo": "ran",
        "merge_dpo": "ran",
        "eval": "ran",
    }
    for name, mtime in before.items():  # earlier artifacts are untouched
        assert (root / "artifacts" / name).stat().st_mtime == mtime
    # the evaluation re-ran for the new final model only: base and SFT scores come from the score cache
    evals = sorted(root.glob("artifacts/eval-*/manifest.json"), key=lambda p: p.stat().st_mtime)
    first, second = (json.loads(p.read_text())["metrics"] for p in (evals[0], evals[-1]))
    assert second["cached_models"] == ["base", "merge"], second.get("cached_models")
    assert second["results"]["merge"] == first["results"]["merge"]
    assert second["results"]["final"] != first["results"]["final"]
    assert "base: scores of this model, settings and data from an earlier run" in beta.stderr


def test_a_sweep_over_dpo_beta_trains_sft_once(tmp_path):
    proc = run_cli(
        "-m",
        "pipeline=[sft,merge,dpo]",
        "sft.max_steps=20",
        "dpo.max_steps=3",
        "dpo.beta=0.1,0.2",
        f"output_root={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("[sft] running sft stage") == 1 and proc.stderr.count("[dpo] running dpo stage") == 2
    assert len(list(tmp_path.glob("artifacts/sft-*"))) == 1 and len(list(tmp_path.glob("artifacts/dpo-*"))) == 2


def test_generate_stage_answers_prompts_with_the_merged_model(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        json.dumps({"prompt": "Compute 1 + 6 ."}) + "\n" + json.dumps({"prompt": "What is 9 plus 0 ?"}) + "\n"
    )
    proc = run_cli(
        "pipeline=[sft,merge,generate]",
        "+stage@generate=generate",
        "sft.max_steps=300",
        'generate.prompts=["What is 2 plus 3 ?","Add 4 and 4 ."]',
        f"generate.prompts_file={prompts}",
        "generate.max_new_tokens=8",
        "generate.batch_size=2",  # no system prompt given: the SFT data's default one, as in training
        f"output_root={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [
        json.loads(line)
        for line in (next(tmp_path.glob("artifacts/generate-*")) / "generations.jsonl").read_text().splitlines()
    ]
    assert [r["prompt"] for r in rows] == [
        "What is 2 plus 3 ?",
        "Add 4 and 4 .",
        "Compute 1 + 6 .",
        "What is 9 plus 0 ?",
    ]
    assert all(re.fullmatch(r"\d plus \d is \d+ \.", r["completion"]) for r in rows), rows


def dpo_metrics(root: Path, *overrides: str) -> dict:
    """The manifest metrics of a DPO stage run alone from the base model, logging every step."""
    proc = run_cli("pipeline=[dpo]", "dpo.input=base", "dpo.logging_steps=1", *overrides, f"output_root={root}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((next((root / "artifacts").glob("dpo-*")) / "manifest.json").read_text())["metrics"]


def test_reference_scored_before_training_matches_each_pair(tmp_path):
    """At step 1 the policy is the reference (LoRA B = 0): every reward is 0 only if each pair got its own
    precomputed reference log-probs back (they are scored sorted by length, then put back in order)."""

    def first_step(precompute: str) -> dict:
        metrics = dpo_metrics(tmp_path / precompute, "dpo.max_steps=2", f"dpo.precompute_ref_log_probs={precompute}")
        assert ("reference_scored_before_training_s" in metrics) == (precompute == "true")
        return metrics["history"][0]

    scored, inline = first_step("true"), first_step("false")
    assert (
        scored["rewards/chosen"] == 0
        and scored["rewards/rejected"] == 0
        and scored["loss"] == pytest.approx(0.6931, abs=1e-4)
    )
    assert scored["logps/chosen"] == pytest.approx(inline["logps/chosen"], rel=1e-5)
    assert scored["loss"] == pytest.approx(inline["loss"], rel=1e-6)

    # without an adapter, scoring the reference up front spares the frozen copy TRL would keep
    proc = run_cli(
        "pipeline=[dpo]", "dpo.input=base", "peft@dpo.peft=none", "dpo.max_steps=1", f"output_root={tmp_path / 'full'}"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((next((tmp_path / "full" / "artifacts").glob("dpo-*")) / "manifest.json").read_text())
    assert manifest["metrics"]["reference_model"] == "input model, scored before training"
    assert "Computing reference log probs" not in proc.stderr  # TRL's progress bar stays quiet


def test_padding_free_dpo_trains_as_the_padded_one(tmp_path):
    """Each batch's chosen and rejected sequences in one unpadded row: the same log-probs, losses and rewards
    step by step as the padded batches."""

    def metrics(padding_free: str) -> dict:
        return dpo_metrics(tmp_path / padding_free, "dpo.max_steps=3", f"dpo.padding_free={padding_free}")

    assert_trains_as_the_padded_run(
        metrics("true"), metrics("false"), ("loss", "logps/chosen", "logps/rejected", "rewards/margins")
    )


def test_talk_to_the_final_model_one_shot_and_interactively(demo):
    from transformers import AutoTokenizer

    root, proc = demo
    final = Path(re.search(r"final model: (\S+)", proc.stdout).group(1))  # the default run's (later tests change it)
    # the saved chat template prompts as training did: the data's default system prompt comes with it
    tokenizer = AutoTokenizer.from_pretrained(final)
    user = [{"role": "user", "content": "Hi"}]
    text = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    assert text.startswith("### System:\nYou are a helpful, respectful and honest assistant.")

    one = run_cli("mode=generate", "prompt=What is 6 plus 1 ?", f"output_root={root}")
    assert one.returncode == 0, one.stderr[-3000:]
    assert re.fullmatch(r"6 plus 1 is \d+ \.\n", one.stdout), one.stdout  # the answer alone, on stdout
    assert f"model: {final}" in one.stderr

    talk = subprocess.run(
        [sys.executable, "-m", "neuralchat_recipes", "mode=chat", f"output_root={root}"],
        input="What is 2 plus 3 ?\n/reset\nAdd 4 and 4 .\n/exit\n",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert talk.returncode == 0, talk.stderr[-3000:]
    answers = re.findall(r"model> (.*)", talk.stdout)
    assert len(answers) == 2 and all(re.fullmatch(r"\d plus \d is \d+ \.", a) for a in answers), talk.stdout
    assert "(new conversation)" in talk.stdout


def test_talking_before_training_says_to_run_first(tmp_path):
    proc = run_cli("mode=generate", "prompt=Hi", f"output_root={tmp_path}")
    assert proc.returncode == 2
    assert "final model (stage `merge_dpo`) has not been trained with these settings yet" in proc.stderr
    assert "error:" in run_cli("mode=generate", f"output_root={tmp_path}").stderr  # no prompt: named


def test_the_profiles_thread_count_reaches_an_in_process_stage_and_is_recorded(tmp_path, demo):
    proc = run_cli("pipeline=[sft]", "sft.max_steps=2", "hardware.omp_num_threads=1", f"output_root={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (manifest,) = tmp_path.glob("artifacts/sft-*/manifest.json")
    assert json.loads(manifest.read_text())["metrics"]["torch_threads"] == 1
    root, _ = demo  # the default chooses (backends/threads.py) and records its choice too
    recorded = {
        json.loads(m.read_text())["metrics"].get("torch_threads") for m in root.glob("artifacts/*/manifest.json")
    }
    assert recorded and all(isinstance(n, int) and n >= 1 for n in recorded), recorded
