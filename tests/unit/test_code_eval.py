"""pass@k counts right and wrong solutions, and stops code that loops, eats memory or uses the network."""

import pytest

from neuralchat_recipes.execution.sandbox import run_untrusted
from neuralchat_recipes.stages.code_eval import pass_at_k, score, truncate

PROBLEMS = [
    {
        "task_id": "t/0",
        "prompt": 'def add(a, b):\n    """Return a + b."""\n',
        "entry_point": "add",
        "canonical_solution": "    return a + b\n",
        "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n",
    },
    {
        "task_id": "t/1",
        "prompt": "def is_even(n):\n",
        "entry_point": "is_even",
        "canonical_solution": "    return n % 2 == 0\n",
        "test": "def check(candidate):\n    assert candidate(4) is True\n    assert candidate(7) is False\n",
    },
    {
        "task_id": "t/2",
        "prompt": "def first(xs):\n",
        "entry_point": "first",
        "canonical_solution": "    return xs[0]\n",
        "test": "def check(candidate):\n    assert candidate([3, 1]) == 3\n",
    },
]


def test_pass_at_1_counts_correct_and_incorrect_solutions():
    fixed_outputs = [["    return a + b\n"], ["    return n % 2 == 1\n"], ["    return xs[0]\n"]]  # 2 right, 1 wrong
    result = score(PROBLEMS, fixed_outputs, ks=[1])
    assert result["pass@1"] == pytest.approx(2 / 3)
    assert [p["passed"] for p in result["per_problem"]] == [1, 0, 1]
    assert "AssertionError" in result["per_problem"][1]["reasons"][0]


def test_pass_at_k_uses_every_sample():
    outputs = [
        ["    return a - b\n", "    return a + b\n"],
        ["    return False\n", "    return None\n"],
        ["    return xs[0]\n", "    return xs[0]\n"],
    ]
    result = score(PROBLEMS, outputs, ks=[1, 2])
    assert result["pass@1"] == pytest.approx((0.5 + 0 + 1) / 3)
    assert result["pass@2"] == pytest.approx((1 + 0 + 1) / 3)
    assert pass_at_k(10, 0, 1) == 0 and pass_at_k(10, 10, 5) == 1 and pass_at_k(5, 2, 1) == pytest.approx(0.4)


@pytest.mark.parametrize(
    "body,reason",
    [
        ("    while True:\n        pass\n", "timed out"),
        ("    x = bytearray(4 * 1024 ** 3)\n    return a + b\n", "MemoryError"),
        ("    import socket\n    socket.create_connection(('127.0.0.1', 9))\n    return a + b\n", "network"),
        ("    import _socket\n    _socket.socket()\n    return a + b\n", "network"),
    ],
)
def test_runaway_solutions_are_stopped_and_fail(body, reason):
    result = score(PROBLEMS[:1], [[body]], ks=[1], timeout_s=3, memory_mb=256)
    assert result["pass@1"] == 0
    assert reason in result["per_problem"][0]["reasons"][0], result["per_problem"][0]["reasons"]


def test_a_passing_program_and_the_stop_sequences():
    assert run_untrusted("print('ok')\n") == (True, "passed")
    assert truncate("    return 1\n\ndef other():\n    pass") == "    return 1\n"
    assert truncate("    return 1\n") == "    return 1\n"
