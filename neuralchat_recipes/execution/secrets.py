"""Secrets never reach a file the engine writes: values of keys named like tokens, and of such environment variables."""

from __future__ import annotations

import os
import re
from typing import Any

SECRET_KEY = re.compile(r"(?i)(token|secret|passw|api[_-]?key|auth)")


def _secret_values() -> list[str]:
    return [v for k, v in os.environ.items() if SECRET_KEY.search(k) and len(v) >= 8]


def scrub(obj: Any, secrets: list[str] | None = None) -> Any:
    """Replace secret-looking values (by key name, or any value of a secret environment variable)."""
    secrets = _secret_values() if secrets is None else secrets
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if isinstance(v, str) and SECRET_KEY.search(str(k)) and not str(k).endswith("_env") and v:
                out[k] = "***"
            else:
                out[k] = scrub(v, secrets)
        return out
    if isinstance(obj, list):
        return [scrub(v, secrets) for v in obj]
    if isinstance(obj, str):
        for s in secrets:
            obj = obj.replace(s, "***")
        return obj
    return obj


def scrub_text(text: str) -> str:
    """Text with the value of every secret-looking environment variable replaced."""
    return scrub(text)


def write_json(path, obj: Any, **dump_options) -> None:
    """Write a JSON file the engine produces (metrics, summaries, records), secrets replaced."""
    import json
    from pathlib import Path

    Path(path).write_text(json.dumps(scrub(obj), **{"default": str, **dump_options}), encoding="utf-8")


def write_text(path, text: str) -> None:
    """Write a text file the engine produces (reports, tables, model cards), secrets replaced."""
    from pathlib import Path

    Path(path).write_text(scrub_text(text), encoding="utf-8")
