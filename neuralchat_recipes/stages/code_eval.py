"""pass@k for code generation: run each completion against its problem's tests, sandboxed.

A program is the problem's prompt + the completion + its ``test`` code + ``check(entry_point)``
(HumanEval's layout). Each runs in its own Python process (isolated mode, empty temporary
directory, minimal environment) with a wall-clock timeout, CPU-time, address-space and
file-size limits, and no network: a new network namespace where ``unshare -n`` is permitted,
and in every case a prelude that disables the socket module. A program that fails, raises,
times out, runs out of memory or touches the network counts as failed. This is the same
contract as OpenAI's human-eval ``execution.py``; it is a guard against accidents, not a
security boundary for hostile code.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any

# Stop sequences of the HumanEval setup (Codex paper / bigcode harness): the function ends where
# the model starts a new top-level statement.
STOP = ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert "]

PRELUDE = """\
import socket as _socket_module, _socket
def _no_network(*args, **kwargs):
    raise OSError("network access is disabled while running generated code")
for _name in ("socket", "create_connection", "create_server", "socketpair", "getaddrinfo", "fromfd"):
    for _mod in (_socket_module, _socket):
        if hasattr(_mod, _name):
            setattr(_mod, _name, _no_network)
del _name, _mod
"""


def truncate(completion: str) -> str:
    """Cut a generated completion at the first stop sequence."""
    cut = min((i for i in (completion.find(s) for s in STOP) if i >= 0), default=len(completion))
    return completion[:cut]


@lru_cache(maxsize=1)
def _unshare_works() -> bool:
    exe = shutil.which("unshare")
    if not exe:
        return False
    try:
        return subprocess.run([exe, "-n", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def run_program(program: str, timeout_s: float = 10.0, memory_mb: int = 1024) -> tuple[bool, str]:
    """(passed, reason) for one program: passed means it exited 0 within the limits."""

    def limits():  # in the child, before exec
        import resource

        os.setsid()
        memory = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        cpu = int(math.ceil(timeout_s)) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
        resource.setrlimit(resource.RLIMIT_FSIZE, (10 * 1024 * 1024, 10 * 1024 * 1024))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    with tempfile.TemporaryDirectory(prefix="ncr-code-") as work:
        path = os.path.join(work, "program.py")
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(PRELUDE + "\n" + program)
        command = [sys.executable, "-I", path]
        if _unshare_works():
            command = ["unshare", "-n", *command]
        env = {"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1", "HOME": work, "TMPDIR": work}
        proc = subprocess.Popen(
            command,
            cwd=work,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            preexec_fn=limits,
        )
        try:
            _, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return False, f"timed out after {timeout_s:g}s"
    if proc.returncode == 0:
        return True, "passed"
    text = err.decode("utf-8", "replace").strip().splitlines()
    last = text[-1] if text else ""
    if proc.returncode < 0:
        return False, f"killed by signal {-proc.returncode}" + (f" ({last})" if last else "")
    return False, last or f"exit {proc.returncode}"


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
) -> dict[str, Any]:
    """pass@k over problems, each with its list of completions; per-problem outcomes included."""
    jobs = [(i, j, program_for(p, c)) for i, (p, cs) in enumerate(zip(problems, completions)) for j, c in enumerate(cs)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        outcomes = list(pool.map(lambda job: run_program(job[2], timeout_s, memory_mb), jobs))
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
