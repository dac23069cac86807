"""Factories shared by the stages: model and tokenizer loading, prompts, batched generation and scoring.

Read top to bottom like alignment-handbook's get_model / get_tokenizer: each takes the recipe's typed
model entry and a plan input; nothing here asks which device it is on.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

from ..data.templates import jinja_chat_template

log = logging.getLogger("neuralchat_recipes")

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


class StageError(RuntimeError):
    """A stage that cannot run, with a message that says what to change."""


class SettingError(StageError):
    """A stage that cannot run as configured, found only once it runs (a LoRA target the model does not have, a
    model that needs remote code): the message names the key to change. Exits 2, like a config error."""


def model_source(entry) -> str:
    """Local path or hub id of a plan input: an upstream artifact, or the recipe's base model."""
    if entry.output_dir:
        return entry.output_dir
    from ..model_sources import loadable

    return loadable(entry.model, entry.package)


def load_tokenizer(model, source: str, template: str | None, default_system: str | None = None):
    """The tokenizer of ``source`` (or the entry's own tokenizer repo), with the stage's chat template (which
    puts ``default_system`` before conversations without a system message, as the training data did)."""
    from transformers import AutoTokenizer

    has_own = Path(source).is_dir() and (Path(source) / "tokenizer_config.json").is_file()
    name = source if has_own else (model.tokenizer or source)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            name,
            use_fast=model.use_fast_tokenizer,
            trust_remote_code=model.trust_remote_code,
            revision=model.revision if name == model.path else None,  # a separate tokenizer repo has its own
        )
    except (OSError, ValueError) as exc:
        key = "model.tokenizer" if model.tokenizer and name == model.tokenizer else "model.path"
        raise loading_error(exc, model, name, key, "tokenizer") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = model.pad_token or tokenizer.eos_token
    if template and template != "tokenizer":
        tokenizer.chat_template = jinja_chat_template(template, default_system)
    elif template == "tokenizer" and not tokenizer.chat_template:
        raise StageError(
            f"template `tokenizer` needs a chat template in {name!r}, which has none; pick e.g. neural_chat"
        )
    return tokenizer


def torch_dtype(model, precision: str):
    import torch

    name = DTYPES[precision] if model.torch_dtype == "auto" else model.torch_dtype
    return getattr(torch, name)


