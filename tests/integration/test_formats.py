"""The fine-tuning matrix on the tiny model: every task and every dataset format, read from
small files written in the real datasets' schemas (json, jsonl, csv, parquet), trains (loss
falls) and the saved adapter reloads with PEFT and generates."""

import json
import random

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow


def _arith(n=120, seed=0):
    rng = random.Random(seed)
    for _ in range(n):
        a, b = rng.randrange(10), rng.randrange(10)
        yield a, b, f"What is {a} plus {b} ?", f"{a} plus {b} is {a + b} ."


def _write(path, rows):
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows))
    else:
        from datasets import Dataset

        ds = Dataset.from_list(rows)
        ds.to_csv(str(path), index=False) if path.suffix == ".csv" else ds.to_parquet(str(path))
    return path


ROWS = {
    # tatsu-lab/alpaca, alpaca_data.json, intel_domain.json: instruction, input, output (+ text on the hub)
    "alpaca": lambda: [
        {
            "instruction": "Add the numbers" + " , please" * (i % 7) + " .",
            "input": f"{a} and {b}",
            "output": ans,
            "text": "",
        }
        for i, (a, b, q, ans) in enumerate(_arith())
    ],
    # HuggingFaceH4/ultrachat_200k: prompt, prompt_id, messages (multi-turn)
    "ultrachat": lambda: [
        {
            "prompt": q,
            "prompt_id": str(i),
            "messages": [
                {"role": "user", "content": q},
                {"role": "assistant", "content": ans},
                {"role": "user", "content": f"Add {b} and {a} ."},
                {"role": "assistant", "content": f"{b} plus {a} is {a + b} ."},
            ],
        }
        for i, (a, b, q, ans) in enumerate(_arith())
    ],
    # dolly-15k-oai-style: messages
    "messages": lambda: [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": ans}]}
        for a, b, q, ans in _arith()
    ],
    # Open-Orca/SlimOrca: conversations [{from, value, weight}], system turn empty in some rows
    "slimorca": lambda: [
        {
            "conversations": ([{"from": "system", "value": "", "weight": None}] if i % 2 else [])
            + [{"from": "human", "value": q, "weight": 0.0}, {"from": "gpt", "value": ans, "weight": 1.0}]
        }
        for i, (a, b, q, ans) in enumerate(_arith())
    ],
    # cnn_dailymail 3.0.0: article, highlights, id
    "cnn_dailymail": lambda: [
        {
            "article": f"Today {a} and {b} were added . {q} The result was {a + b} .",
            "highlights": ans,
            "id": f"{i:040x}",
        }
        for i, (a, b, q, ans) in enumerate(_arith())
    ],
    # theblackcat102/evol-codealpaca-v1: instruction, output
    "evol_codealpaca": lambda: [{"instruction": q, "output": f"print ( {a} + {b} )"} for a, b, q, ans in _arith()],
    # Intel/orca_dpo_pairs: system, question, chosen, rejected
    "orca_dpo_pairs": lambda: [
        {"system": "", "question": q, "chosen": ans, "rejected": f"{a} plus {b} is {a + b + 1} ."}
        for a, b, q, ans in _arith()
    ],
    # lvwerra/stack-exchange-paired: qid, question, date, metadata, response_j, response_k
    "stack_exchange_paired": lambda: [
        {
            "qid": i,
            "question": q,
            "date": "2023/01/01",
            "metadata": ["url"],
            "response_j": ans,
            "response_k": f"{a} plus {b} is {a + b + 2} .",
        }
        for i, (a, b, q, ans) in enumerate(_arith())
    ],
}


def _reloads_and_generates(art):
    import torch
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    model = AutoPeftModelForCausalLM.from_pretrained(str(art))
    tok = AutoTokenizer.from_pretrained(str(art))
    ids = tok("What is 2 plus 3 ?", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]


