"""QLoRA on this CPU (bitsandbytes' CPU kernels): LoRA trains on a 4-bit / 8-bit base, the merge stage merges the
adapter into a full-precision copy of the base, and plain transformers loads and runs the result."""

import json

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("quantization", ["nf4", "int8"])
def test_lora_trains_on_a_quantized_base_and_merges_into_full_precision(tmp_path, quantization):
    proc = run_cli(
        "recipe=tiny",
        "pipeline=[sft,merge]",
        "sft.max_steps=30",
        "sft.logging_steps=10",
        f"sft.peft.quantization={quantization}",
        f"output_root={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    sft = next(tmp_path.glob("artifacts/sft-*"))
    metrics = json.loads((sft / "manifest.json").read_text())["metrics"]
    assert metrics["last_loss"] < metrics["first_loss"]
    adapter = json.loads((sft / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "LORA"

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged = next(tmp_path.glob("artifacts/merge-*"))
    config = json.loads((merged / "config.json").read_text())
    assert "quantization_config" not in config  # the base was reloaded in full precision for the merge
    model = AutoModelForCausalLM.from_pretrained(merged)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    tok = AutoTokenizer.from_pretrained(merged)
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "what is the capital of france"}], add_generation_prompt=True, return_tensors="pt"
    )
    out = model.generate(ids if isinstance(ids, torch.Tensor) else ids["input_ids"], max_new_tokens=8)
    assert out.shape[1] > (ids.shape[1] if isinstance(ids, torch.Tensor) else ids["input_ids"].shape[1])


def test_the_plan_says_what_the_quantized_base_saves(plan_of):
    full = plan_of("recipe=tiny", "pipeline=[sft]", "model=llama2_7b", "hardware=gpu_1x").stage("sft").memory
    qlora = plan_of(
        "recipe=tiny", "pipeline=[sft]", "model=llama2_7b", "hardware=gpu_1x", "sft.peft.quantization=nf4"
    ).stage("sft")
    assert qlora.args.peft.quantization == "nf4"
    # 4-bit NF4 linears (0.53 bytes a weight with their scales) against bf16's 2: about a quarter, plus embeddings
    assert 0.25 < qlora.memory["parts_gib"]["weights"] / full["parts_gib"]["weights"] < 0.35


def test_without_bitsandbytes_the_run_stops_before_any_work_naming_the_stage_key(tmp_path, monkeypatch):
    import importlib.util

    from neuralchat_recipes.execution import loop
    from neuralchat_recipes.plan import build_plan
    from tests.conftest import compose_recipe

    real = importlib.util.find_spec
    monkeypatch.setattr(
        loop.importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a)
    )
    recipe = compose_recipe("recipe=tiny", "pipeline=[sft]", "sft.peft.quantization=int8", f"output_root={tmp_path}")
    with pytest.raises(loop.RunError) as info:
        loop.preflight(recipe, build_plan(recipe))
    assert "`sft.peft.quantization` = 'int8'" in str(info.value) and "neuralchat-recipes[qlora]" in str(info.value)
    plain = compose_recipe("recipe=tiny", "pipeline=[sft]", f"output_root={tmp_path}")
    loop.preflight(plain, build_plan(plain))  # no complaint without quantization