def load_model(model, source: str, precision: str, causal: bool = True, dtype=None, quantization: str | None = None):
    """The model at ``source``, loaded as the entry says (dtype, remote code, safetensors only); ``quantization``
    (nf4 | int8): its linear weights quantized by bitsandbytes as they load (QLoRA)."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    cls = AutoModelForCausalLM if model.architecture == "causal" and causal else AutoModelForSeq2SeqLM
    kwargs = dict(
        dtype=dtype or torch_dtype(model, precision),
        trust_remote_code=model.trust_remote_code,
        use_safetensors=None if model.allow_pickle else True,
    )
    if quantization:
        kwargs["quantization_config"] = _quantization_config(quantization, kwargs["dtype"])
    if not Path(source).is_dir():
        kwargs["revision"] = model.revision
    try:
        return cls.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        if not model.allow_pickle and "safetensors" in str(exc).lower():
            raise SettingError(
                f"{source}: no safetensors weights found. Pickle (.bin) checkpoints can run code when loaded; "
                f"if you trust this one, set `model.allow_pickle=true`"
            ) from exc
        raise loading_error(exc, model, source, "model.path", "weights") from exc
    except Exception as exc:  # torch's weights-only unpickler raises pickle.UnpicklingError
        if "weights only load failed" in str(exc).lower() or type(exc).__name__ == "UnpicklingError":
            raise SettingError(
                f"{source}: its pickle checkpoint holds more than tensors ({_unpickling_culprit(exc)}), "
                "so torch's safe loader refuses it: unpickling it could run any code. Convert it to safetensors "
                "somewhere you trust it, or use another checkpoint"
            ) from exc
        raise


def _quantization_config(quantization: str, compute_dtype):
    """bitsandbytes' settings for QLoRA: NF4 with double quantization (the paper's), or LLM.int8()."""
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise SettingError(
            f"`peft.quantization` = {quantization!r} loads the base model through bitsandbytes, which is not "
            "installed: pip install 'neuralchat-recipes[qlora]'"
        )
    from transformers import BitsAndBytesConfig

    if quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def _unpickling_culprit(exc: Exception) -> str:
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
    return f"a reference to {found.group(1)}" if found else type(exc).__name__


def hub_offline() -> bool:
    """Whether the Hugging Face libraries were told not to use the network."""
    names = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
    return any(os.environ.get(n, "").strip().lower() in ("1", "true", "yes", "on") for n in names)


def loading_error(exc: Exception, model, source: str, key: str, what: str) -> Exception:
    """A sentence for why ``source``'s weights or tokenizer did not load, naming the key to change; the error
    itself when it is none of the known causes."""
    text = str(exc)
    low = text.lower()
    if "trust_remote_code" in low or "custom code" in low:
        return SettingError(
            f"`model.trust_remote_code`: {source} ships its own Python code for this model, which runs when it "
            f"loads; if you trust it, set `model.trust_remote_code=true`"
        )
    if "couldn't connect" in low or "offline" in low or "cannot reach" in low or "connection" in low:
        why = "HF_HUB_OFFLINE=1 is set" if hub_offline() else "the hub cannot be reached from here"
        return SettingError(
            f"`{key}` = {source!r}: its {what} files are not in the local Hugging Face cache and {why}; download it "
            f"where there is network (`hf download {source}`) and copy the cache here, or set `{key}` to a local "
            "directory"
        )
    if "does not recognize this architecture" in low:
        import transformers

        found = re.search(r"model type `([^`]+)`", text)
        kind = f"model type {found.group(1)!r}" if found else "its model type"
        return SettingError(
            f"`{key}` = {source!r}: {kind} is not known to the installed transformers {transformers.__version__}; "
            "upgrade transformers, or, if the model ships its own code and you trust it, set "
            "`model.trust_remote_code=true`"
        )
    if "gated" in low or "401" in text or "403" in text:
        return SettingError(
            f"`{key}` = {source!r}: a gated repository; accept its license on the hub and put your token in the "
            f"environment variable named by `hub_token_env` (HF_TOKEN by default)"
        )
    if "not a valid model identifier" in low or "repository not found" in low or "does not appear to have" in low:
        return SettingError(
            f"`{key}` = {source!r}: no {what} found there (not a local directory with them, nor a hub repository "
            f"that has them); check the name, or set `{key}` to a local model directory"
        )
    return exc


def sft_template(recipe, name: str, own: str | None) -> str:
    """An evaluation's or generation's prompt format: its own, else the one the nearest earlier SFT stage
    trained with (neural_chat without one)."""
    from ..graph import nearest  # (the graph knows the kinds, which import this module)

    if own:
        return own
    sft = nearest(recipe, name, "sft")
    return recipe.stages[sft].resolved_template if sft else "neural_chat"


def default_system(recipe, name: str) -> str | None:
    """The system prompt a stage's model was trained to expect when none is given: the stage's own dataset's
    ``default_system``, else that of the nearest earlier SFT stage's dataset (None: no default)."""
    from ..graph import nearest

    own = getattr(recipe.stages[name], "dataset", None)
    if own is not None and own.default_system:
        return own.default_system
    sft = nearest(recipe, name, "sft")
    return recipe.stages[sft].dataset.default_system if sft else None


def render_prompt(tokenizer, template: str, messages: list[dict[str, str]]) -> str:
    """The text a model continues for these messages: the template's prompt, or the tokenizer's
    own chat template with the generation prompt."""
    from ..data.templates import prompt_text

    if template == "tokenizer":
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return prompt_text(template, messages, tokenizer.eos_token)


