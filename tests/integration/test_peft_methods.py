"""Every PEFT method of the ITREX matrix trains through the SFT stage on the tiny model."""

import json

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow


# virtual-token methods train a few parameters from scratch: they want a larger learning rate
@pytest.mark.parametrize(
    "method,extra",
    [
        ("p_tuning", ["sft.learning_rate=3e-2"]),
        ("prefix_tuning", ["sft.learning_rate=3e-2"]),
        ("prompt_tuning", ["sft.learning_rate=3e-2"]),
        ("llama_adapter", ["sft.peft.adapter_layers=2", "sft.learning_rate=3e-2"]),
        ("none", []),
    ],
)
def test_peft_method_trains(tmp_path, method, extra):
    proc = run_cli(
        "recipe=tiny",
        "pipeline=[sft]",
        "sft.max_steps=30",
        "sft.logging_steps=10",
        f"peft@sft.peft={method}",
        *extra,
        f"output_root={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    art = next(tmp_path.glob("artifacts/sft-*"))
    metrics = json.loads((art / "manifest.json").read_text())["metrics"]
    assert metrics["last_loss"] < metrics["first_loss"]
    weights = "model.safetensors" if method == "none" else "adapter_model.safetensors"
    assert (art / weights).is_file()


def test_llama_adapter_deeper_than_the_model_names_the_key(tmp_path):
    proc = run_cli(
        "recipe=tiny", "pipeline=[sft]", "sft.max_steps=2", "peft@sft.peft=llama_adapter", f"output_root={tmp_path}"
    )
    assert proc.returncode == 2  # a setting to change: exits like a config error
    assert "`sft.peft.adapter_layers` = 30: the model has only 2 layers" in proc.stderr
