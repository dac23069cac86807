"""A dataset entry's rows as Arrow, checked row by row, split into training and held-out rows.

Rows are read once into a memory-mapped Arrow table (the ``datasets`` library's builders, cached under
``<output_root>/cache/data``), or streamed (``streaming: true``), and never held as a Python list of the
whole set. Each row is checked by its format adapter (data/formats.py) before anything trains: a bad row is
a DataError naming the file, its row (a .jsonl file's line) and the problem. A successful check is recorded
by the data's identity, so a re-run does not read the rows again. ``load_rows`` / ``load_splits`` give Python
lists for the consumers whose data is small (evaluation sets, preference pairs).
"""

from __future__ import annotations

import json
import os
import random
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from .formats import BadRow, DataError, convert_batch, convert_rows
from .paths import resolve_data_path

BATCH = 1000  # rows per batch of every map over rows
CHECK_VERSION = "1"  # bump when the row checks change what they accept
STREAM_CHECK_ROWS = 1000  # a streamed dataset is checked this far before training; later rows as they come


class HubDataUnavailable(DataError):
    """A hub dataset that cannot be loaded from here (offline, not cached, no such repository)."""


class NotATable(DataError):
    """A local file of valid JSON whose rows Arrow cannot put in one table (a column of several types)."""


def data_cache(output_root: str | Path) -> Path:
    """Where read rows and checks are cached: ``<output_root>/cache/data``."""
    return Path(output_root).expanduser() / "cache" / "data"


def workers_for(rows: int) -> int:
    """Processes for a map over ``rows`` rows: one below 20k rows (starting workers costs more), else the cores
    this process may use."""
    if rows < 20_000:
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


# ---- reading ---------------------------------------------------------------------------------------------
def describe(dataset) -> str:
    """The source as error messages and logs name it."""
    if dataset.path:
        return str(resolve_data_path(dataset.path))
    return f"{dataset.hub_id} ({dataset.split})"


def read(dataset, cache: Path, streaming: bool | None = None):
    """The entry's raw rows: a memory-mapped Arrow ``Dataset``, or an ``IterableDataset`` when streaming. At
    most ``max_samples`` rows."""
    streaming = dataset.streaming if streaming is None else streaming
    if dataset.path:
        raw = _read_local(resolve_data_path(dataset.path), cache, streaming)
    else:
        raw = _read_hub(dataset, cache, streaming)
    if dataset.max_samples:
        raw = raw.take(dataset.max_samples) if streaming else raw.select(range(min(dataset.max_samples, len(raw))))
    return raw


def _read_local(path: Path, cache: Path, streaming: bool):
    import datasets

    if not path.is_file():
        raise DataError(f"{path}: data file not found (set the dataset's `path`)")
    suffix = path.suffix.lower()
    if suffix not in (".json", ".jsonl", ".csv", ".parquet"):
        raise DataError(f"{path}: unsupported data file type {suffix!r}; use .json, .jsonl, .parquet or .csv")
    if suffix != ".parquet":  # pyarrow's text readers take invalid UTF-8 and fail later, on some value
        _check_utf8(path)
    if suffix == ".csv":
        return _read_csv(path, streaming)
    options: dict[str, Any] = {}
    if suffix == ".json":
        field = _json_field(path)
        if field:
            options["field"] = field  # {"train": [...]} style
    builder = "parquet" if suffix == ".parquet" else "json"
    try:
        with _quiet():
            return datasets.load_dataset(
                builder,
                data_files=str(path),
                split="train",
                streaming=streaming,
                cache_dir=str(cache / "raw"),
                **options,
            )
    except Exception as exc:  # pyarrow's reader names no row: find the bad one the slow way
        _locate_problem(path)  # raises a DataError naming the row when a row is not valid JSON
        raise NotATable(
            f"{path}: its rows cannot be read as one table ({_first_line(exc)}); every row must give a column "
            "the same type"
        ) from None


def _read_csv(path: Path, streaming: bool):
    """Every cell a string, as the file holds it (an empty cell is ""), rows after the header."""
    import datasets
    import pyarrow as pa
    import pyarrow.csv as pacsv

    with open(path, encoding="utf-8", newline="") as fh:
        import csv

        header = next(csv.reader(fh), [])
    options = pacsv.ConvertOptions(column_types={name: pa.string() for name in header}, strings_can_be_null=False)
    table = pacsv.read_csv(str(path), convert_options=options)
    dataset = datasets.Dataset(table)
    return dataset.to_iterable_dataset() if streaming else dataset