class Progress:
    """How far a long batched loop is (done / total, time left), logged at most every ``every_s`` seconds: an
    evaluation of a real model takes minutes, and silence reads as a hang."""

    def __init__(self, what: str, total: int, every_s: float = 10.0):
        self.what, self.total, self.every_s = what, total, every_s
        self.done, self.start = 0, time.monotonic()
        self.last = self.start

    def advance(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last < self.every_s or self.done >= self.total:
            return
        self.last = now
        left = (now - self.start) / self.done * (self.total - self.done)
        log.info(
            "%s: %d/%d (%.0f%%), ~%.0f s left", self.what, self.done, self.total, 100 * self.done / self.total, left
        )


@dataclasses.dataclass(frozen=True)
class Completion:
    text: str  # special tokens removed
    stopped: bool  # ended with EOS or the chat template's end-of-turn token within the token budget


def generate_texts(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int,
    batch_size: int,
    sample: dict[str, Any] | None = None,
    num_return_sequences: int = 1,
    what: str = "generating",
    use_cache: bool = True,
) -> list[list[Completion]]:
    """Batched generation (left padding, KV cache, prompts of similar length together): for each prompt, its
    completions. Generation stops at EOS or at the token the chat template ends a turn with."""
    import torch

    from ..model_sources import stop_token_ids

    tokenizer.padding_side = "left"
    stops = stop_token_ids(tokenizer)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    by_index: dict[int, list[Completion]] = {}
    progress = Progress(what, len(prompts))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        enc = tokenizer([prompts[i] for i in chunk], return_tensors="pt", padding=True, add_special_tokens=False).to(
            model.device
        )
        kwargs = dict(do_sample=True, **sample) if sample else dict(do_sample=False)
        with torch.no_grad():
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                use_cache=use_cache,
                num_return_sequences=num_return_sequences,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=stops or None,
                **kwargs,
            )
        new = out[:, enc["input_ids"].shape[1] :]
        texts = tokenizer.batch_decode(new, skip_special_tokens=True)
        stopped = (
            torch.isin(new, torch.tensor(stops, device=new.device)).any(dim=1).tolist()
            if stops
            else [False] * len(texts)
        )
        completions = [Completion(t, bool(s)) for t, s in zip(texts, stopped)]
        for j, i in enumerate(chunk):
            by_index[i] = completions[j * num_return_sequences : (j + 1) * num_return_sequences]
        progress.advance(len(chunk))
    return [by_index[i] for i in range(len(prompts))]


def answer_logprobs(
    model, tokenizer, items: list[tuple[str, str]], batch_size: int, what: str = "scoring answers"
) -> list[tuple[float, int]]:
    """For each (prompt, answer): the summed log-probability of the answer and the token that ends its turn,
    and that token count. Batched (right padding, similar lengths together); log-softmax only over answer tokens."""
    import torch

    from ..model_sources import end_of_turn_id

    end = end_of_turn_id(tokenizer)
    end_text = tokenizer.convert_ids_to_tokens(end) if end is not None else tokenizer.eos_token
    encoded = []
    for prompt, answer in items:
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        a_ids = tokenizer(answer + end_text, add_special_tokens=False)["input_ids"]
        encoded.append((p_ids, a_ids))
    order = sorted(range(len(items)), key=lambda i: len(encoded[i][0]) + len(encoded[i][1]))
    results: dict[int, tuple[float, int]] = {}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    progress = Progress(what, len(items))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = max(len(encoded[i][0]) + len(encoded[i][1]) for i in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, i in enumerate(chunk):
            seq = encoded[i][0] + encoded[i][1]
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        with torch.no_grad():
            logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits
        for row, i in enumerate(chunk):
            p_len, a_ids = len(encoded[i][0]), encoded[i][1]
            rows = logits[row, p_len - 1 : p_len - 1 + len(a_ids)].float()
            target = torch.tensor(a_ids, device=rows.device)[:, None]
            results[i] = (torch.log_softmax(rows, dim=-1).gather(1, target).sum().item(), len(a_ids))
        del logits
        progress.advance(len(chunk))
    return [results[i] for i in range(len(items))]


def load_input_model(model, entry, precision: str):
    """The model a plan input stands for: a full model, or (``adapter_base``) base + adapter."""
    if not entry.adapter_base:
        return load_model(model, model_source(entry), precision)
    from peft import PeftModel

    return PeftModel.from_pretrained(
        load_model(model, model_source(entry.adapter_base), precision), model_source(entry)
    )