@pytest.mark.parametrize(
    "fmt,suffix,task,extra",
    [
        ("alpaca", ".json", "completion", ["sft.packing=true", "sft.loss_on=all"]),  # ITREX completion defaults
        ("ultrachat", ".parquet", "chat", []),  # the model's own chat template, every turn trained
        ("messages", ".jsonl", "chat", ["sft.template=chatml"]),
        ("slimorca", ".jsonl", "chat", ["sft.template=neural_chat"]),
        ("cnn_dailymail", ".csv", "summarization", ["sft.max_seq_length=96"]),
        ("evol_codealpaca", ".json", "code-generation", []),
        ("orca_dpo_pairs", ".jsonl", "chat", ["sft.template=neural_chat"]),
        ("stack_exchange_paired", ".parquet", "completion", ["sft.template=qa"]),
    ],
)
def test_format_and_task_train_and_reload(tmp_path, fmt, suffix, task, extra):
    data = _write(tmp_path / f"{fmt}{suffix}", ROWS[fmt]())
    proc = run_cli(
        "recipe=tiny",
        "pipeline=[sft]",
        "sft.max_steps=30",
        "sft.logging_steps=5",
        "sft.warmup_ratio=0",
        f"sft.task={task}",
        "sft.template=null",
        f"sft.dataset.format={fmt}",
        f"sft.dataset.path={data}",
        "sft.dataset.default_system=null",
        *extra,
        f"output_root={tmp_path / 'out'}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    art = next((tmp_path / "out").glob("artifacts/sft-*"))
    manifest = json.loads((art / "manifest.json").read_text())
    metrics = manifest["metrics"]
    assert metrics["last_loss"] < 0.7 * metrics["first_loss"], metrics
    _reloads_and_generates(art)
    if "sft.packing=true" in extra:
        assert metrics["packing"]["non_pad_fraction_packed"] > metrics["packing"]["non_pad_fraction_unpacked"]


def test_users_own_csv_with_column_mapping_and_eval_loss(tmp_path):
    rows = [{"question": q, "answer": ans, "source": "mine"} for a, b, q, ans in _arith(200)]
    data = _write(tmp_path / "mine.csv", rows)
    out = tmp_path / "out"
    common = [
        "recipe=tiny",
        "pipeline=[sft]",
        "sft.max_steps=40",
        "sft.logging_steps=10",
        "sft.task=completion",
        "sft.template=null",
        "sft.dataset.format=alpaca",
        f"sft.dataset.path={data}",
        "sft.dataset.columns={instruction: question, output: answer}",
        "sft.dataset.validation_split_percentage=10",
        "sft.do_eval=true",
        "sft.eval_steps=20",
        f"output_root={out}",
    ]
    proc = run_cli(*common)
    assert proc.returncode == 0, proc.stderr[-3000:]
    art = next(out.glob("artifacts/sft-*"))
    metrics = json.loads((art / "manifest.json").read_text())["metrics"]
    assert metrics["samples"] == 180  # 10% held out
    evals = [h["eval_loss"] for h in metrics["history"] if "eval_loss" in h]
    assert len(evals) >= 2 and evals[-1] < evals[0]  # at step 20 and 40
    assert metrics["eval_loss"] == pytest.approx(evals[-1]) and metrics["eval_perplexity"] > 1
    assert "tokenized train data read from the cache" not in proc.stderr
    # the same data with another template trains again and does not reuse the tokenized cache
    proc = run_cli(*common, "sft.template=qa")
    assert proc.returncode == 0 and "read from the cache" not in proc.stderr, proc.stderr[-3000:]
    assert len(list((out / "cache" / "tokenized").iterdir())) == 4  # (alpaca, qa) x (train, eval)


def test_dpo_on_stack_exchange_parquet_with_held_out_pairs(tmp_path):
    data = _write(tmp_path / "se.parquet", ROWS["stack_exchange_paired"]())
    proc = run_cli(
        "recipe=tiny",
        "pipeline=[dpo]",
        "dpo.input=base",
        "peft@dpo.peft=tiny_sft_lora",
        "dpo.max_steps=20",
        "dpo.logging_steps=5",
        "dpo.dataset.format=stack_exchange_paired",
        f"dpo.dataset.path={data}",
        "dpo.dataset.validation_split_percentage=10",
        "dpo.do_eval=true",
        f"output_root={tmp_path / 'out'}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads(next((tmp_path / "out").glob("artifacts/dpo-*/manifest.json")).read_text())["metrics"]
    assert metrics["samples"] == 108 and "eval_rewards/accuracies" in metrics, sorted(metrics)
