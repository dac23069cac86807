"""The tools users would pick instead of this one, each in its own virtual environment (bench/peer_envs.py),
driven by its own CLI and config file on bench/workload.py's work, as its users would run it.

    python bench/peers.py NAME WORKDIR     (WORKDIR holds model/, sft.jsonl, dpo.jsonl)

Prints one JSON line: the tool's version, the config it ran (as written), the work it did (non-pad tokens
it trained on, counted from the tool's own tokenized data, or preference pairs), its training loop's time
(its trainer's own train_runtime), the process's wall time and peak RSS, and whether its packed samples
can attend to each other. A tool that cannot run records the exact failure instead.

Same model weights and data as every other row. Each tool renders the conversations with its own chat
template (LLaMA-Factory: `solar`, the `### User:` / `### Assistant:` layout closest to neural-chat's), so
its token counts differ slightly from ours; rates are per token it trained on.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from peer_envs import DEFAULT_ROOT, python_of  # noqa: E402
from run_all import Failed, bench_env, measure  # noqa: E402
from workload import GLOBAL_BATCH, micro_batch  # noqa: E402

LORA_TARGETS = "q_proj,k_proj,v_proj,o_proj"


def _installed(tool: str) -> dict:
    done = DEFAULT_ROOT / tool / "installed.json"
    if not done.is_file():
        failed = DEFAULT_ROOT / tool / "failed.json"
        why = json.loads(failed.read_text())["log_tail"][-3:] if failed.is_file() else "not installed"
        raise Failed(f"{tool}'s environment: {why} (run bench/peer_envs.py {tool})")
    return json.loads(done.read_text())


def _activated(tool: str, work: Path, **extra: str) -> dict[str, str]:
    """The bench's offline environment with the tool's venv activated (its launchers find their own commands)."""
    env = bench_env(work)
    venv = python_of(tool).parent.parent
    return {**env, "VIRTUAL_ENV": str(venv), "PATH": f"{venv / 'bin'}:{env['PATH']}", "PYTHONPATH": "", **extra}


def _yaml(path: Path, values: dict) -> str:
    import yaml

    text = yaml.safe_dump(values, sort_keys=False)
    path.write_text(text)
    return text


def _tail_pad_free_tokens(ids: list[int], pad: int) -> int:
    """Tokens of a packed row without the padding the packer appended at its end."""
    n = len(ids)
    while n and ids[n - 1] == pad:
        n -= 1
    return n


def _packed_samples(tokenized, pad_id: int) -> list[tuple[int, int]]:
    """(tokens, labelled tokens) of each sample in packed rows whose position ids restart at every sample."""
    samples = []
    for ids, positions, labels in zip(tokenized["input_ids"], tokenized["position_ids"], tokenized["labels"]):
        n = _tail_pad_free_tokens(ids, pad_id)
        starts = [i for i in range(n) if positions[i] == 0] + [n]
        for a, b in zip(starts, starts[1:]):
            samples.append((b - a, sum(1 for x in labels[a:b] if x != -100)))
    return samples


def llamafactory(work: Path, kind: str, neat: bool = True) -> dict:
    """LLaMA-Factory's `llamafactory-cli train` with LoRA; SFT with `packing` (and `neat_packing`: a block-diagonal
    4D mask keeps the packed samples apart), DPO with its defaults for the rest."""
    info = _installed("llamafactory")
    out = work / ("lf-dpo" if kind == "dpo" else f"lf-sft{'-neat' if neat else ''}")
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in (work / f"{kind}.jsonl").read_text().splitlines()]
    if kind == "sft":  # dolly-oai-style messages -> LLaMA-Factory's sharegpt (OpenAI role/content) format
        (data / "bench.json").write_text(json.dumps([{"messages": r["messages"]} for r in rows]))
        dataset = {
            "file_name": "bench.json",
            "formatting": "sharegpt",
            "columns": {"messages": "messages"},
            "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"},
        }
    else:  # orca_dpo_pairs -> its alpaca ranking format
        converted = [
            {"instruction": r["question"], "system": r["system"], "chosen": r["chosen"], "rejected": r["rejected"]}
            for r in rows
        ]
        (data / "bench.json").write_text(json.dumps(converted))
        dataset = {
            "file_name": "bench.json",
            "ranking": True,
            "columns": {"prompt": "instruction", "system": "system", "chosen": "chosen", "rejected": "rejected"},
        }
    (data / "dataset_info.json").write_text(json.dumps({"bench": dataset}))
    config = {
        "model_name_or_path": str(work / "model"),
        "stage": kind,
        "do_train": True,
        "finetuning_type": "lora",
        "lora_rank": 16,
        "lora_alpha": 32,
        "lora_dropout": 0.05,
        "lora_target": LORA_TARGETS,
        "dataset": "bench",
        "dataset_dir": str(data),
        "template": "solar",
        "cutoff_len": 1024,
        "overwrite_cache": True,
        "preprocessing_num_workers": 1,
        "tokenized_path": str(out / "tokenized"),
        "output_dir": str(out / "run"),
        "overwrite_output_dir": True,
        "per_device_train_batch_size": micro_batch(),
        "gradient_accumulation_steps": GLOBAL_BATCH // micro_batch(),
        "num_train_epochs": 1.0,
        "learning_rate": 1.0e-4 if kind == "sft" else 5.0e-4,
        "lr_scheduler_type": "linear",
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "bf16": False,
        "seed": 42,
    }
    if kind == "sft":
        config.update(packing=True, neat_packing=neat)
    else:
        config.update(pref_beta=0.1, pref_loss="sigmoid")
    text = _yaml(out / "config.yaml", config)
    cli = python_of("llamafactory").parent / "llamafactory-cli"
    env = _activated("llamafactory", work, DISABLE_VERSION_CHECK="1", CUDA_VISIBLE_DEVICES="")
    wall, rss, _, _ = measure([str(cli), "train", str(out / "config.yaml")], env, log=out / "tool.log")
    train_s = json.loads((out / "run" / "train_results.json").read_text())["train_runtime"]

    from datasets import load_from_disk

    tokenized = load_from_disk(str(out / "tokenized"))["train"]
    result = {"tool": "LLaMA-Factory", "version": info["version"], "config": text, "train_s": train_s, "wall_s": wall}
    result["peak_rss_mib"] = rss
    if kind == "sft":
        pad = json.loads((work / "model" / "tokenizer_config.json").read_text()).get("pad_token")
        from transformers import AutoTokenizer

        pad_id = AutoTokenizer.from_pretrained(work / "model").convert_tokens_to_ids(pad)
        result["tokens"] = sum(_tail_pad_free_tokens(ids, pad_id) for ids in tokenized["input_ids"])
        result["samples"] = _packed_samples(tokenized, pad_id)
        result["samples_isolated"] = (
            "yes: neat_packing, a block-diagonal 4D attention mask" if neat else "no: packing without neat_packing"
        )
    else:
        result["pairs"] = len(tokenized)
        result["tokens"] = sum(
            len(c) + len(r) for c, r in zip(tokenized["chosen_input_ids"], tokenized["rejected_input_ids"])
        )
    return result


def _torchtune_model(shape: dict) -> dict:
    """torchtune's LoRA builder for the model's shape: Llama 2's (RoPE base 10,000, as the bench model), or
    Llama 3.2's where the head is tied to the embedding (SmolLM2), its RoPE scaling off (scale_factor 1 leaves
    every frequency as it is)."""
    common = {
        "lora_attn_modules": ["q_proj", "k_proj", "v_proj", "output_proj"],
        "apply_lora_to_mlp": False,
        "apply_lora_to_output": False,
        "vocab_size": shape["vocab_size"],
        "num_layers": shape["num_hidden_layers"],
        "num_heads": shape["num_attention_heads"],
        "num_kv_heads": shape["num_key_value_heads"],
        "embed_dim": shape["hidden_size"],
        "max_seq_len": shape["max_position_embeddings"],
        "intermediate_dim": shape["intermediate_size"],
        "norm_eps": shape["rms_norm_eps"],
        "lora_rank": 16,
        "lora_alpha": 32,
        "lora_dropout": 0.05,
    }
    if not shape.get("tie_word_embeddings"):
        return {"_component_": "torchtune.models.llama2.lora_llama2", **common}
    rope = shape.get("rope_theta") or (shape.get("rope_parameters") or {}).get("rope_theta") or 10_000
    return {
        "_component_": "torchtune.models.llama3_2.lora_llama3_2",
        **common,
        "rope_base": int(rope),
        "scale_factor": 1,
        "tie_word_embeddings": True,
    }


def torchtune(work: Path, kind: str) -> dict:
    """torchtune 0.6.1's `lora_finetune_single_device` (packed chat dataset) or `lora_dpo_single_device`
    recipe on the CPU in fp32, with the model built by its `lora_llama2` builder at the bench model's shape
    and the HF checkpoint read by its FullModelHFCheckpointer."""
    info = _installed("torchtune")
    out = work / f"tt-{kind}"
    out.mkdir(parents=True, exist_ok=True)
    shape = json.loads((work / "model" / "config.json").read_text())
    rows = [json.loads(line) for line in (work / f"{kind}.jsonl").read_text().splitlines()]
    data = out / "data.json"
    if kind == "sft":
        data.write_text(json.dumps([{"messages": r["messages"]} for r in rows]))
        dataset = {
            "_component_": "torchtune.datasets.chat_dataset",
            "source": "json",
            "data_files": str(data),
            "conversation_column": "messages",
            "conversation_style": "openai",
            "split": "train",
            "packed": True,
        }
    else:  # orca_dpo_pairs -> torchtune's preference_dataset (chosen/rejected conversations)
        data.write_text(
            json.dumps(
                [
                    {
                        "chosen": [
                            {"role": "user", "content": r["question"]},
                            {"role": "assistant", "content": r["chosen"]},
                        ],
                        "rejected": [
                            {"role": "user", "content": r["question"]},
                            {"role": "assistant", "content": r["rejected"]},
                        ],
                    }
                    for r in rows
                ]
            )
        )
        dataset = {
            "_component_": "torchtune.datasets.preference_dataset",
            "source": "json",
            "data_files": str(data),
            "split": "train",
        }
    config = {
        "output_dir": str(out / "run"),
        "model": _torchtune_model(shape),
        "tokenizer": {
            "_component_": "torchtune_run.bench_tokenizer",
            "model_dir": str(work / "model"),
            "max_seq_len": 1024,
        },
        "checkpointer": {
            "_component_": "torchtune.training.FullModelHFCheckpointer",
            "checkpoint_dir": str((work / "model").resolve()),
            "checkpoint_files": ["model.safetensors"],
            "adapter_checkpoint": None,
            "recipe_checkpoint": None,
            "output_dir": str(out / "run"),
            "model_type": "LLAMA3_2" if shape.get("tie_word_embeddings") else "LLAMA2",
        },
        "resume_from_checkpoint": False,
        "save_adapter_weights_only": True,
        "dataset": dataset,
        "seed": 42,
        "shuffle": True,
        "batch_size": micro_batch(),
        "optimizer": {
            "_component_": "torch.optim.AdamW",
            "fused": False,
            "weight_decay": 0.0,
            "lr": 1e-4 if kind == "sft" else 5e-4,
        },
        "lr_scheduler": {
            "_component_": "torchtune.training.lr_schedulers.get_cosine_schedule_with_warmup",
            "num_warmup_steps": 0,
        },
        "loss": {"_component_": "torchtune.modules.loss.CEWithChunkedOutputLoss"}
        if kind == "sft"
        else {"_component_": "torchtune.rlhf.loss.DPOLoss", "beta": 0.1},
        "epochs": 1,
        "max_steps_per_epoch": None,
        "gradient_accumulation_steps": GLOBAL_BATCH // micro_batch(),
        "clip_grad_norm": None,
        "compile": False,
        "metric_logger": {
            "_component_": "torchtune.training.metric_logging.DiskLogger",
            "log_dir": str(out / "run" / "logs"),
        },
        "log_every_n_steps": 1,
        "log_peak_memory_stats": False,
        "device": "cpu",
        "dtype": "fp32",
        "enable_activation_checkpointing": False,
        "enable_activation_offloading": False,
        "profiler": {"_component_": "torchtune.training.setup_torch_profiler", "enabled": False},
    }
    text = _yaml(out / "config.yaml", config)
    recipe = "lora_finetune_single_device" if kind == "sft" else "lora_dpo_single_device"
    env = _activated("torchtune", work, PYTHONPATH=str(HERE), TORCHTUNE_RESULT=str(out / "result.json"))
    wall, rss, _, _ = measure(
        [str(python_of("torchtune")), str(HERE / "torchtune_run.py"), recipe, "--config", str(out / "config.yaml")],
        env,
        log=out / "tool.log",
    )
    run = json.loads((out / "result.json").read_text())
    result = {
        "tool": "torchtune",
        "version": info["version"],
        "config": text,
        "train_s": run["train_s"],
        "wall_s": wall,
    }
    result.update(peak_rss_mib=rss, steps=run["steps"])
    if kind == "sft":
        result["samples"] = run["samples"]
        result["tokens"] = sum(n for n, _ in run["samples"])
        # on CPU (no FlexAttention) torchtune builds a block-causal mask from each pack's seq_lens
        result["samples_isolated"] = "yes: block-causal mask from the pack's sequence lengths"
    else:
        result.update(pairs=len(rows))
    return result


def axolotl(work: Path) -> dict:
    """axolotl's `axolotl train` with LoRA and sample packing, on the CPU in fp32 with SDPA attention."""
    info = _installed("axolotl")
    out = work / "ax-sft"
    out.mkdir(parents=True, exist_ok=True)
    (out / "data.jsonl").write_text((work / "sft.jsonl").read_text())
    config = {
        "base_model": str(work / "model"),
        "tokenizer_type": "AutoTokenizer",
        "datasets": [
            {
                "path": str(out / "data.jsonl"),
                "ds_type": "json",
                "type": "chat_template",
                "field_messages": "messages",
                "roles_to_train": ["assistant"],
            }
        ],
        "chat_template": "tokenizer_default",  # the bench tokenizer's neural-chat template
        "dataset_prepared_path": str(out / "prepared"),
        "val_set_size": 0,
        "output_dir": str(out / "run"),
        "sequence_len": 1024,
        "sample_packing": True,
        "pad_to_sequence_len": True,
        "adapter": "lora",
        "lora_r": 16,
        "lora_alpha": 32,
        "lora_dropout": 0.05,
        "lora_target_modules": LORA_TARGETS.split(","),
        "micro_batch_size": micro_batch(),
        "gradient_accumulation_steps": GLOBAL_BATCH // micro_batch(),
        "num_epochs": 1,
        "optimizer": "adamw_torch",
        "lr_scheduler": "linear",
        "learning_rate": 1.0e-4,
        "bf16": False,
        "fp16": False,
        "tf32": False,
        "flash_attention": False,
        "sdp_attention": True,
        "gradient_checkpointing": False,
        "logging_steps": 1,
        "save_strategy": "no",
        "seed": 42,
    }
    text = _yaml(out / "config.yaml", config)
    cli = python_of("axolotl").parent / "axolotl"
    env = _activated("axolotl", work, CUDA_VISIBLE_DEVICES="", AXOLOTL_DO_NOT_TRACK="1")
    wall, rss, stdout, stderr = measure([str(cli), "train", str(out / "config.yaml")], env, log=out / "tool.log")
    # its trainer's summary line: {'train_runtime': '71.28', 'train_samples_per_second': ...}
    found = re.search(r"'train_runtime': '([0-9.]+)'", stdout + stderr)
    if not found:
        raise Failed(f"no train_runtime in axolotl's output (see {out / 'tool.log'})")
    from datasets import load_from_disk

    prepared = next(p for p in (out / "prepared").iterdir() if p.is_dir())
    data = load_from_disk(str(prepared))
    samples = [
        (len(ids), sum(1 for x in labels if x != -100)) for ids, labels in zip(data["input_ids"], data["labels"])
    ]
    return {
        "tool": "axolotl",
        "version": info["version"],
        "config": text,
        "train_s": float(found.group(1)),
        "wall_s": wall,
        "peak_rss_mib": rss,
        "samples": samples,
        "tokens": sum(n for n, _ in samples),
        # sdpa: axolotl drops the attention mask and transformers builds a block-diagonal causal mask from the
        # restarting position ids (axolotl's attn_decontaminates_packing)
        "samples_isolated": "yes: block-diagonal mask from the restarting position ids (sdpa)",
    }


CONTENDERS = {
    "axolotl_sft_sample_packing": axolotl,
    "torchtune_sft_packed": lambda w: torchtune(w, "sft"),
    "torchtune_dpo": lambda w: torchtune(w, "dpo"),
    "llamafactory_sft_neat_packing": lambda w: llamafactory(w, "sft", neat=True),
    "llamafactory_sft_packing": lambda w: llamafactory(w, "sft", neat=False),
    "llamafactory_dpo": lambda w: llamafactory(w, "dpo"),
}

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", choices=sorted(CONTENDERS))
    parser.add_argument("work", type=Path)
    a = parser.parse_args()
    try:
        print(json.dumps(CONTENDERS[a.name](a.work)))
    except Failed as exc:
        print(json.dumps({"name": a.name, "failed": str(exc)}))
