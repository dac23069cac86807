"""The ITREX finetune_seq2seq path (FLAN-T5) with a tiny T5 built offline: LoRA SFT, merge, reload."""

import json
import os

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow


@pytest.fixture
def tiny_t5(tmp_path):
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    from neuralchat_recipes.tiny_model import resolve_builtin

    tok = AutoTokenizer.from_pretrained(resolve_builtin("builtin:tiny-llama"))
    config = T5Config(
        vocab_size=len(tok),
        d_model=32,
        d_ff=64,
        d_kv=8,
        num_layers=1,
        num_decoder_layers=1,
        num_heads=4,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        decoder_start_token_id=tok.pad_token_id,
    )
    path = tmp_path / "tiny-t5"
    T5ForConditionalGeneration(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_flan_t5_style_lora_sft_and_merge(tmp_path, tiny_t5):
    data = tmp_path / "alpaca_data.json"
    data.write_text(
        json.dumps(
            [
                {"instruction": f"Add {a} and {b} .", "input": "", "output": f"{a + b}"}
                for a in range(6)
                for b in range(6)
            ]
        )
    )
    proc = run_cli(
        "recipe=instruct",
        "model=flan_t5_xl",
        f"model.path={tiny_t5}",
        "model.revision=null",
        "model.params_billion=null",
        "hardware=cpu",
        "dataset@sft.dataset=alpaca_file",
        f"sft.dataset.path={data}",
        "sft.packing=false",
        "sft.num_train_epochs=null",
        "sft.max_steps=30",
        "sft.learning_rate=1e-2",
        "sft.global_batch_size=8",
        "sft.logging_steps=5",
        "+stage@merge=merge",
        "pipeline=[sft,merge]",
        f"output_root={tmp_path / 'out'}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(next((tmp_path / "out" / "runs").iterdir()).joinpath("summary.json").read_text())
    sft = summary["stages"][0]["metrics"]
    assert sft["last_loss"] < sft["first_loss"]
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    merged = summary["final_model"]
    model = AutoModelForSeq2SeqLM.from_pretrained(merged)
    tok = AutoTokenizer.from_pretrained(merged)
    out = model.generate(**tok("Add 1 and 2 .", return_tensors="pt"), max_new_tokens=3)
    assert out.shape[0] == 1
    assert os.path.isfile(os.path.join(merged, "model.safetensors"))
