"""An evaluation's scores of one model, kept by content so that sweeps and re-runs score each model once.

An eval stage re-runs whenever anything it reads changes: in a `dpo.beta` sweep every job's final model is
new, but the base and SFT models it compares against are not. Each model's scores are stored under
``<output_root>/cache/eval/`` by a key of: the model (an upstream stage's fingerprint, or the base model's
identity), every evaluation setting that shapes a score (not which other models are compared), and the
bytes of the data it is scored on. The same model, settings and data give the stored scores back.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from .. import ENGINE_FINGERPRINT_VERSION
from ..execution.secrets import scrub
from ..model_sources import current_umask
from .common import log

# settings of the eval stage that do not change one model's scores
NOT_PER_MODEL = ("compare", "reward_models")


class ScoreCache:
    def __init__(self, ctx, datasets: dict[str, Any]):
        """``datasets``: every dataset the scores are computed on, by the key that names it in errors."""
        from ..plan import dataset_identity

        self.ctx = ctx
        self.dir = Path(ctx.recipe.output_root) / "cache" / "eval"
        data = {key: dataset_identity(f"{ctx.name}.{key}", ds) for key, ds in datasets.items()}
        settings = {k: v for k, v in ctx.args.fingerprint_payload().items() if k not in NOT_PER_MODEL}
        self.common = {"engine": ENGINE_FINGERPRINT_VERSION, "settings": settings, "data": data}
        self.hits: list[str] = []

    def key(self, entry) -> str:
        from ..plan import base_model_identity, content_key

        model = {"stage_fingerprint": entry.fingerprint} if entry.stage else base_model_identity(self.ctx.recipe)
        return content_key({**self.common, "model": model})

    def get(self, label: str, entry) -> dict[str, Any] | None:
        path = self.dir / f"{self.key(entry)}.json"
        try:
            scores = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        self.hits.append(label)
        log.info(
            "[%s] %s: scores of this model, settings and data from an earlier run (%s)", self.ctx.name, label, path
        )
        return scores

    def put(self, entry, scores: dict[str, Any]) -> None:
        """Stored whole or not at all (a rename), so a killed run leaves no half-written scores."""
        self.dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.dir, suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            json.dump(scrub(scores), fh)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp's 0600 would hide it from a group sharing output_root
        os.replace(tmp, self.dir / f"{self.key(entry)}.json")
