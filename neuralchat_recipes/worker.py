"""Run one stage of a plan inside a launched process (torchrun, deepspeed, mpirun, gaudi_spawn).

    python -m neuralchat_recipes.worker --recipe <staging>/recipe.json --stage sft

Every rank rebuilds the same plan from the validated recipe and runs the stage; the trainer
handles the process group. Rank 0 writes ``result.json`` next to ``recipe.json`` for the runner.

Each rank's output (Python and C level) goes through a small relay process that prefixes every
line with ``[rankN]``. A rank that fails writes ``failures/rank<N>.txt`` next to ``recipe.json``
(the runner watches that directory and stops the other ranks) and exits at once, without waiting
for a process group whose other members may be blocked in a collective. A rank whose launcher dies
is killed by the kernel (PR_SET_PDEATHSIG), so no rank outlives its stage.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import select
import signal
import sys
import time
import traceback
from pathlib import Path

from .execution.secrets import scrub_text, write_json

RANK_VARS = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK")


def process_rank() -> int:
    return int(next((os.environ[k] for k in RANK_VARS if k in os.environ), "0"))


def die_with_parent() -> None:
    """Ask Linux to kill this rank when its launcher dies (no orphaned ranks holding a port or a lock)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux
        pass


def _relay(pipes: dict[int, int], prefix: bytes) -> None:
    """Copy each pipe to its original fd, line by line, with the rank prefix; return at EOF of all."""
    pending = {r: b"" for r in pipes}
    while pending:
        ready, _, _ = select.select(list(pending), [], [])
        for r in ready:
            chunk = os.read(r, 65536)
            if not chunk:
                if pending[r]:
                    os.write(pipes[r], prefix + pending[r] + b"\n")
                del pending[r]
                continue
            *lines, rest = (pending[r] + chunk).split(b"\n")
            if lines:
                os.write(pipes[r], b"".join(prefix + line + b"\n" for line in lines))
            pending[r] = rest


def prefix_output(rank: int) -> int:
    """Route fds 1 and 2 through a forked relay that prefixes lines with ``[rankN]``; returns its pid.

    A forked process rather than a thread, so output written just before a crash is still delivered.
    """
    pipes = {fd: os.pipe() for fd in (1, 2)}
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the relay: reads until every writer (this rank and its children) has closed
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for _, w in pipes.values():
            os.close(w)
        try:
            _relay({r: fd for fd, (r, _) in pipes.items()}, f"[rank{rank}] ".encode())
        finally:
            os._exit(0)
    for fd, (r, w) in pipes.items():
        os.dup2(w, fd)
        os.close(w)
        os.close(r)
    sys.stdout.reconfigure(line_buffering=True)
    sys.stderr.reconfigure(line_buffering=True)
    return pid


def finish_output(relay_pid: int | None) -> None:
    """Close this rank's ends of the relay and let it deliver the last lines."""
    if relay_pid is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    deadline = time.monotonic() + 5  # children of this rank (if any) may still hold the pipe
    while time.monotonic() < deadline:
        if os.waitpid(relay_pid, os.WNOHANG)[0]:
            return
        time.sleep(0.02)


SETTING_ERROR_FILE = "setting_error.txt"


def record_failure(failures: Path, rank: int, exc: BaseException) -> None:
    """The rank's error in one short file the runner reads: the exception and where it was raised."""
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" (at {tb[-1].filename}:{tb[-1].lineno})" if tb else ""
    try:
        failures.mkdir(parents=True, exist_ok=True)
        tmp = failures / f".rank{rank}.tmp"
        tmp.write_text(scrub_text(f"rank {rank}: {type(exc).__name__}: {exc}{where}\n"))
        tmp.rename(failures / f"rank{rank}.txt")
        from .stages.common import SettingError

        if isinstance(exc, SettingError):  # the runner repeats its sentence alone, and exits 2
            (failures / SETTING_ERROR_FILE).write_text(scrub_text(str(exc)))
    except OSError:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipe", required=True, type=Path)
    parser.add_argument("--stage", required=True)
    parser.add_argument("--local_rank", type=int, default=None)  # the deepspeed launcher passes it
    parser.add_argument("--no-prefix", action="store_true", help="Leave output lines without the rank prefix.")
    args = parser.parse_args(argv)

    rank = process_rank()
    die_with_parent()
    relay = None if args.no_prefix else prefix_output(rank)
    try:
        run(args.recipe, args.stage, rank)
    except BaseException as exc:  # noqa: BLE001 - every failure must reach the runner, then exit at once
        if isinstance(exc, SystemExit) and exc.code in (0, None):
            finish_output(relay)
            return 0
        record_failure(args.recipe.parent / "failures", rank, exc)
        traceback.print_exc()
        finish_output(relay)
        os._exit(1)  # no atexit / process-group teardown: other ranks may be blocked in a collective
    finish_output(relay)
    return 0


def run(recipe_path: Path, stage_name: str, rank: int) -> None:
    from .backends import get_device
    from .execution.loop import quiet_libraries, setup_logging
    from .plan import build_plan
    from .recipe import build_recipe
    from .stages import StageContext, run_stage_kind

    setup_logging()
    if rank != 0:
        logging.getLogger("neuralchat_recipes").setLevel(logging.WARNING)  # one copy of the progress lines
    quiet_libraries()
    recipe = build_recipe(json.loads(recipe_path.read_text()))
    spec = build_plan(recipe).stage(stage_name)
    staging = Path(spec.staging_dir)
    device = get_device(recipe.hardware_for(stage_name))
    ctx = StageContext(recipe, spec, device, staging / "checkpoints", staging / "final")
    metrics = run_stage_kind(ctx)
    if rank == 0:
        write_json(staging / "result.json", metrics)
    shutdown_process_group()


def shutdown_process_group() -> None:
    """Leave the process group together; a rank exiting with gloo's threads alive can abort at exit."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
