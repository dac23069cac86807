"""Long batched loops (generation, scoring) say how far they are instead of going silent for minutes."""

import logging


def test_progress_logs_done_total_and_time_left_but_not_the_last_batch(caplog, monkeypatch):
    from neuralchat_recipes.stages import common

    clock = iter([0.0, 5.0, 12.0, 30.0, 31.0])
    monkeypatch.setattr(common.time, "monotonic", lambda: next(clock))
    progress = common.Progress("[eval] base: generating answers", total=40, every_s=10.0)  # starts at t=0
    with caplog.at_level(logging.INFO, logger="neuralchat_recipes"):
        progress.advance(10)  # t=5: too soon
        progress.advance(10)  # t=12: 20/40 in 12 s -> ~12 s left
        progress.advance(10)  # t=30
        progress.advance(10)  # t=31: done, the caller reports the result
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "[eval] base: generating answers: 20/40 (50%), ~12 s left",
        "[eval] base: generating answers: 30/40 (75%), ~10 s left",
    ]
