"""Runs a torchtune recipe as `tune run RECIPE --config CONFIG` does, inside torchtune's own venv, with a
timer around the recipe's train() and a count of the tokens its packed dataset holds:

    TORCHTUNE_RESULT=out.json python bench/torchtune_run.py RECIPE --config CONFIG

Also holds the tokenizer component the bench config names (`torchtune_run.BenchTokenizer`): torchtune's
chat datasets need a ModelTokenizer, and its own HF wrapper (HuggingFaceBaseTokenizer) only encodes text,
so this one adds the `### User:` / `### Assistant:` prompt template around it, as a torchtune user with a
custom model writes one. Imported from torchtune's venv, never from this project's.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path

from torchtune.data import PromptTemplate
from torchtune.modules.transforms import Transform
from torchtune.modules.transforms.tokenizers import (
    HuggingFaceBaseTokenizer,
    ModelTokenizer,
    tokenize_messages_no_special_tokens,
)


class BenchTokenizer(ModelTokenizer, Transform):
    """The bench model's tokenizer.json as a torchtune ModelTokenizer with a neural-chat-like prompt template."""

    def __init__(self, model_dir: str, max_seq_len: int | None = None):
        self._hf = HuggingFaceBaseTokenizer(
            str(Path(model_dir) / "tokenizer.json"),
            tokenizer_config_json_path=str(Path(model_dir) / "tokenizer_config.json"),
        )
        config = json.loads((Path(model_dir) / "tokenizer_config.json").read_text())
        pad = config.get("pad_token") or config.get("eos_token")  # (SmolLM2's config names no pad token)
        self.pad_id = self._hf.tokenizer.token_to_id(pad if isinstance(pad, str) else pad["content"])
        self.bos_id, self.eos_id = self._hf.bos_id, self._hf.eos_id
        self.stop_tokens = [self.eos_id]
        self.max_seq_len = max_seq_len
        self.prompt_template = PromptTemplate(
            {"system": ("### System:\n", "\n"), "user": ("### User:\n", "\n"), "assistant": ("### Assistant:\n", "")}
        )

    @property
    def vocab_size(self) -> int:
        return self._hf.tokenizer.get_vocab_size()

    def encode(self, text: str, add_bos: bool = True, add_eos: bool = True, **_) -> list[int]:
        return self._hf.encode(text, add_bos=add_bos, add_eos=add_eos)

    def decode(self, token_ids: list[int]) -> str:
        return self._hf.decode(token_ids)

    def tokenize_messages(self, messages, *, add_start_tokens: bool = True, add_end_tokens: bool = True):
        return tokenize_messages_no_special_tokens(
            tokenizer=self,
            messages=self.prompt_template(messages),
            bos_id=self.bos_id if add_start_tokens else None,
            eos_id=self.eos_id if add_end_tokens else None,
        )

    def __call__(self, sample, inference: bool = False):
        messages = sample.pop("messages")
        sample["tokens"], sample["mask"] = self.tokenize_messages(messages, add_end_tokens=not inference)
        return sample


def bench_tokenizer(model_dir: str, max_seq_len: int | None = None) -> BenchTokenizer:
    return BenchTokenizer(model_dir, max_seq_len)


def _packed_samples(dataset, pad_id: int) -> list[tuple[int, int]]:
    """(tokens, labelled tokens) of each packed sample; the padding torchtune appends as a last 'sample' is left out."""
    samples = []
    for pack in getattr(dataset, "packs", []):
        start = 0
        for n in pack["seq_lens"].tolist():
            tokens, labels = pack["tokens"][start : start + n], pack["labels"][start : start + n]
            if not bool((tokens == pad_id).all()):
                samples.append((n, int((labels != -100).sum())))
            start += n
    return samples


RECIPE_CLASSES = {
    "lora_finetune_single_device": "LoRAFinetuneRecipeSingleDevice",
    "lora_dpo_single_device": "LoRADPORecipeSingleDevice",
}


def main() -> None:
    import torchtune

    recipe, argv = sys.argv[1], sys.argv[2:]
    path = Path(torchtune.__file__).resolve().parent.parent / "recipes" / f"{recipe}.py"
    spec = importlib.util.spec_from_file_location(recipe, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cls = getattr(module, RECIPE_CLASSES[recipe])
    train = cls.train
    result: dict = {}

    def timed_train(self) -> None:
        t0 = time.perf_counter()
        train(self)
        result["train_s"] = time.perf_counter() - t0
        dataset = self._dataloader.dataset
        pad_id = getattr(self._tokenizer, "pad_id", 0)
        result["samples"] = _packed_samples(dataset, pad_id)
        result["packs"] = len(getattr(dataset, "packs", []))
        result["steps"] = self.global_step
        # recipe_main ends in sys.exit (torchtune's config.parse), so the result is written here
        Path(os.environ["TORCHTUNE_RESULT"]).write_text(json.dumps(result))

    cls.train = timed_train
    sys.argv = [str(path), *argv]
    module.recipe_main()


if __name__ == "__main__":
    main()
