"""An evaluation's per-model score cache: keyed by the model, the settings that shape a score, and the data."""

from types import SimpleNamespace

from tests.conftest import compose_recipe, plan_for


def _keys(*overrides, output_root):
    from neuralchat_recipes.stages.evaluate import _score_cache

    recipe = compose_recipe("recipe=tiny", f"output_root={output_root}", *overrides)
    spec = plan_for("recipe=tiny", f"output_root={output_root}", *overrides).stage("eval")
    ctx = SimpleNamespace(recipe=recipe, spec=spec, args=spec.args, name="eval", stage=recipe.stages["eval"])
    cache = _score_cache(ctx)
    return {i.stage or "base": cache.key(i) for i in spec.inputs}, cache, spec


def test_keys_follow_the_model_settings_and_data_not_the_compared_list(tmp_path):
    keys, cache, spec = _keys(output_root=tmp_path)
    assert len(set(keys.values())) == 3  # base, merge (SFT), merge_dpo (final)
    fewer, _, _ = _keys("eval.compare=[base]", output_root=tmp_path)
    assert fewer["base"] == keys["base"] and fewer["merge_dpo"] == keys["merge_dpo"]
    beta, _, _ = _keys("dpo.beta=0.2", output_root=tmp_path)
    assert beta["base"] == keys["base"] and beta["merge"] == keys["merge"] and beta["merge_dpo"] != keys["merge_dpo"]
    longer, _, _ = _keys("eval.max_new_tokens=9", output_root=tmp_path)
    assert not set(longer.values()) & set(keys.values())
    other_data, _, _ = _keys("dataset@eval.dataset=tiny_sft", output_root=tmp_path)
    assert other_data["base"] != keys["base"]


def test_a_stored_score_comes_back_for_the_same_key_only(tmp_path):
    _, cache, spec = _keys(output_root=tmp_path)
    base, final = spec.inputs[1], spec.inputs[0]
    assert cache.get("base", base) is None
    cache.put(base, {"exact_match": 0.25})
    assert cache.get("base", base) == {"exact_match": 0.25} and cache.hits == ["base"]
    assert cache.get("final", final) is None
    assert not list((tmp_path / "cache" / "eval").glob("*.tmp"))  # written whole, by rename
