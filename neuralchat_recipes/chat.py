"""Talk to a trained model: ``mode=chat`` (interactive, tokens streamed) and ``mode=generate prompt=...`` (one answer).

The model is the recipe's final model as its plan names it (the last stage that makes a model or an adapter,
trained by an earlier ``mode=run`` with the same overrides), or ``chat.model=<dir>``. Messages go through the
model's saved chat template, which holds the prompt format and the system prompt it was trained with, so a
user types only what they would ask.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, TextIO

from .config import ConfigError
from .graph import final_stage, produces
from .plan import Plan
from .recipe import RecipeConfig

HELP = "/reset starts a new conversation, /exit (or Ctrl-D) ends it"


def final_artifact(recipe: RecipeConfig, plan: Plan):
    """The plan's last model-making stage, which an earlier run must have finished."""
    final = final_stage(recipe, [s.name for s in plan.stages])
    if final is None:
        raise ConfigError([f"recipe {recipe.name!r} makes no model to talk to; name one with `chat.model=<dir>`"])
    spec = plan.stage(final)
    if not (Path(spec.output_dir) / "manifest.json").is_file():
        raise ConfigError(
            [
                f"the recipe's final model (stage `{spec.name}`) has not been trained with these settings yet: run "
                "the same command with mode=run first (or drop `mode=`), or name a model directory with "
                "`chat.model=<dir>`"
            ]
        )
    return spec


class Talker:
    """A loaded model and tokenizer that answer a conversation, streaming the answer to ``out``."""

    def __init__(self, recipe: RecipeConfig, plan: Plan):
        from transformers.utils import logging as hf_logging

        from .graph import StageInput
        from .stages.common import load_input_model, load_tokenizer

        hf_logging.disable_progress_bar()  # a weight-loading bar would land in the conversation

        self.settings = recipe.chat
        if self.settings.model:
            source = Path(self.settings.model).expanduser()
            if not source.is_dir():
                raise ConfigError([f"`chat.model` = {self.settings.model!r}: not a directory"])
            entry = StageInput(stage="chat.model", output_dir=str(source.resolve()))
            self.described = str(source)
        else:
            spec = final_artifact(recipe, plan)
            adapter = produces(recipe.stages[spec.name]) == "adapter"
            entry = StageInput(
                stage=spec.name,
                fingerprint=spec.fingerprint,
                output_dir=spec.output_dir,
                adapter_base=spec.inputs[0] if adapter else None,
            )
            self.described = f"{spec.output_dir} (stage {spec.name} of recipe {recipe.name})"
        self.tokenizer = load_tokenizer(recipe.model, entry.output_dir, None)
        if not self.tokenizer.chat_template:
            raise ConfigError([f"{entry.output_dir} has no chat template to put messages in"])
        self.model = load_input_model(recipe.model, entry, "fp32").eval()

    def answer(self, messages: list[dict[str, str]], out: TextIO) -> tuple[str, bool]:
        """Stream the answer to ``out``; (its text, whether it ended its turn within max_new_tokens)."""
        import torch

        from .model_sources import stop_token_ids

        if self.settings.system is not None and (not messages or messages[0]["role"] != "system"):
            messages = [{"role": "system", "content": self.settings.system}, *messages]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        enc = self.tokenizer(text, return_tensors="pt", add_special_tokens=False)
        stops = stop_token_ids(self.tokenizer)
        sample: dict[str, Any] = (
            {"do_sample": True, "temperature": self.settings.temperature}
            if self.settings.temperature > 0
            else {"do_sample": False}
        )
        streamer = streamer_to(self.tokenizer, out)
        with torch.no_grad():
            ids = self.model.generate(
                **enc,
                max_new_tokens=self.settings.max_new_tokens,
                eos_token_id=stops or None,
                pad_token_id=self.tokenizer.pad_token_id,
                streamer=streamer,
                **sample,
            )
        new = ids[0, enc["input_ids"].shape[1] :]
        stopped = bool(stops) and bool(torch.isin(new, torch.tensor(stops)).any())
        return self.tokenizer.decode(new, skip_special_tokens=True).strip(), stopped


def streamer_to(tokenizer, out: TextIO):
    """transformers' TextStreamer, writing to ``out`` (it prints to stdout) without special tokens."""
    from transformers import TextStreamer

    class Streamer(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            out.write(text + ("\n" if stream_end else ""))
            out.flush()

    return Streamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


def generate(recipe: RecipeConfig, plan: Plan) -> str:
    """mode=generate: answer ``prompt``, streamed to stdout; notes go to stderr."""
    talker = Talker(recipe, plan)
    print(f"model: {talker.described}", file=sys.stderr)
    answer, stopped = talker.answer([{"role": "user", "content": recipe.prompt}], sys.stdout)
    if not stopped:
        print(f"(no end of turn within chat.max_new_tokens={recipe.chat.max_new_tokens})", file=sys.stderr)
    return answer


def chat(recipe: RecipeConfig, plan: Plan, stdin: TextIO = sys.stdin) -> list[dict[str, str]]:
    """mode=chat: a conversation on the terminal (or any stdin), answers streamed as they are generated."""
    talker = Talker(recipe, plan)
    print(f"chatting with {talker.described}; {HELP}", file=sys.stderr)
    messages: list[dict[str, str]] = []
    while True:
        print("you> ", end="", flush=True)
        line = stdin.readline()
        if not line or line.strip() == "/exit":
            print()
            return messages
        text = line.strip()
        if text == "/reset":
            messages = []
            print("(new conversation)")
            continue
        if not text:
            continue
        messages.append({"role": "user", "content": text})
        print("model> ", end="", flush=True)
        answer, stopped = talker.answer(messages, sys.stdout)
        if not stopped:
            print(f"(cut at chat.max_new_tokens={recipe.chat.max_new_tokens})")
        messages.append({"role": "assistant", "content": answer})
