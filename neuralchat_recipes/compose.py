"""Hydra composition, and translation of Hydra's errors into ones that say what to change."""

from __future__ import annotations

import difflib
import itertools
import re
from pathlib import Path
from typing import Any

from .config import ConfigError
from .defaults import register_schemas

CONFIG_NAME = "config"
GROUPS = ("recipe", "model", "dataset", "peft", "stage", "hardware", "deepspeed")
MAX_PRECHECK_POINTS = 256

register_schemas()  # the models' defaults, which every group entry extends (also in Hydra's job processes)


def config_dir() -> Path:
    """The recipe tree: inside the installed package, or at the top of a source checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_recipes", here.parent / "recipes"):
        if (candidate / f"{CONFIG_NAME}.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"recipe tree not found next to {here}")


def group_options(group: str) -> list[str]:
    """The entries of a group, nested ones by their path (`itrex/finetune/xeon_mpt_7b`)."""
    root = config_dir() / group
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))


def _override_points(overrides: list[str]) -> list[list[str]]:
    """Expand sweep overrides (a=1,2) into the concrete override lists of each job."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    choices: list[list[str]] = []
    for ov in parsed:
        if ov.is_sweep_override():
            prefix = "+" if ov.is_add() else "++" if ov.is_force_add() else ""
            key = ov.get_key_element()
            choices.append([f"{prefix}{key}={value}" for value in ov.sweep_string_iterator()])
        else:
            choices.append([ov.input_line])
    return [list(combo) for combo in itertools.islice(itertools.product(*choices), MAX_PRECHECK_POINTS)] or [[]]


def compose(overrides: list[str]) -> dict[str, Any]:
    """Compose the recipe tree with Hydra's compose API and return a plain dict."""
    import yaml
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
            cfg = hydra_compose(CONFIG_NAME, overrides=overrides)
            return to_plain(cfg)
    except (HydraException, OmegaConfBaseException) as exc:
        raise translate_hydra_error(exc, overrides) from None
    except yaml.YAMLError as exc:  # a recipe file that is not valid YAML: say which and where
        mark = getattr(exc, "problem_mark", None)
        where = f"{mark.name}, line {mark.line + 1}, column {mark.column + 1}" if mark else "a recipe file"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        hint = "; a value with `: ` in it needs quotes" if "mapping values are not allowed" in str(problem) else ""
        raise ConfigError([f"{where}: not valid YAML ({problem}){hint}"]) from None
    finally:
        GlobalHydra.instance().clear()


def to_plain(cfg) -> dict[str, Any]:
    from omegaconf import OmegaConf

    data = OmegaConf.to_container(cfg, resolve=True)
    data.pop("hydra", None)
    return data


MAX_KEY_LENGTH = 200  # far beyond any key of a recipe; Hydra would try the key as a file name (255 at most)


def check_override_syntax(overrides: list[str]) -> None:
    """What Hydra's grammar or file lookup would turn into a traceback or a riddle, as sentences."""
    problems = []
    for override in overrides:
        key, eq, value = override.partition("=")
        if len(key) > MAX_KEY_LENGTH:
            problems.append(
                f"`{key[:40]}...` ({len(key)} characters): no recipe has such a key; keys are dotted names such as "
                "`sft.learning_rate`"
            )
        elif eq and not value.isascii() and value[:1] not in "'\"[{" and "'" not in value:
            problems.append(
                f"`{override}`: a value with non-ASCII characters must be quoted for Hydra: "
                f"'{key}=\"{value}\"' (in a shell, the whole override in single quotes and the value in double "
                "quotes)"
            )
    if problems:
        raise ConfigError(problems)


def precheck(overrides: list[str]) -> list[dict[str, Any]]:
    """Compose every job of a (multi)run before anything runs; raise ConfigError on the first bad one."""
    check_override_syntax(overrides)
    try:
        points = _override_points(overrides)
    except Exception as exc:  # Hydra's grammar errors
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = "; quote a value that has spaces or special characters: 'key=\"a value\"'" if "=" in first else ""
        raise ConfigError([f"cannot parse the command-line overrides {overrides}: {first}{hint}"]) from None
    return [compose(point) for point in points]


def _flat_keys(data: Any, prefix: str = "") -> list[str]:
    keys = []
    if isinstance(data, dict):
        for k, v in data.items():
            full = f"{prefix}.{k}" if prefix else str(k)
            keys.append(full)
            keys += _flat_keys(v, full)
    return keys


def translate_hydra_error(exc: Exception, overrides: list[str]) -> ConfigError:
    text = str(exc)
    cause = exc.__cause__ or exc.__context__
    full = f"{text}\n{cause}" if cause else text
    missing = re.search(r"Could not find '([^']+)'", full)
    if missing:
        # 'recipe/itrex/finetune/xeon_mpt' (a nested entry) or 'hardware/gaudi2_8' (after a package: '.../dataset/x')
        parts = missing.group(1).split("/")
        at = next((i for i, p in enumerate(parts) if p in GROUPS), len(parts) - 2)
        group, option = parts[at] if at >= 0 else parts[0], "/".join(parts[at + 1 :])
        if group in GROUPS:
            options = group_options(group)
            close = difflib.get_close_matches(option, options, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            return ConfigError(
                [f"`{group}={option}`: no {group} entry named {option!r}{hint} Available: {', '.join(options)}"]
            )
        return ConfigError([f"{text.splitlines()[0]}"])
    key_match = re.search(r"full_key: (\S+)", full) or re.search(r"Could not override '([^']+)'", full)
    if key_match and ("not in struct" in full or "Could not override" in full or "Could not append" in full):
        bad = key_match.group(1)
        value = next((o.split("=", 1)[1] for o in overrides if o.lstrip("+~").split("=", 1)[0] == bad), None)
        if bad.split("@")[0] in GROUPS:
            group, _, package = bad.partition("@")
            where = f"at `{package}`" if package else "at the top level"
            if package:  # a misspelt place (`dataset@sft.datset`) is likelier than a new entry
                others = [o for o in overrides if o.lstrip("+~").split("=", 1)[0] != bad]
                try:
                    keys = _flat_keys(compose(others))
                except ConfigError:
                    keys = []
                close = difflib.get_close_matches(package, [k for k in keys if k != package], n=1, cutoff=0.75)
                if close and package not in keys:
                    return ConfigError(
                        [
                            f"`{bad}={value}`: this recipe has no {group} entry {where}; did you mean "
                            f"`{group}@{close[0]}={value}`? (`+{bad}={value}` would add a new one)"
                        ]
                    )
            return ConfigError(
                [f"`{bad}={value}`: this recipe has no {group} entry {where} to replace; add one with `+{bad}={value}`"]
            )
        # compose with the group choices only, to list the keys that do exist
        groups_only = [o for o in overrides if o.split("=", 1)[0].split("@")[0] in GROUPS]
        try:
            base = compose(groups_only) if groups_only != overrides else {}
        except ConfigError:
            base = {}
        keys = _flat_keys(base)
        close = difflib.get_close_matches(bad, keys, n=1, cutoff=0.6)
        hint = f"; did you mean `{close[0]}`?" if close else ""
        parent = bad.rpartition(".")[0]
        siblings = sorted(k.rpartition(".")[2] for k in keys if k.rpartition(".")[0] == parent)
        if not close and siblings:
            hint = f"; keys under `{parent or '<root>'}`: {', '.join(siblings)}"
        shown = f" (value {value!r})" if value is not None else ""
        return ConfigError([f"`{bad}`: unknown key{shown}{hint}"])
    return ConfigError([text.splitlines()[0] if text else repr(exc)])
