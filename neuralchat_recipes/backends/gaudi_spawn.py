"""Start one stage on several Gaudi cards, like optimum-habana's examples/gaudi_spawn.py.

    python -m neuralchat_recipes.backends.gaudi_spawn --world_size 8 --use_deepspeed SCRIPT ARGS...

It hands the command to optimum-habana's DistributedRunner (imported here, never at plan time).
"""

from __future__ import annotations

import argparse
import shlex
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--world_size", type=int, default=1)
    parser.add_argument("--hostfile", default=None)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--use_deepspeed", action="store_true")
    group.add_argument("--use_mpi", action="store_true")
    parser.add_argument("script")
    parser.add_argument("script_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    try:
        from optimum.habana.distributed import DistributedRunner
    except ImportError as exc:  # pragma: no cover - needs Habana's stack
        print(f"gaudi_spawn needs optimum-habana and Habana's SynapseAI stack: {exc}", file=sys.stderr)
        return 2
    command = shlex.join([args.script, *args.script_args])
    runner = DistributedRunner(
        command_list=[command],
        world_size=args.world_size,
        hostfile=args.hostfile,
        use_mpi=args.use_mpi,
        use_deepspeed=args.use_deepspeed,
    )
    return runner.run()


if __name__ == "__main__":
    sys.exit(main())
