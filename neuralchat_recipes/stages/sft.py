"""SFT: the dataset's rows rendered with the stage's template, prompt tokens masked from the loss.

Three trainers, one per data layout:
- unpacked samples: TRL's SFTTrainer (batches padded to their longest sample); on Gaudi the
  GaudiTrainer with our collator, since optimum-habana's GaudiSFTTrainer (older TRL API) would
  re-collate pre-tokenized samples and lose the prompt masking;
- packed samples (``packing``, ITREX --dataset_concatenation): the HF Trainer on blocks of whole
  samples, each attending only to itself (per-sample causal attention, or a block-diagonal mask on
  Gaudi; data/packing.py), since TRL's packing does not isolate samples with sdpa/eager attention;
  also LLaMA-Adapter, whose wrapper TRL's fused loss bypasses;
- seq2seq models (FLAN-T5): the HF Seq2SeqTrainer (ITREX finetune_seq2seq.py).
Tokenized data is cached under ``<output_root>/cache/tokenized`` by a key holding the data,
tokenizer, template and every preprocessing setting. The adapter (or full weights), tokenizer
and chat template are saved.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import StageContext
from .common import StageError, ready_to_train, completion_only_lm_head, deepspeed_file, load_model, load_tokenizer, log, model_source, render_prompt, train_and_save, training_config, eval_kwargs
from .peft_config import build_peft_config

# TRL's SFTTrainer computes the loss through a fused LM head patched onto the base model, which
# PEFT's adaption-prompt wrapper (LLaMA-Adapter) bypasses; those adapters train with the HF Trainer.
PLAIN_TRAINER_METHODS = {"llama_adapter"}


def run(ctx: StageContext) -> dict[str, Any]:
    from ..data.loading import load_splits

    spec, args = ctx.spec, ctx.spec.args
    source = model_source(spec.inputs[0])
    tokenizer = load_tokenizer(spec, source, args["template"])
    rows, held_out, data_source = load_splits(ctx.stage.dataset, "sft")
    if not args["do_eval"]:
        held_out = None
    if spec.model["architecture"] == "seq2seq":
        return _run_seq2seq(ctx, source, tokenizer, rows, held_out)
    examples = _tokenized(ctx, tokenizer, rows, "train")
    eval_examples = _tokenized(ctx, tokenizer, held_out, "eval") if held_out else None
    log.info("[%s] %d training samples from %s (%d tokens)%s", spec.name, len(examples), data_source,
             sum(len(e["input_ids"]) for e in examples), f", {len(eval_examples)} held out" if eval_examples else "")
    if uses_plain_trainer(ctx.backend, args, spec.peft):
        return _run_plain_trainer(ctx, source, tokenizer, examples, eval_examples)
    from datasets import Dataset

    trainer_cls, config_cls = ctx.backend.sft_classes()
    # training arguments first: with ZeRO-3 they make from_pretrained load the weights already sharded
    config = training_config(ctx, config_cls, trl_config_extra(args, deepspeed_file(ctx)))
    model = load_model(spec, source, args["precision"])
    ready_to_train(ctx, model)
    trainer = trainer_cls(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(examples),
        eval_dataset=Dataset.from_list(eval_examples) if eval_examples else None,
        processing_class=tokenizer,
        peft_config=build_peft_config(spec.peft),
        **ctx.backend.trainer_kwargs(args),
    )
    with completion_only_lm_head(ctx.backend.device):
        return train_and_save(ctx, trainer, tokenizer)


def uses_plain_trainer(backend, args: dict[str, Any], peft: dict[str, Any] | None) -> bool:
    """Packed blocks, LLaMA-Adapter, and backends whose TRL takes no pre-tokenized samples use the HF
    (or Gaudi) Trainer with our collators; the rest TRL's SFTTrainer."""
    return args["packing"] or bool(peft and peft["method"] in PLAIN_TRAINER_METHODS) or not backend.sft_with_trl


