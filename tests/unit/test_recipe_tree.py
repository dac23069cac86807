"""Walk the whole recipe tree: every file composes and validates; every recipe x hardware plans or says why not."""

import pytest
import yaml

from neuralchat_recipes.compose import config_dir, group_options
from neuralchat_recipes.config import ConfigError
from tests.conftest import compose_recipe, plan_for

ROOT = config_dir()
RECIPES = [r for r in group_options("recipe") if "/" not in r]  # (the seed commands' files: test_seed_fidelity)
HARDWARE = group_options("hardware")


def test_tree_is_found_and_every_yaml_belongs_to_a_group():
    files = sorted(ROOT.rglob("*.yaml"))
    assert len(files) > 50
    groups = {
        "recipe",
        "model",
        "dataset",
        "peft",
        "stage",
        "hardware",
        "deepspeed",
        "hydra",
    }  # hydra: launcher/sweeper configs
    for f in files:
        rel = f.relative_to(ROOT)
        assert rel.parts == ("config.yaml",) or rel.parts[0] in groups, rel
        assert isinstance(yaml.safe_load(f.read_text()), dict), rel


def test_required_entries_exist():
    need = {
        "model": "mistral_7b llama2_7b llama2_7b_chat llama2_70b codellama_7b mpt_7b falcon_7b starcoder "
        "mixtral_8x7b mixtral_8x7b_instruct phi_2 gemma_2b flan_t5_xl tiny_llama",
        "dataset": "slimorca orca_dpo_pairs alpaca intel_domain ultrachat_200k cnn_dailymail evol_codealpaca "
        "codealpaca_20k dolly_15k_oai stack_exchange_paired tiny_sft tiny_dpo",
        "peft": "lora p_tuning prefix_tuning prompt_tuning llama_adapter none",
        "stage": "sft merge dpo eval generate",
        "hardware": "cpu xeon_spr_ddp gaudi2_1x gaudi2_4x gaudi2_8x gaudi1_8x gpu_1x gpu_8x arc_gpu",
        "recipe": "neural_chat_v3 stack_llama2_70b mixtral_sft dpo_mpt_7b dpo_llama2_7b_chat instruct tiny",
    }
    for group, names in need.items():
        missing = set(names.split()) - set(group_options(group))
        assert not missing, (group, missing)


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("hardware", HARDWARE)
def test_every_recipe_on_every_hardware_plans_or_says_why(recipe, hardware):
    try:
        plan = plan_for(f"recipe={recipe}", f"hardware={hardware}")
    except ConfigError as exc:
        text = str(exc)
        refusals = ("not supported because", "not divisible by hardware", "does not run on hardware")
        assert any(r in text for r in refusals), text
        return
    assert plan.recipe == recipe and plan.hardware == hardware
    assert [s.name for s in plan.stages] == compose_recipe(f"recipe={recipe}", f"hardware={hardware}").pipeline
    for spec in plan.stages:
        assert len(spec.fingerprint) == 64
        assert spec.launch["command"]
        if spec.kind in ("sft", "dpo"):
            a = spec.args.view()
            world = spec.launch["world_size"]
            assert a["per_device_train_batch_size"] * a["gradient_accumulation_steps"] * world == a["global_batch_size"]


@pytest.mark.parametrize("model", group_options("model"))
def test_every_model_entry_validates_in_the_instruction_recipe(model):
    cfg = compose_recipe("recipe=instruct", f"model={model}", "hardware=gpu_8x")
    assert cfg.model.name == model


@pytest.mark.parametrize("dataset", group_options("dataset"))
def test_every_dataset_entry_validates(dataset):
    from neuralchat_recipes.config.dataset import FORMAT_USES

    cfg_path = ROOT / "dataset" / f"{dataset}.yaml"
    fmt = yaml.safe_load(cfg_path.read_text())["format"]
    if "code" in FORMAT_USES[fmt]:  # problems for the pass_at_k evaluation
        cfg = compose_recipe("recipe=tiny", "eval.harness=pass_at_k", f"dataset@eval.dataset={dataset}")
        assert cfg.stages["eval"].dataset.name == dataset
        return
    if "unpaired" in FORMAT_USES[fmt]:  # examples for KTO
        cfg = compose_recipe("recipe=tiny_preference", f"dataset@kto.dataset={dataset}", "kto.from_pairs=false")
        assert cfg.stages["kto"].dataset.name == dataset
        return
    stage = "sft" if "sft" in FORMAT_USES[fmt] else "dpo"
    recipe = "instruct" if stage == "sft" else "dpo_llama2_7b_chat"
    cfg = compose_recipe(f"recipe={recipe}", f"dataset@{stage}.dataset={dataset}")
    ds = cfg.stages[stage].dataset
    assert ds.name == dataset and (ds.hub_id or ds.path)


@pytest.mark.parametrize("peft", group_options("peft"))
def test_every_peft_entry_validates(peft):
    cfg = compose_recipe("recipe=instruct", f"peft@sft.peft={peft}", "sft.packing=false")  # packing is LoRA / full only
    extends = yaml.safe_load((ROOT / "peft" / f"{peft}.yaml").read_text())["defaults"][
        0
    ]  # /schema/peft/<method>@_here_
    assert cfg.stages["sft"].peft.method == extends.split("@")[0].rsplit("/", 1)[1]


