"""The backend interface and the launch commands shared by all devices (pure Python)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

WORKER_MODULE = "neuralchat_recipes.worker"
# A script path for launchers that need a file rather than a module (gaudi_spawn's runner
# hands it to `deepspeed` / `mpirun`). It lives in its own folder so that folder, which
# becomes sys.path[0], shadows no top-level module.
WORKER_SCRIPT = str(Path(__file__).resolve().parent.parent / "_scripts" / "run_stage.py")


BITSANDBYTES_OPTIMS = {"paged_adamw_32bit", "adamw_8bit"}


class Backend:
    """Plan-time answers for one hardware profile; run-time hooks import lazily."""

    device = "cpu"
    has_bitsandbytes = True  # paged / 8-bit optimizers need bitsandbytes, which runs on CUDA

    def __init__(self, hardware):
        self.hw = hardware

    # ---- plan time (pure) -------------------------------------------------------------
    def precision(self) -> str:
        return self.hw.precision

    def resolve_optim(self, optim: str, notes: list[str]) -> str:
        if optim in BITSANDBYTES_OPTIMS and not self.has_bitsandbytes:
            notes.append(f"optim {optim} needs bitsandbytes on CUDA; using adamw_torch on {self.device}")
            return "adamw_torch"
        return optim

    def training_extras(self, stage, zero: bool) -> dict[str, Any]:
        """Training arguments this backend adds (Gaudi flags, ddp backend, use_cpu ...)."""
        extras: dict[str, Any] = {}
        if self.hw.world_size > 1 and self.hw.ddp_backend:
            extras["ddp_backend"] = self.hw.ddp_backend
        return extras

    def env(self, stage, zero_stage: int | None, model) -> dict[str, str]:
        env = dict(model.launch_env.get(self.device, {}))
        env.update(self.hw.env)
        if self.hw.omp_num_threads:
            env["OMP_NUM_THREADS"] = str(self.hw.omp_num_threads)
        return env

    # ---- run time (heavy imports happen inside) -------------------------------------
    def stage_memory(self):
        """A context the stage runs in, for host-memory settings (the CPU backend's allocator)."""
        import contextlib

        return contextlib.nullcontext()

    RUNTIME_ARG_KEYS = ("use_cpu", "ddp_backend")
    sft_with_trl = True  # unpacked SFT through TRL's SFTTrainer (else the plain Trainer + our collator)
    dpo_tokenizer_kwarg = "processing_class"  # how the DPO trainer takes the tokenizer

    def runtime_training_kwargs(self, args: dict[str, Any]) -> dict[str, Any]:
        """The backend's entries of the plan's args that go straight into the training arguments."""
        return {k: args[k] for k in self.RUNTIME_ARG_KEYS if k in args}

    def trainer_classes(self):
        from transformers import Trainer, TrainingArguments

        return Trainer, TrainingArguments

    def sft_classes(self):
        from trl import SFTConfig, SFTTrainer

        return SFTTrainer, SFTConfig

    def dpo_classes(self):
        from trl import DPOConfig, DPOTrainer

        return DPOTrainer, DPOConfig

    def trainer_kwargs(self, args: dict[str, Any]) -> dict[str, Any]:
        return {}

    def torch_device(self) -> str:
        return self.device

    def runtime_problems(self, launchers: set[str]) -> list[str]:
        """What this machine lacks to run the profile (checked before any stage starts)."""
        import shutil

        problems = []
        binaries = {"torchrun": "torchrun", "deepspeed": "deepspeed", "mpirun": "mpirun"}
        for launcher in sorted(launchers):
            exe = binaries.get(launcher)
            if exe and shutil.which(exe) is None:
                hint = {"deepspeed": "pip install 'neuralchat-recipes[deepspeed]'",
                        "mpirun": "install Intel MPI / oneCCL (see ITREX's multi-node guide)",
                        "torchrun": "it comes with torch; activate the environment that has it"}[launcher]
                problems.append(f"hardware {self.hw.name!r} launches stages with `{exe}`, which is not on PATH; {hint}")
        return problems + self.device_problems()

    def device_problems(self) -> list[str]:
        return []

    def launcher_for(self, zero_stage: int | None, distributed: bool) -> str:
        if not distributed:
            return "inprocess"
        if self.hw.launcher == "torchrun" and zero_stage:
            return "deepspeed"
        return self.hw.launcher

    def launch(self, stage_name: str, recipe_json: str, zero_stage: int | None, distributed: bool, env: dict[str, str]):
        hw = self.hw
        launcher = self.launcher_for(zero_stage, distributed)
        worker_args = ["--recipe", recipe_json, "--stage", stage_name]
        world = hw.world_size if distributed else 1
        if launcher == "inprocess":
            command = ["python", "-m", WORKER_MODULE, *worker_args]
        elif launcher == "torchrun":
            command = ["torchrun", "--nnodes", str(hw.num_nodes), "--nproc_per_node", str(hw.devices_per_node),
                       "--master_port", str(hw.master_port)]
            if hw.num_nodes > 1:  # the same command on every node; each sets NODE_RANK (0 on the master)
                command += ["--node_rank", "$NODE_RANK", "--master_addr", hw.master_addr or "$MASTER_ADDR"]
            command += ["-m", WORKER_MODULE, *worker_args]
        elif launcher == "deepspeed":
            command = ["deepspeed", "--num_nodes", str(hw.num_nodes), "--num_gpus", str(hw.devices_per_node),
                       "--master_port", str(hw.master_port)]
            if hw.hostfile:
                command += ["--hostfile", hw.hostfile]
            command += ["--module", WORKER_MODULE, *worker_args]
        elif launcher == "mpirun":
            command = ["mpirun", "-f", hw.hostfile or "hostfile", "-n", str(world), "-ppn", str(hw.devices_per_node)]
            # as ITREX's command: OMP_NUM_THREADS per rank with -genv; CCL_WORKER_COUNT and MASTER_ADDR
            # are exported (the launch env) and MPI passes the environment on to every rank
            if "OMP_NUM_THREADS" in env:
                command += ["-genv", f"OMP_NUM_THREADS={env['OMP_NUM_THREADS']}"]
            command += ["python", "-m", WORKER_MODULE, *worker_args]
        elif launcher == "gaudi_spawn":
            spawn = hw.gaudi.spawn  # gaudi_spawn implies device hpu, which requires the gaudi block
            mode = "--use_deepspeed" if spawn == "deepspeed" or (spawn == "auto" and zero_stage) else "--use_mpi"
            command = ["python", "-m", "neuralchat_recipes.backends.gaudi_spawn", "--world_size", str(world), mode]
            if hw.hostfile:
                command += ["--hostfile", hw.hostfile]
            command += [WORKER_SCRIPT, *worker_args]
        else:  # pragma: no cover - the schema limits launchers
            raise ValueError(launcher)
        return {"launcher": launcher, "world_size": world, "command": command, "env": env}
