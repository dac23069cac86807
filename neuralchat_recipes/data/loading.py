"""Load a dataset entry's rows (hub or local file) and convert them with its format adapter."""

from __future__ import annotations

import json
import random
from functools import lru_cache
from pathlib import Path
from typing import Any

from .formats import DataError, convert_rows
from .paths import resolve_data_path


class HubDataUnavailable(DataError):
    """A hub dataset that cannot be loaded from here (offline, not cached, no such repository)."""


def _decode(path: Path, data: bytes, first_line: int = 1, offset: int = 0) -> str:
    """UTF-8 text, or a DataError naming the line and the byte offset (in the file) of the first bad byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = first_line + data[: exc.start].count(b"\n")
        raise DataError(
            f"{path}, line {line}: not valid UTF-8 (byte 0x{data[exc.start]:02x} at byte offset {offset + exc.start} "
            "of the file); re-encode the file as UTF-8, e.g. `iconv -f latin1 -t utf-8`"
        ) from None


def _read_local(path: Path) -> tuple[list[dict[str, Any]], list[int]]:
    """(rows, the number each is reported by) of a local data file, read here so a bad row is named by where it
    is: a .jsonl row by its line (blank lines are skipped but counted), other files by their row's position."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows, numbers, offset = [], [], 0
        with open(path, "rb") as fh:
            for i, raw in enumerate(fh, start=1):
                line = _decode(path, raw, i, offset)
                offset += len(raw)
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}, row {i}: not valid JSON ({exc.msg})") from None
                numbers.append(i)
        return rows, numbers
    if suffix == ".json":
        try:
            data = json.loads(_decode(path, path.read_bytes()))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
            data = next(iter(data.values()))  # {"train": [...]} style
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of rows")
        return data, list(range(1, len(data) + 1))
    if suffix == ".csv":  # every cell a string, as the file holds it (an empty cell is ""), rows after the header
        import csv
        import io

        rows = list(csv.DictReader(io.StringIO(_decode(path, path.read_bytes()), newline="")))
        return rows, list(range(1, len(rows) + 1))
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
        return rows, list(range(1, len(rows) + 1))
    raise DataError(f"{path}: unsupported data file type {suffix!r}; use .json, .jsonl, .parquet or .csv")


def _load_hub(dataset):
    """A hub dataset's split, or HubDataUnavailable saying why it cannot be had here."""
    from datasets import load_dataset

    try:
        return load_dataset(
            dataset.hub_id,
            dataset.config_name,
            revision=dataset.revision,
            data_dir=dataset.data_dir,
            split=dataset.split,
        )
    except Exception as exc:  # ConnectionError, DatasetNotFoundError, FileNotFoundError, ValueError (bad split) ...
        text = f"{type(exc).__name__}: {exc}"
        from ..stages.common import hub_offline

        if hub_offline() or "offline" in text.lower() or isinstance(exc, ConnectionError):
            why = (
                "HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set and it is not in the local datasets cache"
                if hub_offline()
                else "the hub cannot be reached from here and it is not in the local datasets cache"
            )
        elif "split" in text.lower() and dataset.split in text:
            why = f"it has no split {dataset.split!r} ({str(exc).splitlines()[0][:200]})"
        else:
            why = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        raise HubDataUnavailable(f"hub dataset {dataset.hub_id!r} cannot be loaded: {why}") from None


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
        raw, numbers = _read_local(path)
        source = str(path)
    else:
        raw, numbers = _load_hub(dataset), None
        source = f"{dataset.hub_id} ({dataset.split})"
    if dataset.max_samples:
        raw = (
            raw[: dataset.max_samples]
            if isinstance(raw, list)
            else raw.select(range(min(dataset.max_samples, len(raw))))
        )
    converted = convert_rows(raw, dataset.format, use, source, dataset.default_system, dataset.columns, numbers)
    return converted, source
