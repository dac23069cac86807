"""Every row of README's ITREX command table is a working set of overrides: it plans."""

import re
import shlex
from pathlib import Path

import pytest

from tests.conftest import plan_for

README = Path(__file__).resolve().parents[2] / "README.md"


def _rows():
    text = README.read_text()
    table = text[text.index("| ITREX command | overrides on `recipe=instruct` |") :]
    table = table[: table.index("\n\n")]
    for line in table.splitlines()[2:]:
        label, overrides = [cell.strip() for cell in line.strip("|").split("|", 1)]
        spans = re.findall(r"`([^`]+)`", overrides)
        yield pytest.param(label, spans[0], id=label[:40])
        for alternative in spans[1:]:  # "(or `prompt_tuning`, `llama_adapter`)": the same with another choice
            key = spans[0].split()[0].split("=")[0]
            yield pytest.param(label, spans[0].replace(spans[0].split()[0], f"{key}={alternative}", 1), id=alternative)


ROWS = list(_rows())


def test_the_table_covers_the_seed_commands():
    assert len(ROWS) >= 20


@pytest.mark.parametrize("label,overrides", ROWS)
def test_itrex_row_plans(tmp_path, monkeypatch, label, overrides):
    monkeypatch.chdir(tmp_path)  # the local data files the rows name, in the working directory
    for name in ("alpaca_data.json", "intel_domain.json"):
        (tmp_path / name).write_text("[]")
    (tmp_path / "mine.csv").write_text("question,answer\n")
    args = shlex.split(
        overrides.replace("{instruction: question, output: answer}", "'{instruction: question, output: answer}'")
    )
    if not any(a.startswith("hardware=") for a in args) or "hardware=cpu" in args:
        # ITREX's Xeon runs: a Sapphire Rapids server (AMX bf16, plenty of memory); this 24 GB CPU
        # without AMX rightly refuses a 7B model in fp32
        args += ["hardware.precision=bf16", "hardware.memory_gb=256"]
    plan = plan_for("recipe=instruct", *args)
    sft = plan.stages[0]
    assert sft.kind == "sft" and sft.args.view()["task"] in ("completion", "chat", "summarization", "code-generation")