@pytest.mark.parametrize("ds", group_options("deepspeed"))
def test_every_deepspeed_entry_plans_on_gpu_8x(ds):
    plan = plan_for("recipe=instruct", "hardware=gpu_8x", f"+deepspeed@sft.deepspeed={ds}")
    spec = plan.stage("sft")
    assert spec.launch["launcher"] == "deepspeed"
    assert spec.args.view()["deepspeed"]["zero_optimization"]["stage"] in (2, 3)


def test_every_stage_kind_is_used_by_some_recipe():
    kinds = set()
    for recipe in RECIPES:
        kinds |= {s.kind for s in compose_recipe(f"recipe={recipe}", "hardware=gaudi2_8x").stages.values()}
    from neuralchat_recipes.stages import KINDS

    assert kinds == set(KINDS)


def _override_value(value) -> str:
    """A value in Hydra's override grammar."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("'", "\\'") + "'"
    if isinstance(value, list):
        return "[" + ",".join(_override_value(v) for v in value) + "]"
    return "{" + ",".join(f"{k}:{_override_value(v)}" for k, v in value.items()) + "}"


# (recipe overrides, the key prefix an entry of the group lands at, how to find its model)
OVERRIDABLE = [
    (["recipe=tiny"], "model", lambda cfg: type(cfg.model)),
    (["recipe=tiny"], "sft.dataset", lambda cfg: type(cfg.stages["sft"].dataset)),
    (["recipe=tiny"], "sft.peft", lambda cfg: type(cfg.stages["sft"].peft)),
    (["recipe=tiny"], "hardware", lambda cfg: type(cfg.hardware)),
    (["recipe=neural_chat_v3", "hardware=gaudi2_8x"], "hardware.gaudi", lambda cfg: type(cfg.hardware.gaudi)),
    (["recipe=neural_chat_v3", "hardware=gaudi2_8x"], "sft.deepspeed", lambda cfg: type(cfg.stages["sft"].deepspeed)),
    *[
        (["recipe=smollm2_chat"], name, lambda cfg, n=name: type(cfg.stages[n]))
        for name in ("sft", "merge", "dpo", "eval", "generate", "export")
    ],
]


@pytest.mark.parametrize("base, prefix, model_of", OVERRIDABLE, ids=[o[1] for o in OVERRIDABLE])
def test_every_field_is_overridable_from_the_command_line(base, prefix, model_of):
    """Hydra overrides only keys the composed config has: the schema nodes every entry extends hold every
    field, so `<prefix>.<field>=<value>` works for each one, without `+`."""
    from neuralchat_recipes.compose import compose

    composed = compose(base)
    node = composed
    for part in prefix.split("."):
        node = node[part]
    cfg = compose_recipe(*base)
    fields = set(model_of(cfg).model_fields) - {"dataset", "preference_dataset"}  # picked from their own group
    missing = sorted(f for f in fields if f not in node and model_of(cfg).model_fields[f].is_required() is False)
    assert not missing, f"{prefix}: not overridable (not in the composed config): {missing}"
    overrides = [
        f"{prefix}.{f}={_override_value(node[f])}"
        for f in sorted(fields)
        if f in node and not isinstance(node[f], dict) or f in ("env", "launch_env", "columns")
    ]
    compose_recipe(*base, *overrides)  # Hydra raises "Could not override" for a key the config lacks


def test_no_group_file_restates_a_model_default():
    """A default is written once, in its pydantic field; an entry states only what differs (and only fields)."""
    from neuralchat_recipes.defaults import schema_nodes

    nodes = schema_nodes()
    restated, unknown = [], []
    for group in ("model", "dataset", "hardware", "deepspeed", "peft", "stage"):
        for f in sorted((ROOT / group).glob("*.yaml")):
            data = yaml.safe_load(f.read_text())
            extends = data.pop("defaults")
            ref = extends[0].split("@")[0].strip("/").split("/")
            node = nodes[("/".join(ref[:-1]), ref[-1])]
            gaudi = nodes[("schema", "gaudi")]
            for key, value in data.items():
                if key == "gaudi" and isinstance(value, dict):
                    restated += [f"{f.name}: gaudi.{k}" for k, v in value.items() if gaudi.get(k) == v]
                    unknown += [f"{f.name}: gaudi.{k}" for k in value if k not in gaudi]
                elif key in node and node[key] == value:
                    restated.append(f"{f.name}: {key}")
    assert not restated, f"these keys restate their model's default: {restated}"
    assert not unknown, unknown


def test_lora_rank_of_a_stage_is_overridable_from_the_command_line():
    cfg = compose_recipe(
        "recipe=neural_chat_v3", "sft.peft.r=32", "dpo.peft.r=4", "dpo.beta=0.05", "sft.learning_rate=2e-4"
    )
    assert cfg.stages["sft"].peft.r == 32 and cfg.stages["dpo"].peft.r == 4
    assert cfg.stages["dpo"].beta == 0.05 and cfg.stages["sft"].learning_rate == 2e-4