def trl_config_extra(args: dict[str, Any], deepspeed: str | None) -> dict[str, Any]:
    """SFTConfig keywords beyond the common training arguments."""
    return dict(
        max_length=args["max_seq_length"],
        packing=False,
        pad_to_multiple_of=args["max_seq_length"] if args["pad_to_max"] else None,
        group_by_length=args["group_by_length"],
        dataset_num_proc=None,
        deepspeed=deepspeed,
        include_num_input_tokens_seen="non_padding",
        **eval_kwargs(args),
    )


def plain_config_extra(args: dict[str, Any], deepspeed: str | None) -> dict[str, Any]:
    """TrainingArguments keywords of the plain-Trainer path beyond the common ones."""
    return dict(
        group_by_length=args["group_by_length"] and not args["packing"], deepspeed=deepspeed,
        # the packed path's 4D mask cannot be summed into a token count: count all, scale by the real share
        include_num_input_tokens_seen="all" if args["packing"] else "non_padding", **eval_kwargs(args))


def _tokenized(ctx: StageContext, tokenizer, rows, part: str) -> list[dict[str, list[int]]]:
    """Tokenize rows, or read them from the tokenized-data cache."""
    from .. import ENGINE_FINGERPRINT_VERSION
    from ..data.tokenize import tokenize_cached, tokenize_sft, tokenizer_identity
    from ..plan import data_identity

    args = ctx.spec.args
    key = {"engine": ENGINE_FINGERPRINT_VERSION, "part": part, "dataset": data_identity(ctx.spec.dataset or {}), "rows": len(rows),
           "tokenizer": tokenizer_identity(tokenizer), "template": args["template"],
           **{k: args[k] for k in ("max_seq_length", "max_prompt_length", "loss_on")}}
    root = Path(ctx.recipe.output_root).expanduser() / "cache" / "tokenized"
    examples, hit = tokenize_cached(root, key, lambda: tokenize_sft(
        rows, tokenizer, args["template"], args["max_seq_length"], args["max_prompt_length"], args["loss_on"]))
    if hit:
        log.info("[%s] tokenized %s data read from the cache", ctx.spec.name, part)
    if not examples:
        raise StageError(f"`{ctx.spec.name}.dataset`: no {part} sample has a token to learn from after truncation to "
                         f"max_seq_length={args['max_seq_length']}; raise `{ctx.spec.name}.max_seq_length`")
    return examples


