"""JSON Schema files are generated from the models, current, and accept every YAML file that references them."""

import json

import jsonschema
import pytest
import yaml

from neuralchat_recipes.compose import config_dir
from neuralchat_recipes.schema import main as schema_main
from neuralchat_recipes.schema import schema_dir

# recipes/hydra holds Hydra plugin configs (launchers, sweepers): their schema is the plugin's, not ours
YAMLS = sorted(
    p
    for p in config_dir().rglob("*.yaml")
    if p.name != "config.yaml" and p.relative_to(config_dir()).parts[0] != "hydra"
)


def test_schemas_are_not_stale():
    assert schema_main(["--check"]) == 0, "run `python -m neuralchat_recipes.schema`"


def test_check_detects_a_stale_file(tmp_path):
    assert schema_main(["--dir", str(tmp_path)]) == 0
    (tmp_path / "stage.schema.json").write_text("{}")
    assert schema_main(["--check", "--dir", str(tmp_path)]) == 1


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: str(p.relative_to(config_dir())))
def test_yaml_validates_against_its_schema(path):
    line = next(text for text in path.read_text().splitlines() if "yaml-language-server: $schema=" in text)
    schema_path = (path.parent / line.split("$schema=", 1)[1].strip()).resolve()
    assert schema_path.parent == schema_dir().resolve()
    jsonschema.validate(yaml.safe_load(path.read_text()), json.loads(schema_path.read_text()))


def test_schema_rejects_a_typo():
    schema = json.loads((schema_dir() / "stage.schema.json").read_text())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"kind": "sft", "learnig_rate": 1e-4}, schema)


def test_every_field_has_a_description():
    def walk(node, path):
        if isinstance(node, dict):
            for name, prop in node.get("properties", {}).items():
                assert prop.get("description"), f"{path}.{name} has no description"
            for key, value in node.items():
                walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]")

    walk(json.loads((schema_dir() / "recipe.schema.json").read_text()), "recipe")
