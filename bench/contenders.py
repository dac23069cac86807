"""One contender of bench/run_all.py, run in its own process (so its peak memory is its own):

    python bench/contenders.py NAME WORKDIR [--limit N]

Prints one JSON line: the work done (non-pad tokens or preference pairs) and the time the
training loop took. The peers are written as a user of each library would write them.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from workload import tokenized_sft  # noqa: E402

LORA = dict(
    r=16,
    lora_alpha=32,
    lora_dropout=0.05,
    target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
    task_type="CAUSAL_LM",
)
BATCH = 8


def _model(work: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(work / "model"), AutoTokenizer.from_pretrained(work / "model")


def sft_trl(work: Path, limit: int | None, defaults: bool, packing: bool = False) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    examples = tokenized_sft(work / "model", work / "sft.jsonl")[:limit]
    model, tok = _model(work)
    tuned = {} if defaults else dict(bf16=False, gradient_checkpointing=False)
    if packing:  # TRL's best-fit packing, padding-free (position_ids restart at each sample)
        tuned.update(packing=True)
    cfg = SFTConfig(
        output_dir=str(work / "out-trl"),
        per_device_train_batch_size=BATCH,
        num_train_epochs=1,
        learning_rate=1e-4,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        dataset_num_proc=None,
        max_length=1024,
        seed=42,
        **tuned,
    )
    trainer = SFTTrainer(
        model=model,
        args=cfg,
        train_dataset=Dataset.from_list(examples),
        processing_class=tok,
        peft_config=LoraConfig(**LORA),
    )
    t0 = time.perf_counter()
    trainer.train()
    out = {
        "tokens": sum(len(e["input_ids"]) for e in examples),
        "train_s": time.perf_counter() - t0,
        "bf16": cfg.bf16,
        "gradient_checkpointing": cfg.gradient_checkpointing,
    }
    if packing:
        attention = model.config._attn_implementation
        out.update(
            packing_strategy=cfg.packing_strategy,
            padding_free=trainer.padding_free,  # (TRL turns it on for best-fit packing; the config field stays False)
            attention=attention,
            # the batch becomes one row with position_ids restarting at each sample: only varlen kernels
            # (flash-attention) keep the samples apart; with SDPA a packed sample's logits differ from the
            # sample's alone (checked on the bench model: by up to 2.1)
            samples_isolated=attention.startswith("flash_attention") or "varlen" in attention,
            steps=trainer.state.global_step,
        )
    return out


def sft_raw_loop(work: Path, limit: int | None) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model

    examples = tokenized_sft(work / "model", work / "sft.jsonl")[:limit]
    model, tok = _model(work)
    model = get_peft_model(model, LoraConfig(**LORA))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    order = random.Random(42).sample(range(len(examples)), len(examples))
    t0 = time.perf_counter()
    for start in range(0, len(order), BATCH):
        batch = [examples[i] for i in order[start : start + BATCH]]
        width = max(len(e["input_ids"]) for e in batch)
        ids = torch.full((len(batch), width), tok.pad_token_id)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        labels = torch.full((len(batch), width), -100)
        for row, e in enumerate(batch):
            n = len(e["input_ids"])
            ids[row, :n] = torch.tensor(e["input_ids"])
            mask[row, :n] = 1
            labels[row, :n] = torch.tensor([t if m else -100 for t, m in zip(e["input_ids"], e["assistant_masks"])])
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    return {"tokens": sum(len(e["input_ids"]) for e in examples), "train_s": time.perf_counter() - t0}


def sft_hf_concat(work: Path, limit: int | None) -> dict:
    """ITREX's --dataset_concatenation: every sample concatenated, cut into 1024-token blocks."""
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments, default_data_collator

    examples = tokenized_sft(work / "model", work / "sft.jsonl")[:limit]
    stream = [t for e in examples for t in e["input_ids"]]
    blocks = [stream[i : i + 1024] for i in range(0, len(stream) // 1024 * 1024, 1024)]
    model, tok = _model(work)
    model = get_peft_model(model, LoraConfig(**LORA))
    args = TrainingArguments(
        output_dir=str(work / "out-hf"),
        per_device_train_batch_size=BATCH,
        num_train_epochs=1,
        learning_rate=1e-4,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        seed=42,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_dict({"input_ids": blocks, "labels": blocks}),
        data_collator=default_data_collator,
    )
    t0 = time.perf_counter()
    trainer.train()
    return {"tokens": len(blocks) * 1024, "train_s": time.perf_counter() - t0}


def dpo_trl(work: Path, limit: int | None, defaults: bool) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    from neuralchat_recipes.data.formats import convert_rows
    from neuralchat_recipes.data.templates import prompt_text

    model, tok = _model(work)
    raw = [json.loads(line) for line in (work / "dpo.jsonl").read_text().splitlines()][:limit]
    rows = convert_rows(raw, "orca_dpo_pairs", "preference", "dpo.jsonl")
    ds = Dataset.from_list(
        [
            {
                "prompt": prompt_text("neural_chat", r["prompt"], tok.eos_token),
                "chosen": r["chosen"],
                "rejected": r["rejected"],
            }
            for r in rows
        ]
    )
    tuned = {} if defaults else dict(bf16=False, gradient_checkpointing=False)
    ref = None
    if not defaults:
        from transformers import AutoModelForCausalLM

        ref = AutoModelForCausalLM.from_pretrained(work / "model")  # a separate frozen reference
    cfg = DPOConfig(
        output_dir=str(work / "out-dpo"),
        per_device_train_batch_size=BATCH,
        num_train_epochs=1,
        learning_rate=5e-4,
        beta=0.1,
        max_length=1024,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        dataset_num_proc=None,
        seed=42,
        **tuned,
    )
    trainer = DPOTrainer(
        model=model, ref_model=ref, args=cfg, train_dataset=ds, processing_class=tok, peft_config=LoraConfig(**LORA)
    )
    t0 = time.perf_counter()
    trainer.train()
    return {
        "pairs": len(ds),
        "train_s": time.perf_counter() - t0,
        "bf16": cfg.bf16,
        "gradient_checkpointing": cfg.gradient_checkpointing,
        "reference": "separate model" if ref else "adapter disabled",
    }


CONTENDERS = {
    "sft_trl_defaults": lambda w, n: sft_trl(w, n, defaults=True),
    "sft_trl_fp32": lambda w, n: sft_trl(w, n, defaults=False),
    "sft_trl_fp32_packing": lambda w, n: sft_trl(w, n, defaults=False, packing=True),
    "sft_raw_loop": sft_raw_loop,
    "sft_hf_concat": sft_hf_concat,
    "dpo_trl_defaults": lambda w, n: dpo_trl(w, n, defaults=True),
    "dpo_trl_fp32_ref": lambda w, n: dpo_trl(w, n, defaults=False),
}

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("name", choices=sorted(CONTENDERS))
    parser.add_argument("work", type=Path)
    parser.add_argument("--limit", type=int, default=None)
    a = parser.parse_args()
    print(json.dumps(CONTENDERS[a.name](a.work, a.limit)))
