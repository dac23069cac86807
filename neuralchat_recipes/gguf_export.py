"""Write a Hugging Face Llama-family model as a GGUF file (f32 or f16) with the ``gguf`` package.

What llama.cpp's ``convert_hf_to_gguf.py`` does for Llama-architecture models (Llama, Mistral,
SmolLM ...) with byte-level BPE tokenizers: llama.cpp tensor names (gguf's own name map), the
q/k projections permuted into llama.cpp's rotary layout, the hyperparameters, and the
tokenizer (tokens, types, merges, special token ids, chat template). Other architectures and
sentencepiece tokenizers are refused with a message naming llama.cpp's converter; this module
does not guess at layouts it has not been checked against.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

LLAMA_FAMILY = {"LlamaForCausalLM", "MistralForCausalLM"}
GGUF_DTYPES = ("f32", "f16")


class ExportError(ValueError):
    """A model this exporter cannot write, with what to do instead."""


def _unsupported(what: str) -> ExportError:
    return ExportError(
        f"{what}; GGUF export here covers Llama-architecture models (Llama, Mistral, SmolLM) with "
        "byte-level BPE tokenizers. For this model run llama.cpp's convert_hf_to_gguf.py on the "
        "stage's input directory (https://github.com/ggml-org/llama.cpp)"
    )


def _permute(weights, n_head: int, n_head_kv: int | None = None):
    """llama.cpp's rotary layout for q/k projections (the inverse of what transformers undoes on load)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _byte_level_bpe(tokenizer_json: dict[str, Any]) -> bool:
    model = tokenizer_json.get("model", {})

    def has_byte_level(node) -> bool:
        if not isinstance(node, dict):
            return False
        return node.get("type") == "ByteLevel" or any(has_byte_level(n) for n in node.get("pretokenizers", []))

    return (
        model.get("type") == "BPE"
        and not model.get("byte_fallback")
        and has_byte_level(tokenizer_json.get("pre_tokenizer") or {})
    )


def _vocabulary(tokenizer, tokenizer_json: dict[str, Any], vocab_size: int) -> tuple[list[str], list[int], list[str]]:
    """(tokens by id, their GGUF token types, merges as "a b") padded to the model's vocabulary size."""
    import gguf

    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = {t["id"]: t for t in tokenizer_json.get("added_tokens", [])}
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(by_id[i])
            types.append(
                gguf.TokenType.CONTROL
                if added.get(i, {}).get("special")
                else gguf.TokenType.USER_DEFINED
                if i in added
                else gguf.TokenType.NORMAL
            )
    merges = [m if isinstance(m, str) else " ".join(m) for m in tokenizer_json["model"].get("merges", [])]
    return tokens, [int(t) for t in types], merges


def write_gguf(
    model_dir: Path,
    out: Path,
    dtype: str = "f16",
    name: str | None = None,
    tokenizer_pre: str = "default",
    metadata: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Write ``model_dir`` (a saved Hugging Face model) to ``out`` as GGUF; returns what was written."""
    import gguf
    import numpy as np
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from .data.tokenize import adds_bos
    from .model_sources import end_of_turn_id

    if dtype not in GGUF_DTYPES:
        raise ExportError(f"GGUF dtype {dtype!r}: choose one of {', '.join(GGUF_DTYPES)}")
    config = AutoConfig.from_pretrained(model_dir)
    arch = (config.architectures or ["?"])[0]
    if arch not in LLAMA_FAMILY:
        raise _unsupported(f"architecture {arch}")
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if rope.get("rope_type", "default") not in ("default", None):
        raise _unsupported(f"rope scaling {rope.get('rope_type')!r}")
    tokenizer_file = model_dir / "tokenizer.json"
    tokenizer_json = json.loads(tokenizer_file.read_text(encoding="utf-8")) if tokenizer_file.is_file() else {}
    if not _byte_level_bpe(tokenizer_json):
        raise _unsupported("its tokenizer is not a byte-level BPE tokenizer.json")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    n_head, n_kv = (
        config.num_attention_heads,
        getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
    )
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_head

    writer = gguf.GGUFWriter(str(out), arch="llama")
    writer.add_name(name or model_dir.name)
    for key, value in (metadata or {}).items():
        writer.add_string(key, value)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_rope_dimension_count(head_dim)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32)

    tokens, types, merges = _vocabulary(tokenizer, tokenizer_json, config.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(tokenizer_pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for add, token_id in (
        (writer.add_bos_token_id, tokenizer.bos_token_id),
        (writer.add_eos_token_id, tokenizer.eos_token_id),
        (writer.add_pad_token_id, tokenizer.pad_token_id),
        (writer.add_unk_token_id, tokenizer.unk_token_id),
        (writer.add_eot_token_id, end_of_turn_id(tokenizer)),
    ):
        if token_id is not None:
            add(token_id)
    writer.add_add_bos_token(adds_bos(tokenizer))
    if isinstance(tokenizer.chat_template, str):
        writer.add_chat_template(tokenizer.chat_template)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    tied = getattr(config, "tie_word_embeddings", False)
    written = 0
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp reuses token_embd for the output when there is no output tensor
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise _unsupported(f"tensor {hf_name} has no llama.cpp name")
        data = tensor.detach().float().numpy()
        if hf_name.endswith("q_proj.weight"):
            data = _permute(data, n_head, n_head)
        elif hf_name.endswith("k_proj.weight"):
            data = _permute(data, n_head, n_kv)
        # norms and other vectors stay f32 (as llama.cpp's converter keeps them)
        data = data.astype(np.float16 if dtype == "f16" and data.ndim > 1 else np.float32)
        writer.add_tensor(gguf_name, np.ascontiguousarray(data))
        written += data.size
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {
        "file": out.name,
        "dtype": dtype,
        "parameters": written,
        "bytes": out.stat().st_size,
        "tokenizer_pre": tokenizer_pre,
        "architecture": "llama",
    }
