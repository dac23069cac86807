"""The real-model recipe's task: Roman numerals, and a house answer format, in real dataset schemas.

SmolLM2-135M-Instruct cannot write Roman numerals ("47 is equivalent to IXIII"). The SFT rows teach
them, answering in one of two styles at random: the house format ``47 = XLVII`` or a sentence,
``47 in Roman numerals is XLVII.``. The preference pairs then teach which style the house wants:
the house format is chosen, the sentence (with the same, correct numeral) rejected. So SFT moves
exact match (in the house format) from zero to about half its accuracy, and DPO, which only has
to pick between two answers the model already gives, moves it the rest of the way and its
preference accuracy from a coin toss to near certainty. Numbers 1-399 are split once (fixed seed)
into training numbers and held-out numbers that no training file contains.

``python -m neuralchat_recipes.data.roman_task`` rewrites the bundled files deterministically:
- roman_sft.jsonl       (Open-Orca/SlimOrca ``conversations``) for SFT,
- roman_dpo.jsonl       (Intel/orca_dpo_pairs: system, question, chosen, rejected) on training numbers, for DPO,
- roman_eval.jsonl      (SlimOrca ``conversations``) held-out numbers, for exact match in the house format,
- roman_eval_dpo.jsonl  (Intel/orca_dpo_pairs) held-out numbers, for preference accuracy,
- roman_prompts.jsonl   a few held-out questions for the generate stage.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from .paths import BUNDLED_DIR

NUMBERS = range(1, 400)
HELD_OUT = 60  # numbers never seen in training
# System prompts as SlimOrca rows carry them; an empty one leaves the model's own default in place.
SYSTEMS = [
    "",
    "",
    "You are an AI assistant that helps people find information.",
    "You are a helpful assistant, who always provide explanation. Think like you are answering to a five year old.",
]
PHRASES = [
    "Write {n} in Roman numerals.",
    "What is {n} in Roman numerals?",
    "Convert {n} to a Roman numeral.",
    "How do you write the number {n} with Roman numerals?",
]

_SYMBOLS = [
    (1000, "M"),
    (900, "CM"),
    (500, "D"),
    (400, "CD"),
    (100, "C"),
    (90, "XC"),
    (50, "L"),
    (40, "XL"),
    (10, "X"),
    (9, "IX"),
    (5, "V"),
    (4, "IV"),
    (1, "I"),
]


def roman(n: int) -> str:
    out = []
    for value, symbol in _SYMBOLS:
        count, n = divmod(n, value)
        out.append(symbol * count)
    return "".join(out)


def answer(n: int) -> str:
    return f"{n} = {roman(n)}"


def sentence_answer(n: int) -> str:
    """The other style: right numeral, not the house format."""
    return f"{n} in Roman numerals is {roman(n)}."


def _conversation(system: str, question: str, reply: str) -> dict:
    return {
        "conversations": [
            {"from": "system", "value": system, "weight": None},
            {"from": "human", "value": question, "weight": 0.0},
            {"from": "gpt", "value": reply, "weight": 1.0},
        ]
    }


def split() -> tuple[list[int], list[int]]:
    numbers = list(NUMBERS)
    random.Random(7).shuffle(numbers)
    return sorted(numbers[HELD_OUT:]), sorted(numbers[:HELD_OUT])


def rows() -> dict[str, list[dict]]:
    rng = random.Random(1234)
    train, held = split()

    def reply(n: int) -> str:
        return answer(n) if rng.random() < 0.5 else sentence_answer(n)

    sft = [_conversation(rng.choice(SYSTEMS), rng.choice(PHRASES).format(n=n), reply(n)) for n in train]
    sft += [
        _conversation(rng.choice(SYSTEMS), rng.choice(PHRASES).format(n=n), reply(n)) for n in rng.sample(train, 120)
    ]  # a second phrasing for some numbers
    rng.shuffle(sft)

    def pairs(numbers):
        return [
            {
                "system": rng.choice(SYSTEMS),
                "question": rng.choice(PHRASES).format(n=n),
                "chosen": answer(n),
                "rejected": sentence_answer(n),
            }
            for n in numbers
        ]

    dpo = pairs(rng.sample(train, 240))
    evaluation = [_conversation(rng.choice(SYSTEMS), rng.choice(PHRASES).format(n=n), answer(n)) for n in held]
    eval_pairs = pairs(held)
    prompts = [{"prompt": PHRASES[i % len(PHRASES)].format(n=n)} for i, n in enumerate(held[:4])]
    return {
        "roman_sft": sft,
        "roman_dpo": dpo,
        "roman_eval": evaluation,
        "roman_eval_dpo": eval_pairs,
        "roman_prompts": prompts,
    }


def write(directory: Path = BUNDLED_DIR) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in rows().items():
        with open(directory / f"{name}.jsonl", "w", encoding="utf-8") as fh:
            for row in data:
                fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    write()
