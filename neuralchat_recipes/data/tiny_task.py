"""The demo task: single-digit addition, written in the schemas of real datasets.

``python -m neuralchat_recipes.data.tiny_task`` rewrites the bundled files deterministically:
- tiny_arith_sft.jsonl  (dolly-15k-oai-style ``messages``) for SFT,
- tiny_arith_dpo.jsonl  (Intel/orca_dpo_pairs: system, question, chosen, rejected) for DPO,
- tiny_arith_eval.jsonl (``messages``) for the builtin evaluation,
- tiny_arith_pairs.jsonl (Intel/orca_dpo_pairs) every sum in every phrasing with two wrong answers: 600 pairs for a
  reward model, whose held-out pairs ask sums it has seen in another wording or with another wrong answer.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from .paths import BUNDLED_DIR

SYSTEM = "You are a helpful, respectful and honest assistant."
PHRASES = ["What is {a} plus {b} ?", "Add {a} and {b} .", "Compute {a} + {b} ."]


def answer(a: int, b: int) -> str:
    return f"{a} plus {b} is {a + b} ."


def rows() -> tuple[list[dict], list[dict], list[dict]]:
    rng = random.Random(1234)
    sft, dpo, evaluation = [], [], []
    pairs = [(a, b) for a in range(10) for b in range(10)]
    for a, b in pairs:
        for phrase in PHRASES:
            question = phrase.format(a=a, b=b)
            sft.append(
                {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer(a, b)}]}
            )
        question = PHRASES[rng.randrange(len(PHRASES))].format(a=a, b=b)
        wrong = a + b + rng.choice([-2, -1, 1, 2])
        wrong = wrong if wrong >= 0 else a + b + 1
        dpo.append(
            {"system": SYSTEM, "question": question, "chosen": answer(a, b), "rejected": f"{a} plus {b} is {wrong} ."}
        )
        evaluation.append(
            {
                "messages": [
                    {"role": "user", "content": PHRASES[0].format(a=a, b=b)},
                    {"role": "assistant", "content": answer(a, b)},
                ]
            }
        )
    rng.shuffle(sft)
    rng.shuffle(dpo)
    return sft, dpo, evaluation


def reward_pairs() -> list[dict]:
    """Preference pairs for a reward model (an RNG of their own: the other files stay as they were)."""
    rng = random.Random(99)
    out = []
    for a in range(10):
        for b in range(10):
            for phrase in PHRASES:
                wrongs = rng.sample([w for w in range(a + b - 3, a + b + 4) if w >= 0 and w != a + b], 2)
                for wrong in wrongs:
                    out.append(
                        {
                            "system": SYSTEM,
                            "question": phrase.format(a=a, b=b),
                            "chosen": answer(a, b),
                            "rejected": f"{a} plus {b} is {wrong} .",
                        }
                    )
    rng.shuffle(out)
    return out


def write(directory: Path = BUNDLED_DIR) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "tiny_arith_pairs.jsonl", "w", encoding="utf-8") as fh:
        for row in reward_pairs():
            fh.write(json.dumps(row) + "\n")
    for name, data in zip(("tiny_arith_sft", "tiny_arith_dpo", "tiny_arith_eval"), rows()):
        with open(directory / f"{name}.jsonl", "w", encoding="utf-8") as fh:
            for row in data:
                fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    write()
