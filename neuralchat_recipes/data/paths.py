"""Where data files live: local paths, or `bundled:NAME` for files shipped in the package."""

from __future__ import annotations

from pathlib import Path

BUNDLED_DIR = Path(__file__).resolve().parent.parent / "assets"


def resolve_data_path(path: str) -> Path:
    if path.startswith("bundled:"):
        return BUNDLED_DIR / path.split(":", 1)[1]
    return Path(path).expanduser().resolve()
