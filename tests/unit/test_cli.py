"""The command line: plan prints only JSON, validate one line, and neither imports torch."""

import json
import subprocess
import sys

CHECK_IMPORTS = """
import sys, io, contextlib
from neuralchat_recipes.cli import main
buf = io.StringIO()
with contextlib.redirect_stdout(buf):
    main({args!r})
heavy = sorted(m for m in sys.modules
               if m.split('.')[0] in ('torch', 'transformers', 'trl', 'peft', 'datasets', 'accelerate', 'deepspeed'))
print(repr(heavy))
"""


def run(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "neuralchat_recipes", *args], capture_output=True, text=True, timeout=120, cwd=cwd
    )


def test_plan_prints_json_and_nothing_else(tmp_path):
    proc = run("mode=plan", "recipe=neural_chat_v3", "hardware=gaudi2_8x", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert {"recipe", "hardware", "world_size", "stages"} <= set(plan)
    stage = plan["stages"][0]
    assert {
        "name",
        "kind",
        "inputs",
        "fingerprint",
        "output_dir",
        "model",
        "datasets",
        "peft",
        "args",
        "launch",
    } <= set(stage)
    assert {"launcher", "world_size", "command", "env"} <= set(stage["launch"])
    assert not (tmp_path / "outputs").exists()  # planning writes nothing


def test_validate_prints_one_ok_line():
    proc = run("mode=validate", "recipe=stack_llama2_70b", "hardware=gaudi2_8x")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().count("\n") == 0 and proc.stdout.startswith("OK: recipe stack_llama2_70b on gaudi2_8x")


def test_plan_and_validate_do_not_import_torch_or_transformers():
    for mode in ("plan", "validate"):
        code = CHECK_IMPORTS.format(args=[f"mode={mode}", "recipe=neural_chat_v3", "hardware=gaudi2_8x"])
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stdout


def test_multirun_sweeps_the_lora_rank(tmp_path):
    proc = run(
        "-m",
        "mode=plan",
        "recipe=neural_chat_v3",
        "hardware=gaudi2_8x",
        "sft.peft.r=8,16,32",
        f"output_root={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr
    docs = [json.loads(chunk) for chunk in proc.stdout.replace("}\n{", "}\x00{").split("\x00")]
    assert [d["stages"][0]["peft"]["r"] for d in docs] == [8, 16, 32]
    assert len({d["stages"][0]["fingerprint"] for d in docs}) == 3


def test_dpo_beta_sweep_shares_the_sft_stage(tmp_path):
    proc = run(
        "-m", "mode=plan", "recipe=neural_chat_v3", "hardware=gaudi2_8x", "dpo.beta=0.05,0.1", f"output_root={tmp_path}"
    )
    docs = [json.loads(chunk) for chunk in proc.stdout.replace("}\n{", "}\x00{").split("\x00")]
    assert docs[0]["stages"][0]["output_dir"] == docs[1]["stages"][0]["output_dir"]
    assert docs[0]["stages"][2]["output_dir"] != docs[1]["stages"][2]["output_dir"]


def test_console_script_matches_module(tmp_path):
    import shutil

    exe = shutil.which("neuralchat-recipes") or str(
        __import__("pathlib").Path(sys.executable).parent / "neuralchat-recipes"
    )
    a = subprocess.run(
        [exe, "mode=plan", "recipe=neural_chat_v3", "hardware=gaudi2_8x"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    b = run("mode=plan", "recipe=neural_chat_v3", "hardware=gaudi2_8x", cwd=tmp_path)
    assert a.returncode == 0, a.stderr
    assert json.loads(a.stdout) == json.loads(b.stdout)


def test_version_names_the_package_and_help_survives_a_closed_pipe(tmp_path):
    from importlib.metadata import version

    proc = run("--version", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == f"neuralchat-recipes {version('neuralchat-recipes')}"
    # `--help | head -1` after head has gone: the read end is closed before the command writes a byte
    import os

    read_end, write_end = os.pipe()
    os.close(read_end)
    piped = subprocess.run(
        [sys.executable, "-m", "neuralchat_recipes", "--help"], stdout=write_end, stderr=subprocess.PIPE, cwd=tmp_path
    )
    os.close(write_end)
    stderr = piped.stderr.decode()
    assert piped.returncode == 141 and "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr


def test_a_missing_hydra_plugin_is_named_with_what_installs_it(tmp_path, monkeypatch):
    import importlib.util

    from neuralchat_recipes import cli

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    (msg,) = cli._missing_plugins(["recipe=tiny", "hydra/launcher=local_parallel"])
    assert msg == (
        "`hydra/launcher=local_parallel` needs a Hydra plugin that is not installed: "
        "pip install 'neuralchat-recipes[sweep]'"
    )
    monkeypatch.undo()
    if importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is None:  # as a user without it sees it
        proc = run("-m", "hydra/sweeper=lora_search", "recipe=tiny", cwd=tmp_path)
        assert proc.returncode == 2 and "pip install hydra-optuna-sweeper" in proc.stderr, proc.stderr
