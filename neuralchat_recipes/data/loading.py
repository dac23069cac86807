"""Load a dataset entry's rows (hub or local file) and convert them with its format adapter."""

from __future__ import annotations

import json
import random
from functools import lru_cache
from pathlib import Path
from typing import Any

from .formats import DataError, convert_rows
from .paths import resolve_data_path


def _read_local(path: Path) -> list[dict[str, Any]]:
    """Rows of a .json / .jsonl file, read here so a bad line is reported by its number."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = []
        with open(path, encoding="utf-8") as fh:
            for i, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}, row {i}: not valid JSON ({exc.msg})") from None
        return rows
    if suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
            data = next(iter(data.values()))  # {"train": [...]} style
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of rows")
        return data
    if suffix in (".parquet", ".csv"):
        from datasets import load_dataset

        ds = load_dataset(suffix[1:], data_files=str(path), split="train")
        return list(ds)
    raise DataError(f"{path}: unsupported data file type {suffix!r}; use .json, .jsonl, .parquet or .csv")


def load_splits(dataset, use: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None, str]:
    """(training rows, held-out rows or None, source description).

    Held-out rows come from the dataset's ``eval_split``, or are ``validation_split_percentage``
    of the split carved out with a fixed seed (so the same rows are held out on every run and
    are never trained on)."""
    rows, source = load_rows(dataset, use)
    if dataset.eval_split:
        held, _ = load_rows(dataset.model_copy(update={"split": dataset.eval_split, "eval_split": None}), use)
        return rows, held, source
    if not dataset.validation_split_percentage:
        return rows, None, source
    n_eval = max(1, round(len(rows) * dataset.validation_split_percentage / 100))
    if n_eval >= len(rows):
        raise DataError(
            f"{source}: {len(rows)} rows cannot spare {dataset.validation_split_percentage}% for evaluation "
            f"and keep any for training; lower `validation_split_percentage`"
        )
    order = list(range(len(rows)))
    random.Random(0).shuffle(order)
    held = set(order[:n_eval])
    return [r for i, r in enumerate(rows) if i not in held], [rows[i] for i in sorted(held)], source


def load_rows(dataset, use: str) -> tuple[list[dict[str, Any]], str]:
    """(canonical rows, a description of the source) for a DatasetConfig.

    Read once per process (preflight checks the rows, the stage then uses them), and again if
    a local file changed in between."""
    stamp = None
    if dataset.path:
        path = resolve_data_path(dataset.path)
        stamp = (path.stat().st_size, path.stat().st_mtime_ns) if path.is_file() else None
    return _load_rows(dataset.model_dump_json(), use, stamp)


@lru_cache(maxsize=8)
def _load_rows(dataset_json: str, use: str, stamp) -> tuple[list[dict[str, Any]], str]:
    from ..config.dataset import DatasetConfig

    dataset = DatasetConfig.model_validate_json(dataset_json)
    if dataset.path:
        path = resolve_data_path(dataset.path)
        if not path.is_file():
            raise DataError(f"{path}: data file not found (dataset {dataset.name!r}, set its `path`)")
        raw = _read_local(path)
        source = str(path)
    else:
        from datasets import load_dataset

        raw = load_dataset(
            dataset.hub_id,
            dataset.config_name,
            revision=dataset.revision,
            data_dir=dataset.data_dir,
            split=dataset.split,
        )
        source = f"{dataset.hub_id} ({dataset.split})"
    if dataset.max_samples:
        raw = (
            raw[: dataset.max_samples]
            if isinstance(raw, list)
            else raw.select(range(min(dataset.max_samples, len(raw))))
        )
    return convert_rows(raw, dataset.format, use, source, dataset.default_system, dataset.columns), source