def _json_field(path: Path) -> str | None:
    """The key of a JSON file shaped {"train": [...]}, None for a plain list of rows."""
    with open(path, "rb") as fh:
        head = fh.read(4096).decode("utf-8", "replace")
    found = re.match(r'\s*\{\s*"((?:[^"\\]|\\.)*)"\s*:\s*\[', head)
    return found.group(1) if found else None


def _read_hub(dataset, cache: Path, streaming: bool):
    """A hub dataset's split, or HubDataUnavailable saying why it cannot be had here."""
    import datasets

    try:
        with _quiet():
            return datasets.load_dataset(
                dataset.hub_id,
                dataset.config_name,
                revision=dataset.revision,
                data_dir=dataset.data_dir,
                split=dataset.split,
                streaming=streaming,
                cache_dir=None,  # the hub cache (HF_DATASETS_CACHE) is shared with every other tool
            )
    except Exception as exc:  # ConnectionError, DatasetNotFoundError, FileNotFoundError, ValueError (bad split) ...
        from ..stages.common import hub_offline

        text = f"{type(exc).__name__}: {exc}"
        if hub_offline() or "offline" in text.lower() or isinstance(exc, ConnectionError):
            why = (
                "HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set and it is not in the local datasets cache"
                if hub_offline()
                else "the hub cannot be reached from here and it is not in the local datasets cache"
            )
        elif "split" in text.lower() and dataset.split in text:
            why = f"it has no split {dataset.split!r} ({_first_line(exc)})"
        else:
            why = _first_line(exc)
        raise HubDataUnavailable(f"hub dataset {dataset.hub_id!r} cannot be loaded: {why}") from None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


class _quiet:
    """No progress bars from ``datasets`` while rows are read (our logs say what happens)."""

    def __enter__(self):
        import datasets

        self.was = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()

    def __exit__(self, *exc):
        import datasets

        if self.was:
            datasets.enable_progress_bars()


# ---- where a bad row is (the slow path, only when reading failed) -----------------------------------------
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


def _check_utf8(path: Path) -> None:
    """A DataError at the first byte of the file that is not UTF-8 (once per file version in a process)."""
    stat = path.stat()
    _check_utf8_of(str(path), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=32)
def _check_utf8_of(path: str, size: int, mtime_ns: int) -> None:
    with open(path, "rb") as fh:
        offset, block = 0, fh.read(1 << 24)
        while block:
            more = fh.read(1 << 24)
            if more:  # end the block at a line end, so a character never straddles two blocks
                cut = block.rfind(b"\n") + 1 or len(block)
                block, more = block[:cut], block[cut:] + more
            try:
                block.decode("utf-8")
            except UnicodeDecodeError:
                first_line = 1 + _lines_before(path, offset)
                _decode(Path(path), block, first_line, offset)
            offset += len(block)
            block = more


def _lines_before(path: str, offset: int) -> int:
    with open(path, "rb") as fh:
        return fh.read(offset).count(b"\n")


def _locate_problem(path: Path) -> None:
    """Raise a DataError naming the first row of a .json / .jsonl file that is not valid UTF-8 or JSON."""
    if path.suffix.lower() == ".jsonl":
        offset = 0
        with open(path, "rb") as fh:
            for i, raw in enumerate(fh, start=1):
                line = _decode(path, raw, i, offset)
                offset += len(raw)
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}, row {i}: not valid JSON ({exc.msg})") from None
                if not isinstance(row, dict):
                    raise DataError(f"{path}, row {i}: expected an object with columns, got {type(row).__name__}")
    elif path.suffix.lower() == ".json":
        try:
            data = json.loads(_decode(path, path.read_bytes()))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
            data = next(iter(data.values()))
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of rows")
        for i, row in enumerate(data, start=1):
            if not isinstance(row, dict):
                raise DataError(f"{path}, row {i}: expected an object with columns, got {type(row).__name__}")


