"""pass@k for code generation: run each completion against its problem's tests, in the sandbox.

A program is the problem's prompt + the completion + its ``test`` code + ``check(entry_point)``
(HumanEval's layout). Each runs in its own bubblewrap sandbox (execution/sandbox.py: no network, no
view of the host's files or processes, limits on time, memory and file size). A program that fails,
raises, times out, runs out of memory or touches the network counts as failed.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any

# Stop sequences of the HumanEval setup (Codex paper / bigcode harness): the function ends where
# the model starts a new top-level statement.
STOP = ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert "]


def truncate(completion: str) -> str:
    """Cut a generated completion at the first stop sequence."""
    cut = min((i for i in (completion.find(s) for s in STOP) if i >= 0), default=len(completion))
    return completion[:cut]


def program_for(problem: dict[str, Any], completion: str) -> str:
    return f"{problem['prompt']}{completion}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimator of pass@k from n samples with c correct (Chen et al., 2021)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def score(
    problems: list[dict[str, Any]],
    completions: list[list[str]],
    ks: list[int],
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    workers: int = 2,
    allow_unsandboxed: bool = False,
) -> dict[str, Any]:
    """pass@k over problems, each with its list of completions; per-problem outcomes included."""
    from ..execution.sandbox import require_sandbox, run_untrusted

    require_sandbox(allow_unsandboxed, "pass@k")  # before the first program: one clear error, not one per program
    jobs = [(i, j, program_for(p, c)) for i, (p, cs) in enumerate(zip(problems, completions)) for j, c in enumerate(cs)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        outcomes = list(pool.map(lambda job: run_untrusted(job[2], timeout_s, memory_mb, allow_unsandboxed), jobs))
    per_problem: list[dict[str, Any]] = [
        {"task_id": p["task_id"], "passed": 0, "samples": len(cs), "reasons": []}
        for p, cs in zip(problems, completions)
    ]
    for (i, _, _), (ok, reason) in zip(jobs, outcomes):
        per_problem[i]["passed"] += int(ok)
        per_problem[i]["reasons"].append(reason)
    result: dict[str, Any] = {"problems": len(problems)}
    for k in ks:
        result[f"pass@{k}"] = sum(pass_at_k(p["samples"], p["passed"], k) for p in per_problem) / len(per_problem)
    result["per_problem"] = per_problem
    return result
