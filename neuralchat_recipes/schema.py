"""Generate the JSON Schema files in ``schemas/`` from the pydantic models.

    python -m neuralchat_recipes.schema          # rewrite schemas/
    python -m neuralchat_recipes.schema --check  # exit 1 if schemas/ is stale

``recipe.schema.json`` describes a fully composed recipe (what ``build_recipe`` accepts). The
per-file schemas (``model``, ``dataset``, ``peft``, ``stage``, ``hardware``, ``deepspeed``,
``recipe_file``) are what editors check the YAML files against: the same fields and
descriptions with nothing required, because a file is merged with others before validation.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from .config import DatasetConfig, HardwareConfig, ModelConfig, PeftConfig
from .config.deepspeed import DeepSpeedConfig
from .recipe import RecipeConfig, StageConfig


def _relax(schema: Any) -> Any:
    """Drop `required` and turn `oneOf` into `anyOf`: a YAML file holds a partial config."""
    if isinstance(schema, dict):
        out = {}
        for key, value in schema.items():
            if key == "required":
                continue
            if key == "discriminator":
                continue
            out["anyOf" if key == "oneOf" else key] = _relax(value)
        return out
    if isinstance(schema, list):
        return [_relax(v) for v in schema]
    return schema


DEFAULTS_KEY = {
    "type": "array",
    "description": "Hydra defaults list: the schema node this entry extends "
    "(`/schema/<group>@_here_`: the model's defaults, so the file states only what differs).",
}


def _allow_defaults_key(schema: Any) -> Any:
    """Every object of a group file's schema may carry the `defaults` list that extends its schema node."""
    if isinstance(schema, dict):
        out = {k: _allow_defaults_key(v) for k, v in schema.items()}
        if isinstance(out.get("properties"), dict) and "kind" not in out["properties"].get("defaults", {}):
            out["properties"] = {**out["properties"], "defaults": DEFAULTS_KEY}
        return out
    if isinstance(schema, list):
        return [_allow_defaults_key(v) for v in schema]
    return schema


def schemas() -> dict[str, dict[str, Any]]:
    recipe = RecipeConfig.model_json_schema()
    recipe["title"] = "Composed neuralchat-recipes recipe"
    out = {"recipe": recipe}
    for name, target in (
        ("model", ModelConfig),
        ("dataset", DatasetConfig),
        ("hardware", HardwareConfig),
        ("deepspeed", DeepSpeedConfig),
    ):
        out[name] = _allow_defaults_key(_relax(target.model_json_schema()))
    out["peft"] = _allow_defaults_key(_relax(TypeAdapter(PeftConfig).json_schema()))
    out["stage"] = _allow_defaults_key(_relax(TypeAdapter(StageConfig).json_schema()))

    file_schema = _relax(copy.deepcopy(recipe))
    props = file_schema["properties"]
    stage_ref = _relax(TypeAdapter(StageConfig).json_schema(ref_template="#/$defs/{model}"))
    file_schema.setdefault("$defs", {}).update(stage_ref.pop("$defs", {}))
    props.pop("stages", None)
    props["defaults"] = {
        "type": "array",
        "description": "Hydra defaults list: the model, stages, datasets and peft entries this recipe composes.",
    }
    file_schema["title"] = "neuralchat-recipes recipe file (recipes/recipe/*.yaml)"
    file_schema["additionalProperties"] = {
        "description": "A stage's settings, under the stage's name from `pipeline`.",
        **stage_ref,
    }
    out["recipe_file"] = file_schema
    return out


def schema_dir() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "schemas", here / "_schemas"):
        if candidate.is_dir():
            return candidate
    return here.parent / "schemas"


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 when a file differs from the models")
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args(argv)
    directory = args.dir or schema_dir()
    stale = []
    for name, schema in schemas().items():
        path = directory / f"{name}.schema.json"
        text = render(schema)
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(path.name)
        else:
            directory.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if stale:
        print(
            f"stale JSON Schema files: {', '.join(stale)}; run `python -m neuralchat_recipes.schema`", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