def _run_plain_trainer(ctx: StageContext, source: str, tokenizer, examples, eval_examples) -> dict[str, Any]:
    from datasets import Dataset
    from transformers import DataCollatorForSeq2Seq

    from ..data.packing import (PackedCollator, labels_of, non_pad_fraction, pack, supports_labelled_logits,
                                 use_packed_attention)

    spec, args = ctx.spec, ctx.spec.args
    trainer_cls, config_cls = ctx.backend.trainer_classes()
    config = training_config(ctx, config_cls, plain_config_extra(args, deepspeed_file(ctx)))
    model = load_model(spec, source, args["precision"])
    ready_to_train(ctx, model)
    size = args["max_seq_length"]
    extra: dict[str, Any] = {}
    if args["packing"]:
        import inspect

        if "position_ids" not in inspect.signature(model.forward).parameters:
            raise StageError(f"`{spec.name}.packing`: {type(model).__name__} takes no position_ids, so packed samples "
                             f"cannot be kept apart; set `{spec.name}.packing=false`")
        train, held = pack(examples, size), pack(eval_examples, size) if eval_examples else None
        eager = getattr(model.config, "_attn_implementation", "sdpa") == "eager"
        # per-sample causal attention where the model runs on transformers' attention interface (not on
        # Gaudi, whose kernels take masks); a block-diagonal mask otherwise
        segments = ctx.backend.device != "hpu" and use_packed_attention(model)
        # the LM head and loss only where a label is predicted (~20-40% of positions are prompt tokens);
        # not with static shapes, where the logits' shape must not change from batch to batch
        labelled = not args["pad_to_max"] and ctx.backend.device != "hpu" and supports_labelled_logits(model)
        import torch

        collator = PackedCollator(tokenizer.pad_token_id, pad_to=size if args["pad_to_max"] else None,
                                  mask="segments" if segments else "4d",
                                  dtype=torch.float32 if eager and not segments else None, labelled_logits=labelled)
        lengths = [len(e["input_ids"]) for e in examples]
        micro = args["per_device_train_batch_size"]
        extra["packing"] = {
            "samples": len(examples), "blocks": len(train),
            "isolation": "per-sample causal attention" if segments else "block-diagonal mask",
            "logits": "labelled positions only" if labelled else "every position",
            "non_pad_fraction_packed": round(non_pad_fraction([len(b["input_ids"]) for b in train], micro,
                                                              size if args["pad_to_max"] else None), 4),
            "non_pad_fraction_unpacked": round(non_pad_fraction(lengths, micro, size if args["pad_to_max"] else None), 4),
        }
        log.info("[%s] packed %d samples into %d blocks of <= %d tokens: %.1f%% real tokens per batch (%.1f%% unpacked)",
                 spec.name, len(examples), len(train), size, 100 * extra["packing"]["non_pad_fraction_packed"],
                 100 * extra["packing"]["non_pad_fraction_unpacked"])
    else:
        def rows_of(exs):
            return [{"input_ids": e["input_ids"], "attention_mask": [1] * len(e["input_ids"]), "labels": labels_of(e)}
                    for e in exs]

        train, held = rows_of(examples), rows_of(eval_examples) if eval_examples else None
        collator = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, padding="max_length" if args["pad_to_max"] else True,
                                          max_length=size if args["pad_to_max"] else None)
    peft_config = build_peft_config(spec.peft)
    if peft_config is not None:
        from peft import get_peft_model

        model = get_peft_model(model, peft_config)
    trainer = trainer_cls(model=model, args=config, train_dataset=Dataset.from_list(train),
                          eval_dataset=Dataset.from_list(held) if held else None, processing_class=tokenizer,
                          data_collator=collator, **ctx.backend.trainer_kwargs(args))
    # (the model's own loss, on the labelled positions: TRL's fused, tiled LM head measured 12% slower on packed
    # blocks here, bench/)
    metrics = train_and_save(ctx, trainer, tokenizer)
    metrics.update(extra)
    if args["packing"] and collator.fraction is not None:
        metrics["packing"]["non_pad_fraction_seen"] = round(collator.fraction, 4)
        metrics["tokens_seen"] = int(metrics["tokens_seen"] * collator.fraction)
    return metrics


def _run_seq2seq(ctx: StageContext, source: str, tokenizer, rows, held_out) -> dict[str, Any]:
    """Encoder-decoder SFT (ITREX finetune_seq2seq.py): prompt -> encoder, answer -> labels."""
    from datasets import Dataset
    from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments

    spec, args = ctx.spec, ctx.spec.args
    max_prompt = args["max_prompt_length"] or args["max_seq_length"]

    def encode(rows_):
        out = []
        for row in rows_:
            messages = row["messages"]
            last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
            prompt = render_prompt(tokenizer, args["template"], messages[:last])
            enc = tokenizer(prompt, truncation=True, max_length=max_prompt)
            enc["labels"] = tokenizer(messages[last]["content"], truncation=True, max_length=args["max_seq_length"])["input_ids"]
            out.append(dict(enc))
        return out

    config = training_config(ctx, Seq2SeqTrainingArguments, dict(deepspeed=deepspeed_file(ctx), **eval_kwargs(args)))
    model = load_model(spec, source, args["precision"], causal=False)
    peft_config = build_peft_config(spec.peft, seq2seq=True)
    if peft_config is not None:
        from peft import get_peft_model

        model = get_peft_model(model, peft_config)
    trainer = Seq2SeqTrainer(model=model, args=config, train_dataset=Dataset.from_list(encode(rows)),
                             eval_dataset=Dataset.from_list(encode(held_out)) if held_out else None,
                             data_collator=DataCollatorForSeq2Seq(tokenizer, model=model), processing_class=tokenizer)
    return train_and_save(ctx, trainer, tokenizer)
