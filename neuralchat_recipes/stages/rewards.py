"""Reward functions GRPO can optimise, by name: verifiable rewards, and a trained reward model.

Each takes what TRL's GRPOTrainer passes (the prompts, the completions, and the dataset's other columns:
``reference``, the answer an SFT row gives; ``test`` and ``entry_point`` for code problems) and returns one
float per completion. ``RewardSpec`` in a recipe names one, with its weight and its own settings.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def exact_match(completions: list[str], reference: list[str], **_) -> list[float]:
    """1 when the completion is the reference answer (whitespace at the ends aside), else 0."""
    return [float(c.strip() == r.strip()) for c, r in zip(completions, reference)]


def final_answer(completions: list[str], reference: list[str], **_) -> list[float]:
    """1 when the completion's last number is the reference's last number (arithmetic written any way), else 0."""

    def last(text: str) -> str | None:
        numbers = NUMBER.findall(text)
        return numbers[-1] if numbers else None

    return [float(last(c) is not None and last(c) == last(r)) for c, r in zip(completions, reference)]


def regex(pattern: str) -> Callable[..., list[float]]:
    """1 when the whole completion matches ``pattern`` (a format check), else 0."""
    compiled = re.compile(pattern)

    def format_check(completions: list[str], **_) -> list[float]:
        return [float(compiled.fullmatch(c.strip()) is not None) for c in completions]

    return format_check


def code_tests(
    timeout_s: float = 10.0, memory_mb: int = 1024, allow_unsandboxed: bool = False
) -> Callable[..., list[float]]:
    """1 when the prompt's function, completed, passes the problem's tests in the sandbox (execution/sandbox.py),
    else 0."""

    def unit_tests(prompts: list[str], completions: list[str], test: list[str], entry_point: list[str], **_):
        from ..execution.sandbox import run_untrusted
        from .code_eval import program_for, truncate

        out = []
        for prompt, completion, tests, entry in zip(prompts, completions, test, entry_point):
            program = program_for({"prompt": prompt, "test": tests, "entry_point": entry}, truncate(completion))
            out.append(float(run_untrusted(program, timeout_s, memory_mb, allow_unsandboxed)[0]))
        return out

    return unit_tests


def reward_model(model_dir: str, batch_size: int = 8) -> Callable[..., list[float]]:
    """sigmoid of the score a trained reward model (an earlier ``reward`` stage's artifact) gives prompt +
    completion: in [0, 1] like the verifiable rewards (its raw scores span tens and would drown them)."""
    from .reward import load_scorer

    scores = load_scorer(model_dir, batch_size)

    def scored(prompts: list[str], completions: list[str], **_) -> list[float]:
        return [_sigmoid(s) for s in scores([p + c for p, c in zip(prompts, completions)])]

    return scored


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))  # no overflow either way


# name -> what it needs from the dataset (columns beside the prompt) and from its spec
REWARDS: dict[str, dict[str, Any]] = {
    "exact_match": {"columns": {"reference"}, "doc": exact_match.__doc__},
    "final_answer": {"columns": {"reference"}, "doc": final_answer.__doc__},
    "regex": {"columns": set(), "needs": "pattern", "doc": regex.__doc__},
    "code_tests": {"columns": {"test", "entry_point"}, "doc": code_tests.__doc__},
    "reward_model": {"columns": set(), "needs": "stage", "doc": reward_model.__doc__},
}


def build(spec, reward_model_dir: str | None = None, allow_unsandboxed: bool = False) -> Callable[..., list[float]]:
    """The callable for one RewardSpec, named after it (TRL logs each reward as rewards/<name>/mean)."""
    if spec.name == "exact_match":
        fn = exact_match
    elif spec.name == "final_answer":
        fn = final_answer
    elif spec.name == "regex":
        fn = regex(spec.pattern)
    elif spec.name == "code_tests":
        fn = code_tests(allow_unsandboxed=allow_unsandboxed)
    else:
        fn = reward_model(reward_model_dir)

    def reward(*args, **kwargs):
        return fn(*args, **kwargs)

    reward.__name__ = spec.name
    return reward
