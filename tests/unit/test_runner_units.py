"""Runner pieces that need no training: secrets, pickle policy, locks, manifests' recipe JSON."""

import json
import threading
import time

import pytest

from neuralchat_recipes.execution import recipe_json, scrub
from neuralchat_recipes.execution.store import stage_lock
from tests.conftest import compose_recipe


def test_scrub_hides_secret_keys_and_secret_env_values(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_abcdefghijklmnop")
    data = {
        "hub_token": "abc",
        "hub_token_env": "HF_TOKEN",
        "tokens_seen": 5,
        "env": {"WANDB_API_KEY": "k" * 12},
        "command": ["x", "--token=hf_abcdefghijklmnop"],
    }
    out = scrub(data)
    assert out["hub_token"] == "***" and out["hub_token_env"] == "HF_TOKEN" and out["tokens_seen"] == 5
    assert out["env"]["WANDB_API_KEY"] == "***" and "hf_abcdefghijklmnop" not in json.dumps(out)


def test_recipe_json_round_trips_and_hides_secrets(monkeypatch):
    from neuralchat_recipes.recipe import build_recipe

    monkeypatch.setenv("MY_SECRET", "supersecretvalue")
    recipe = compose_recipe("recipe=neural_chat_v3", "hardware=gaudi2_8x", "+hardware.env.MY_SECRET=supersecretvalue")
    text = recipe_json(recipe)
    assert "supersecretvalue" not in text
    again = build_recipe(json.loads(text))
    assert again.stages == recipe.stages and again.model == recipe.model


def test_pickle_checkpoints_need_an_explicit_opt_in(tmp_path):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from neuralchat_recipes.stages.common import StageError, load_model

    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=32,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
        )
    )
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")

    from types import SimpleNamespace

    entry = SimpleNamespace(
        architecture="causal", trust_remote_code=False, allow_pickle=False, torch_dtype="auto", revision=None
    )  # the fields of a model entry load_model reads
    with pytest.raises(StageError, match="model.allow_pickle=true"):
        load_model(entry, str(tmp_path), "fp32")
    entry.allow_pickle = True
    assert load_model(entry, str(tmp_path), "fp32").config.hidden_size == 16


def test_stage_lock_makes_the_second_holder_wait(tmp_path):
    order = []

    def hold():
        with stage_lock(tmp_path / "s.lock", "s"):
            order.append("first-in")
            time.sleep(0.5)
            order.append("first-out")

    t = threading.Thread(target=hold)
    t.start()
    time.sleep(0.1)
    with stage_lock(tmp_path / "s.lock", "s"):
        order.append("second-in")
    t.join()
    assert order == ["first-in", "first-out", "second-in"]


def test_a_stage_lock_leaves_no_file_and_a_waiter_locks_the_path_anew(tmp_path):
    import threading
    import time

    from neuralchat_recipes.execution.store import stage_lock

    path = tmp_path / "sft-0123.lock"
    order = []
    first_holds = threading.Event()

    def second():
        first_holds.wait()
        with stage_lock(path, "sft"):
            order.append("second")
            assert path.is_file()  # it holds the path's current file, not the one the first removed

    waiter = threading.Thread(target=second)
    waiter.start()
    with stage_lock(path, "sft"):
        first_holds.set()
        time.sleep(0.3)  # the second is waiting on this file now
        order.append("first")
    waiter.join(10)
    assert order == ["first", "second"] and not path.exists()