def python_rows(path: Path) -> list[Any]:
    """Every row of a .json / .jsonl file as Python objects (the slow path, for naming a bad row)."""
    if path.suffix.lower() == ".jsonl":
        with open(path, encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]
    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data, dict) and len(data) == 1:
        data = next(iter(data.values()))
    return data


def _line_numbers(path: Path) -> list[int] | None:
    if path.suffix.lower() != ".jsonl":
        return None
    with open(path, "rb") as fh:
        return [i for i, raw in enumerate(fh, start=1) if raw.strip()]


def row_label(dataset, index: int) -> int:
    """The number a row is reported by: its line in a .jsonl file (blank lines are skipped when read, but
    counted), else its position from 1."""
    if not dataset.path or not dataset.path.lower().endswith(".jsonl"):
        return index + 1
    seen = -1
    with open(resolve_data_path(dataset.path), "rb") as fh:
        for line_number, raw in enumerate(fh, start=1):
            if raw.strip():
                seen += 1
                if seen == index:
                    return line_number
    return index + 1


# ---- checking --------------------------------------------------------------------------------------------
def check(dataset, use: str, cache: Path) -> int:
    """Read and check every row (a streamed dataset: its first STREAM_CHECK_ROWS); the number of rows. A
    check that passed is remembered by the data's identity, so the next run skips it."""
    marker = cache / "checked" / f"{_check_key(dataset, use)}.json"
    if marker.is_file():
        return json.loads(marker.read_text())["rows"]
    try:
        raw = read(dataset, cache)
    except NotATable:  # a row of the wrong shape: name it with the adapters, row by row
        rows = python_rows(resolve_data_path(dataset.path))
        convert_rows(
            rows,
            dataset.format,
            use,
            describe(dataset),
            dataset.default_system,
            dataset.columns,
            _line_numbers(resolve_data_path(dataset.path)),
        )
        raise
    if dataset.streaming:
        rows = list(raw.take(STREAM_CHECK_ROWS))
        convert_rows(rows, dataset.format, use, describe(dataset), dataset.default_system, dataset.columns)
        return len(rows)  # not remembered: the stream may change
    n = len(raw)
    if n == 0:
        raise DataError(f"{describe(dataset)}: no rows")
    raw.map(
        _check_batch,
        batched=True,
        batch_size=BATCH,
        with_indices=True,
        num_proc=workers_for(n) if n > 1 else None,
        fn_kwargs={"dataset_json": dataset.model_dump_json(), "use": use},
        remove_columns=raw.column_names,
        keep_in_memory=True,  # nothing is written: the rows are only checked
        desc=None,
    )
    marker.parent.mkdir(parents=True, exist_ok=True)
    tmp = marker.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"rows": n, "source": describe(dataset)}))
    tmp.replace(marker)
    return n


def _check_batch(batch: dict[str, list], indices: list[int], dataset_json: str, use: str) -> dict[str, list]:
    convert_dataset_batch(batch, indices, dataset_json, use)
    return {}


def convert_dataset_batch(batch: dict[str, list], indices: list[int], dataset_json: str, use: str) -> dict[str, list]:
    """A batch of raw rows in canonical columns (formats.convert_batch), a bad row named by its file and row."""
    from ..config.dataset import DatasetConfig

    dataset = _dataset_from_json(dataset_json)
    assert isinstance(dataset, DatasetConfig)
    try:
        return convert_batch(batch, dataset.format, use, dataset.default_system, dataset.columns)
    except BadRow as bad:
        where = f"{describe(dataset)}, row {row_label(dataset, indices[bad.position])}"
        raise DataError(f"{where}: {bad.problem}") from None


@lru_cache(maxsize=16)
def _dataset_from_json(dataset_json: str):
    from ..config.dataset import DatasetConfig

    return DatasetConfig.model_validate_json(dataset_json)


def _check_key(dataset, use: str) -> str:
    import hashlib

    return hashlib.sha256(json.dumps([CHECK_VERSION, use, identity(dataset)], sort_keys=True).encode()).hexdigest()[:24]


