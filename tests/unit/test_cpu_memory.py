"""The CPU backend's allocator setting: large freed blocks are reused, not unmapped and faulted back in."""

import platform
import resource

import pytest

from tests.conftest import compose_recipe

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="a glibc malloc setting")


def _page_faults_of_big_allocations(n: int = 6) -> int:
    import torch

    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        t = torch.ones(16 * 2**20)  # 64 MB, every page written (a training step's activations are larger)
        del t
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def _resident_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()


def test_freed_memory_is_reused_while_a_stage_runs_and_released_after():
    from neuralchat_recipes.backends import get_backend

    pages = 16 * 2**20 * 4 // resource.getpagesize()
    default = _page_faults_of_big_allocations()
    assert default > 4 * pages  # each 64 MB block mapped afresh: its pages fault in every time

    backend = get_backend(compose_recipe("recipe=tiny", "hardware=cpu").hardware)
    with backend.stage_memory() as applied:
        assert applied is True
        for _ in range(3):  # the heap grows over the first steps (each block of a step needs its own place)
            _page_faults_of_big_allocations()
        retained = _page_faults_of_big_allocations()
        held = _resident_bytes()
    assert retained < pages // 2  # then the blocks are reused: no page is mapped again
    assert _resident_bytes() < held - 32 * 2**20  # afterwards the heap is trimmed: the retained blocks go back

    off = get_backend(compose_recipe("recipe=tiny", "hardware=cpu", "hardware.retain_freed_memory=false").hardware)
    with off.stage_memory() as applied:
        assert applied is None
