"""Run one stage of a plan inside a launched process (torchrun, deepspeed, mpirun, gaudi_spawn).

    python -m neuralchat_recipes.worker --recipe <staging>/recipe.json --stage sft

Every rank rebuilds the same plan from the validated recipe and runs the stage; the trainer
handles the process group. Rank 0 writes ``result.json`` next to ``recipe.json`` for the runner.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipe", required=True, type=Path)
    parser.add_argument("--stage", required=True)
    parser.add_argument("--local_rank", type=int, default=None)  # the deepspeed launcher passes it
    args = parser.parse_args(argv)

    from .backends import get_backend
    from .config import build_recipe
    from .plan import build_plan
    from .runner import quiet_libraries, setup_logging
    from .stages import STAGES, StageContext

    rank = int(os.environ.get("RANK", os.environ.get("PMI_RANK", os.environ.get("OMPI_COMM_WORLD_RANK", "0"))))
    setup_logging()
    if rank != 0:
        logging.getLogger("neuralchat_recipes").setLevel(logging.WARNING)  # one copy of the progress lines
    quiet_libraries()
    recipe = build_recipe(json.loads(args.recipe.read_text()))
    spec = build_plan(recipe).stage(args.stage)
    staging = Path(spec.staging_dir)
    ctx = StageContext(recipe, spec, get_backend(recipe.hardware), staging / "checkpoints", staging / "final")
    metrics = STAGES[spec.kind](ctx)
    if rank == 0:
        (staging / "result.json").write_text(json.dumps(metrics, default=str))
    shutdown_process_group()
    return 0


def shutdown_process_group() -> None:
    """Leave the process group together; a rank exiting with gloo's threads alive can abort at exit."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