def identity(dataset) -> dict[str, Any]:
    """What decides a dataset entry's rows: its settings, a local file by its bytes rather than its name."""
    from ..plan import data_identity, file_sha256

    info = dataset.model_dump(mode="json")
    if dataset.path:
        path = resolve_data_path(dataset.path)
        info["sha256"] = file_sha256(path) if path.is_file() else None
    return data_identity(info)


# ---- splits ----------------------------------------------------------------------------------------------
def split_indices(n: int, percentage: float) -> tuple[list[int], list[int]]:
    """(training, held-out) row indices: ``percentage`` of the rows held out by a fixed seed, so the same rows
    are held out on every run and are never trained on."""
    n_eval = max(1, round(n * percentage / 100))
    if n_eval >= n:
        raise DataError(
            f"{n} rows cannot spare {percentage}% for evaluation and keep any for training; lower "
            "`validation_split_percentage`"
        )
    order = list(range(n))
    random.Random(0).shuffle(order)
    held = sorted(order[:n_eval])
    held_set = set(held)
    return [i for i in range(n) if i not in held_set], held


def raw_splits(dataset, cache: Path):
    """(training rows, held-out rows or None) of an entry, raw (Arrow): its ``eval_split``, or
    ``validation_split_percentage`` of its split."""
    raw = read(dataset, cache)
    if dataset.eval_split:
        held = read(dataset.model_copy(update={"split": dataset.eval_split, "eval_split": None}), cache)
        return raw, held
    if not dataset.validation_split_percentage:
        return raw, None
    if dataset.streaming:
        raise DataError(
            f"{describe(dataset)}: a streamed dataset holds out rows with `eval_split`, not "
            "`validation_split_percentage`"
        )
    try:
        train, held = split_indices(len(raw), dataset.validation_split_percentage)
    except DataError as exc:
        raise DataError(f"{describe(dataset)}: {exc}") from None
    return raw.select(train), raw.select(held)


def _to_list(raw, dataset, use: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    dataset_json = dataset.model_dump_json()
    for start in range(0, len(raw), BATCH):
        batch = raw[start : start + BATCH]
        size = len(next(iter(batch.values()))) if batch else 0
        rows += _rows_of(convert_dataset_batch(batch, list(range(start, start + size)), dataset_json, use))
    return rows


def _rows_of(columns: dict[str, list]) -> list[dict[str, Any]]:
    keys = list(columns)
    return [dict(zip(keys, values)) for values in zip(*(columns[k] for k in keys))]


def load_rows(dataset, use: str, cache: Path) -> tuple[list[dict[str, Any]], str]:
    """(canonical rows as Python dicts, the source) of a small dataset (evaluation sets, preference pairs)."""
    raw = read(dataset, cache, streaming=False)
    return _to_list(raw, dataset, use), describe(dataset)


def load_splits(dataset, use: str, cache: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None, str]:
    """(training rows, held-out rows or None, source) as Python dicts, for kinds whose data is small."""
    train, held = raw_splits(dataset.model_copy(update={"streaming": False}), cache)
    return (
        _to_list(train, dataset, use),
        _to_list(held, dataset, use) if held is not None else None,
        describe(dataset),
    )


def load_training_rows(stage, use: str, cache: Path) -> tuple[list[dict], list[dict] | None, str, dict[str, Any]]:
    """(training rows, held-out rows or None, source, realised mix) of a training stage whose data is small enough
    for Python lists (preference pairs, prompts): its `dataset`, mixed with its `mix` entries by weight."""
    parts = stage.all_datasets
    if len(parts) == 1:
        rows, held, source = load_splits(stage.dataset, use, cache)
        return rows, held, source, {}
    from datasets import Dataset

    from .mixing import interleave, realised_mix

    trains, helds = [], []
    for source, (_, dataset) in enumerate(parts):
        rows, held, _ = load_splits(dataset, use, cache)
        trains.append(Dataset.from_list([{**r, "source": source} for r in rows]))
        helds += held or []
    weights = [d.weight for _, d in parts]
    mixed = interleave(trains, weights, stage.seed, stage.mix_stopping)
    mix = realised_mix(mixed, [k for k, _ in parts], weights)
    rows = [{k: v for k, v in r.items() if k != "source"} for r in mixed.to_list()]
    source = " + ".join(f"{describe(d)} (x{d.weight:g})" for _, d in parts)
    return rows, helds or None, source, mix
