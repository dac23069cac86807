"""Shared pieces of the config schema: the strict base model and error reporting.

Every config group has its own module; each model forbids unknown keys and documents every
field (the description becomes the JSON Schema and the error text). ``ConfigError`` turns
pydantic's errors into messages that name the dotted key a user typed on the command line,
the bad value, what is allowed, and a close match for a misspelt key.
"""

from __future__ import annotations

import difflib
import typing
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationError

# Fields whose value does not change what a stage produces (logging cadence, checkpoint
# cadence, progress display).  They are left out of stage fingerprints.
NOT_FINGERPRINTED = {"fingerprint": False}


class StrictModel(BaseModel):
    """Base of every config model: unknown keys are errors, objects are immutable, and no number is inf or nan
    (a learning rate of inf trains, "converges" and publishes an adapter of NaNs)."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False)


class ConfigError(Exception):
    """A recipe that cannot run, with one human-readable line per problem."""

    heading = "invalid recipe"

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))

    def __str__(self) -> str:  # pragma: no cover - trivial
        head = self.heading if len(self.problems) == 1 else f"{self.heading} ({len(self.problems)} problems)"
        return head + ":\n" + "\n".join(f"  - {p}" for p in self.problems)


def _unwrap_optional(tp: Any) -> Any:
    origin = get_origin(tp)
    if origin is typing.Annotated:
        return _unwrap_optional(get_args(tp)[0])
    if origin in (Union, getattr(__import__("types"), "UnionType", Union)):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return _unwrap_optional(args[0])
    return tp


def _union_members(tp: Any) -> list[Any]:
    tp = _unwrap_optional(tp)
    origin = get_origin(tp)
    if origin is typing.Annotated:
        return _union_members(get_args(tp)[0])
    if origin is Union or (origin is not None and origin.__name__ == "UnionType"):
        return [a for a in get_args(tp) if a is not type(None)]
    return [tp]


def _discriminator_of(cls: type[BaseModel]) -> tuple[str, str] | None:
    """(field, value) of a tagged-union member: the one Literal field with a single value."""
    for name in ("kind", "method"):
        field = cls.model_fields.get(name)
        if field is not None and get_origin(field.annotation) is typing.Literal:
            values = get_args(field.annotation)
            if len(values) == 1:
                return name, values[0]
    return None


def _step(tp: Any, key: Any) -> tuple[Any, bool]:
    """The type found at ``tp[key]``; the bool says the key was a union tag (not a user key)."""
    members = _union_members(tp)
    if len(members) > 1:
        for member in members:
            if isinstance(member, type) and issubclass(member, BaseModel):
                tag = _discriminator_of(member)
                if tag and tag[1] == key:
                    return member, True
    tp = members[0] if members else tp
    origin = get_origin(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        field = tp.model_fields.get(key)
        return (field.annotation if field else None), False
    if origin in (dict, typing.Mapping) or origin is getattr(typing, "Dict", None):
        return get_args(tp)[1], False
    if origin in (list, tuple):
        return get_args(tp)[0], False
    return None, False


def _model_class(tp: Any) -> type[BaseModel] | None:
    members = _union_members(tp)
    if len(members) == 1 and isinstance(members[0], type) and issubclass(members[0], BaseModel):
        return members[0]
    return None


def _describe(err: dict[str, Any], root: type[BaseModel], prefix_rewrite) -> list[str]:
    tp: Any = root
    user_path: list[str] = []
    parents: list[Any] = []
    for part in err["loc"]:
        parents.append(tp)
        tp, is_tag = _step(tp, part) if tp is not None else (None, False)
        if not is_tag:
            user_path.append(str(part))
    user_path = prefix_rewrite(user_path)
    key = ".".join(user_path) or "<root>"
    etype = err["type"]
    value = err.get("input")
    if etype == "value_error":
        # our own rules: the message already says what to change; one line per problem
        lines = [line for line in str(err["ctx"]["error"]).split("\n") if line.strip()]
        return lines if key == "<root>" else [f"`{key}`: {line}" for line in lines]
    return [_describe_one(err, key, value, parents, user_path)]


def _describe_one(err, key, value, parents, user_path) -> str:
    etype = err["type"]
    if etype == "extra_forbidden":
        owner = _model_class(parents[-1]) if parents else None
        hint = ""
        if owner is not None:
            allowed = sorted(owner.model_fields)
            close = difflib.get_close_matches(str(err["loc"][-1]), allowed, n=1, cutoff=0.6)
            parent_key = ".".join(user_path[:-1])
            if close:
                hint = f"; did you mean `{(parent_key + '.' if parent_key else '') + close[0]}`?"
            else:
                hint = f"; allowed keys here: {', '.join(allowed)}"
        return f"`{key}`: unknown key (value {value!r}){hint}"
    msg = err["msg"]
    description = ""
    owner = _model_class(parents[-1]) if parents else None
    if owner is not None and err["loc"]:
        field = owner.model_fields.get(str(err["loc"][-1]))
        if field is not None and field.description:
            description = f" [{key.rsplit('.', 1)[-1]}: {field.description}]"
    if etype == "missing":
        return f"`{key}`: required but not set{description}"
    if etype == "union_tag_invalid":
        return f"`{key}`: {msg}"
    return f"`{key}` = {value!r}: {msg}{description}"


def format_validation_error(exc: ValidationError, root: type[BaseModel], prefix_rewrite=lambda p: p) -> ConfigError:
    problems = [p for e in exc.errors(include_url=False) for p in _describe(e, root, prefix_rewrite)]
    return ConfigError(problems)
