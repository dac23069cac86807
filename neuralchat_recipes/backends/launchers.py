"""How a stage's processes start: in this process, or under torchrun, deepspeed, mpirun or gaudi_spawn.

Each launcher builds the command line and names the program it needs; the runner runs it (pure Python:
``mode=plan`` shows the exact commands). Launched commands run the worker module, which rebuilds the
plan from the stage's recipe.json and runs one stage on every rank.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

WORKER_MODULE = "neuralchat_recipes.worker"
# A script path for launchers that need a file rather than a module (gaudi_spawn's runner hands it to
# `deepspeed` / `mpirun`). It lives in its own folder so that folder, which becomes sys.path[0], shadows
# no top-level module.
WORKER_SCRIPT = str(Path(__file__).resolve().parent.parent / "_scripts" / "run_stage.py")


class Launcher:
    name: ClassVar[str]
    program: ClassVar[str | None] = None  # what must be on PATH
    install_hint: ClassVar[str] = ""

    def __init__(self, hardware):
        self.hw = hardware

    def command(self, worker_args: list[str], world: int, deepspeed: bool, env: dict[str, str]) -> list[str]:
        """The command line; ``deepspeed``: the stage runs DeepSpeed (ZeRO training, or inference)."""
        raise NotImplementedError


class InProcess(Launcher):
    """One device: the runner calls the stage in its own process (the command is for running it by hand)."""

    name = "inprocess"

    def command(self, worker_args, world, deepspeed, env):
        return ["python", "-m", WORKER_MODULE, *worker_args]


class Torchrun(Launcher):
    name = "torchrun"
    program = "torchrun"
    install_hint = "it comes with torch; activate the environment that has it"

    def command(self, worker_args, world, deepspeed, env):
        hw = self.hw
        command = [
            "torchrun",
            "--nnodes",
            str(hw.num_nodes),
            "--nproc_per_node",
            str(hw.devices_per_node),
            "--master_port",
            str(hw.master_port),
        ]
        if hw.num_nodes > 1:  # the same command on every node; each sets NODE_RANK (0 on the master)
            command += ["--node_rank", "$NODE_RANK", "--master_addr", hw.master_addr or "$MASTER_ADDR"]
        return command + ["-m", WORKER_MODULE, *worker_args]


class DeepSpeedLauncher(Launcher):
    name = "deepspeed"
    program = "deepspeed"
    install_hint = "pip install 'neuralchat-recipes[deepspeed]'"

    def command(self, worker_args, world, deepspeed, env):
        hw = self.hw
        if hw.include:  # the devices by name, as `deepspeed --include localhost:0,1,...` (neural-chat-v3-1's SFT)
            command = ["deepspeed", "--include", hw.include, "--master_port", str(hw.master_port)]
        else:
            command = ["deepspeed", "--num_nodes", str(hw.num_nodes), "--num_gpus", str(hw.devices_per_node)]
            command += ["--master_port", str(hw.master_port)]
        if hw.hostfile:
            command += ["--hostfile", hw.hostfile]
        return command + ["--module", WORKER_MODULE, *worker_args]


class Mpirun(Launcher):
    name = "mpirun"
    program = "mpirun"
    install_hint = "install Intel MPI / oneCCL (see ITREX's multi-node guide)"

    def command(self, worker_args, world, deepspeed, env):
        hw = self.hw
        command = ["mpirun", "-f", hw.hostfile or "hostfile", "-n", str(world), "-ppn", str(hw.devices_per_node)]
        # as ITREX's command: OMP_NUM_THREADS per rank with -genv; CCL_WORKER_COUNT and MASTER_ADDR are
        # exported (the launch env) and MPI passes the environment on to every rank
        if "OMP_NUM_THREADS" in env:
            command += ["-genv", f"OMP_NUM_THREADS={env['OMP_NUM_THREADS']}"]
        return command + ["python", "-m", WORKER_MODULE, *worker_args]


class GaudiSpawn(Launcher):
    name = "gaudi_spawn"

    def command(self, worker_args, world, deepspeed, env):
        spawn = self.hw.gaudi.spawn  # gaudi_spawn implies device hpu, which requires the gaudi block
        mode = "--use_deepspeed" if spawn == "deepspeed" or (spawn == "auto" and deepspeed) else "--use_mpi"
        command = ["python", "-m", "neuralchat_recipes.backends.gaudi_spawn", "--world_size", str(world), mode]
        if self.hw.hostfile:
            command += ["--hostfile", self.hw.hostfile]
        return command + [WORKER_SCRIPT, *worker_args]


LAUNCHERS: dict[str, type[Launcher]] = {
    cls.name: cls for cls in (InProcess, Torchrun, DeepSpeedLauncher, Mpirun, GaudiSpawn)
}


def launcher_for(hardware, deepspeed: bool, distributed: bool) -> Launcher:
    """The launcher a stage runs under: in-process on one device; DeepSpeed's own launcher (instead of torchrun)
    for a stage that runs DeepSpeed."""
    if not distributed:
        return InProcess(hardware)
    name = "deepspeed" if hardware.launcher == "torchrun" and deepspeed else hardware.launcher
    return LAUNCHERS[name](hardware)


def launch_spec(
    hardware, stage_name: str, recipe_json: str, deepspeed: bool, distributed: bool, env: dict[str, str]
) -> dict:
    """The plan's `launch` block: launcher, world size, command and environment."""
    launcher = launcher_for(hardware, deepspeed, distributed)
    world = hardware.world_size if distributed else 1
    command = launcher.command(["--recipe", recipe_json, "--stage", stage_name], world, deepspeed, env)
    return {"launcher": launcher.name, "world_size": world, "command": command, "env": env}


def missing_programs(hardware, launchers: set[str]) -> list[str]:
    """A sentence per launcher whose program is not on PATH."""
    import shutil

    problems = []
    for name in sorted(launchers):
        cls = LAUNCHERS[name]
        if cls.program and shutil.which(cls.program) is None:
            problems.append(
                f"hardware {hardware.name!r} launches stages with `{cls.program}`, which is not on PATH; "
                f"{cls.install_hint}"
            )
    return problems
