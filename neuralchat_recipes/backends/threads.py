"""How many threads a stage's torch uses on a CPU host, chosen on purpose rather than left to every library.

torch, OpenMP and MKL each start one thread per logical CPU by default. A stage that shares the host (with
another sweep job, another rank, or someone else's work) then runs more threads than there are cores, and
a 2-core machine busy elsewhere trained the demo 5x slower than with one thread. The count is
``hardware.omp_num_threads`` when set; otherwise this host's physical cores (those this process may run on),
divided among the processes that share them: the ranks of a launched stage on this node, the jobs of a
parallel sweep. Models below ``SMALL_MODEL_PARAMS_BILLION`` get one thread: their matmuls are too small
for a second thread to pay for its synchronisation.

bench/threads.py on this project's 2-core machine, SFT tokens/s at 1 / 2 / 4 threads: the 150k-parameter demo
model 30,010 / 32,262 / 10,174 on a quiet host and 20,292 / 3,913 / 7,610 beside two busy processes (two
threads: 7% faster quiet, 5x slower shared; a second run: 2.2x slower quiet, 2.9x slower shared); the 20.3M
bench model 920 / 1,688 / 1,444 quiet and 626 / 681 / 851 shared (second run within 5% quiet). The
small-model line lies between the two; 5M is a guess inside that gap, not a measured point.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

# set by a parallel sweep's jobs (cli): how many jobs share this host at once
PARALLEL_JOBS_ENV = "NEURALCHAT_PARALLEL_JOBS"
SMALL_MODEL_PARAMS_BILLION = 0.005
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def physical_cores() -> int:
    """Cores this process may run on, counting each physical core once (hyper-threads share one)."""
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    cores: set[tuple[str, str]] = set()
    processor = physical = None
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "processor":
                    processor = int(value)
                elif key == "physical id":
                    physical = value
                elif key == "core id" and processor in allowed:
                    cores.add((physical or "0", value))
    except (OSError, ValueError):
        pass
    return max(1, min(len(cores) or len(allowed), len(allowed)))


def sharers() -> int:
    """Processes sharing this host's cores: a launched stage's ranks on this node times a sweep's parallel jobs."""
    ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    jobs = int(os.environ.get(PARALLEL_JOBS_ENV, "1") or 1)
    return max(1, ranks) * max(1, jobs)


def choose_threads(configured: int | None, params_billion: float | None) -> int:
    """``configured`` when set, else one for small models and this process's share of the physical cores."""
    if configured:
        return configured
    if params_billion is not None and params_billion < SMALL_MODEL_PARAMS_BILLION:
        return 1
    return max(1, physical_cores() // sharers())


@contextlib.contextmanager
def using_threads(count: int) -> Iterator[int]:
    """torch's intra-op threads (and OpenMP / MKL's, for worker processes started meanwhile) at ``count``
    while the stage runs; the previous settings after."""
    import torch

    before = torch.get_num_threads()
    env_before = {k: os.environ.get(k) for k in THREAD_ENV}
    torch.set_num_threads(count)
    os.environ.update({k: str(count) for k in THREAD_ENV})
    try:
        yield count
    finally:
        torch.set_num_threads(before)
        for key, value in env_before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
