"""Thread counts are chosen on purpose: the profile's setting, else a share of the physical cores by model size."""

import os

import pytest

from neuralchat_recipes.backends import threads


def test_configured_count_wins_then_small_models_get_one_then_a_share_of_the_cores(monkeypatch):
    monkeypatch.setattr(threads, "physical_cores", lambda: 8)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.delenv(threads.PARALLEL_JOBS_ENV, raising=False)
    assert threads.choose_threads(3, 7.0) == 3
    assert threads.choose_threads(None, threads.SMALL_MODEL_PARAMS_BILLION / 2) == 1
    assert threads.choose_threads(None, 7.0) == 8 and threads.choose_threads(None, None) == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two ranks of a launched stage on this node
    monkeypatch.setenv(threads.PARALLEL_JOBS_ENV, "2")  # and two sweep jobs side by side
    assert threads.choose_threads(None, 7.0) == 2


def test_physical_cores_count_this_processes_cores_once():
    cores = threads.physical_cores()
    assert 1 <= cores <= len(os.sched_getaffinity(0))


def test_threads_apply_inside_the_stage_and_are_restored(monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    with threads.using_threads(1) as n:
        assert n == 1 and torch.get_num_threads() == 1 and os.environ["OMP_NUM_THREADS"] == "1"
    assert torch.get_num_threads() == before and "OMP_NUM_THREADS" not in os.environ


def test_a_parallel_sweep_job_records_how_many_jobs_share_the_host(monkeypatch):
    from types import SimpleNamespace

    from neuralchat_recipes import sweep

    job = SimpleNamespace(launcher={"n_jobs": 2})
    monkeypatch.setattr(sweep, "_multirun_job", lambda: job)
    monkeypatch.delenv(threads.PARALLEL_JOBS_ENV, raising=False)
    assert sweep.share_cores_with_parallel_jobs() == 2 and os.environ[threads.PARALLEL_JOBS_ENV] == "2"
    monkeypatch.setattr(sweep, "_multirun_job", lambda: None)
    assert sweep.share_cores_with_parallel_jobs() == 1
