"""SFT reads its data as Arrow: the tokenized cache is reused and invalidated by what it depends on, a streamed
file trains (packed) with max_steps, and a mixture trains on its parts in proportion, recorded in the manifest."""

import json

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow


def _alpaca(path, tag: str, n: int):
    rows = [
        {"instruction": f"What is {i % 10} plus {i % 7} ?", "input": "", "output": f"{tag} {i % 10 + i % 7}"}
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


SFT = [
    "recipe=tiny",
    "pipeline=[sft]",
    "sft.num_train_epochs=null",
    "sft.max_steps=2",
    "dataset@sft.dataset=alpaca_file",
]


def test_the_tokenized_cache_is_reused_and_follows_the_data_and_settings(tmp_path):
    data = _alpaca(tmp_path / "d.jsonl", "it is", 200)
    args = [*SFT, f"sft.dataset.path={data}", f"output_root={tmp_path / 'out'}"]
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "read from the cache" not in first.stderr
    again = run_cli(*args, "sft.learning_rate=3e-4")  # a new stage, the same samples
    assert again.returncode == 0 and "tokenized train samples read from the cache" in again.stderr, again.stderr[-3000:]
    cut = run_cli(*args, "sft.max_seq_length=40")
    assert cut.returncode == 0 and "read from the cache" not in cut.stderr, cut.stderr[-3000:]
    _alpaca(data, "it makes", 200)
    changed = run_cli(*args)
    assert changed.returncode == 0 and "read from the cache" not in changed.stderr, changed.stderr[-3000:]
    entries = list((tmp_path / "out" / "cache" / "tokenized").iterdir())
    assert len(entries) == 3 and all((e / "meta.json").is_file() for e in entries)


def test_a_streamed_file_trains_packed_for_max_steps(tmp_path):
    data = _alpaca(tmp_path / "d.jsonl", "it is", 300)
    proc = run_cli(
        *SFT,
        f"sft.dataset.path={data}",
        "sft.dataset.streaming=true",
        "sft.max_steps=6",
        "sft.packing=true",
        "sft.logging_steps=1",
        f"output_root={tmp_path / 'out'}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "streamed from" in proc.stderr
    metrics = json.loads(next((tmp_path / "out").glob("artifacts/sft-*/manifest.json")).read_text())["metrics"]
    assert metrics["steps"] == 6 and "as the stream arrives" in metrics["packing"]["blocks"]
    assert metrics["last_loss"] < metrics["first_loss"]


def test_a_mixture_trains_on_its_parts_in_proportion(tmp_path):
    a = _alpaca(tmp_path / "a.jsonl", "it is", 400)
    b = _alpaca(tmp_path / "b.jsonl", "the sum is", 400)
    proc = run_cli(
        *SFT,
        f"sft.dataset.path={a}",
        "sft.dataset.weight=3",
        "+dataset@sft.mix.other=alpaca_file",
        f"sft.mix.other.path={b}",
        f"output_root={tmp_path / 'out'}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads(next((tmp_path / "out").glob("artifacts/sft-*/manifest.json")).read_text())["metrics"]
    mix = metrics["mix"]
    assert mix["dataset"]["weight"] == 0.75 and mix["mix.other"]["weight"] == 0.25
    assert 0.68 < mix["dataset"]["share"] < 0.82, mix  # 400 / 0.75 draws: within ~3 standard deviations
    assert set(metrics["rows"]) == {"train:dataset", "train:mix.other"}
