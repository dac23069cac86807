"""The CPU backend's allocator setting: large freed blocks are reused, not unmapped and faulted back in."""

import json
import platform
import resource
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="a glibc malloc setting")

# In a fresh process: the test process's heap may already hold freed blocks from in-process stages.
SCRIPT = r"""
import json, resource
import torch
from neuralchat_recipes.backends import get_device
from tests.conftest import compose_recipe

def faults(n=6):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        t = torch.ones(16 * 2**20)  # 64 MB, every page written (a training step's activations are larger)
        del t
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

def resident():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()

out = {"default": faults()}
with get_device(compose_recipe("recipe=tiny", "hardware=cpu").hardware).stage_memory() as applied:
    out["applied"] = applied
    for _ in range(3):  # the heap grows over the first steps (each block of a step needs its own place)
        faults()
    out["retained"] = faults()
    out["held"] = resident()
out["after"] = resident()
off = get_device(compose_recipe("recipe=tiny", "hardware=cpu", "hardware.retain_freed_memory=false").hardware)
with off.stage_memory() as applied:
    out["off_applied"] = applied
print(json.dumps(out))
"""


def test_freed_memory_is_reused_while_a_stage_runs_and_released_after():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, cwd=root, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    pages = 16 * 2**20 * 4 // resource.getpagesize()
    assert r["default"] > 4 * pages  # glibc's default: each 64 MB block mapped afresh, its pages fault in every time
    assert r["applied"] is True
    assert r["retained"] < pages // 2  # retained: the blocks are reused, no page is mapped again
    assert r["after"] < r["held"] - 32 * 2**20  # afterwards the heap is trimmed: the retained blocks go back
    assert r["off_applied"] is None  # hardware.retain_freed_memory=false leaves the C library alone
