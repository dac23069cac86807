"""Every seed command, value for value: each row of tests/fidelity_table.py planned through its recipe file and every
value its command sets compared with the plan (launcher arguments, environment, script flags)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from tests.conftest import plan_for
from tests.fidelity_table import EXCEPTIONS, NOT_PLAN_VALUES, ROWS, Row

SEEDS = Path(__file__).resolve().parents[3] / "shared" / "seeds"
COMMAND_START = re.compile(r"^\s*(python3? (?!-m pip)|deepspeed |mpirun |DEEPSPEED|PT_HPU)")


def seed_commands() -> list[tuple[str, str]]:
    """(seed number, command) of every training / merge / generation command in the seed documents: lines that
    start one (python, deepspeed, mpirun, an environment assignment; not `pip install`), continuations joined."""
    out = []
    for path in sorted(SEEDS.glob("*.txt")):
        lines = path.read_text().splitlines()
        i = 0
        while i < len(lines):
            if COMMAND_START.match(lines[i]):
                command = [lines[i]]
                # a trailing backslash continues the command, unless the next line closes its code block
                while command[-1].rstrip().endswith("\\") and i + 1 < len(lines) and lines[i + 1].strip() != "```":
                    i += 1
                    command.append(lines[i])
                text = " ".join(line.strip().rstrip("\\").strip() for line in command)
                out.append((path.name[:3], re.sub(r"\s+", " ", text).strip()))
            i += 1
    return out


def parse(command: str):
    """(environment, launcher argv, script, {flag: value}) of a command line."""
    tokens = shlex.split(command)
    env = {}
    while "=" in tokens[0] and not tokens[0].startswith("-"):
        key, value = tokens.pop(0).split("=", 1)
        env[key] = value
    script_at = next(i for i, t in enumerate(tokens) if t.endswith(".py") and "gaudi_spawn" not in t)
    launcher, rest = tokens[:script_at], tokens[script_at + 1 :]
    flags: dict[str, object] = {}
    key = None
    for token in rest:
        if token.startswith("--"):
            key, _, value = token[2:].partition("=")
            flags[key] = value if value else True
        else:
            previous = flags[key]
            flags[key] = (
                token if previous is True else [*([previous] if isinstance(previous, str) else previous), token]
            )
    return env, launcher, tokens[script_at], flags


def _bool(value) -> bool:
    return value is True or str(value).lower() == "true"


def _list(value) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


# ---- how each flag is compared -------------------------------------------------------------------------------
def _input_stage(spec, row: Row, value) -> None:
    """An earlier output named by path: the stage it names in this pipeline must be the one the stage reads."""
    assert value in row.names, f"the row does not say which stage {value!r} is"
    assert spec.inputs[0].stage == row.names[value], (spec.inputs[0].stage, row.names[value])


def _model(spec, row: Row, value) -> None:
    if value in row.names:
        _input_stage(spec, row, value)
    elif value.startswith("./"):  # a local copy, as the seed loads it
        assert spec.model["path"] == value, spec.model["path"]
    else:
        assert spec.model["path"] == value and spec.inputs[0].stage is None, spec.model["path"]


def _merge_base(spec, row: Row, value) -> None:
    onto = spec.args.view()["onto"]
    base = spec.inputs[1] if onto == "model" else spec.inputs[0].adapter_base
    assert base.stage is None and base.model == value, (onto, base)


def _train_file(spec, row: Row, value) -> None:
    path = spec.datasets["dataset"]["path"]
    if value.startswith("/path/to/"):  # the seed's placeholder directory: the file is named the same
        assert Path(path).name == Path(value).name, path
    else:
        assert Path(path) == Path(value), path


def _deepspeed(spec, row: Row, value) -> None:
    config = spec.args.view()["deepspeed"]
    assert config and config["zero_optimization"]["stage"] == row.zero_stage, config
    if row.zero_stage == 2:  # ITREX's neural-chat ds_config.json
        zero = config["zero_optimization"]
        assert zero["allgather_partitions"] and zero["contiguous_gradients"] and zero["allgather_bucket_size"] == 5e8
        assert config["optimizer"]["type"] == "AdamW" and config["optimizer"]["params"]["eps"] == 1e-6
        assert config["scheduler"]["type"] == "WarmupDecayLR"


def _number(key: str, kind=int):
    return lambda spec, row, value: _equal(spec.args.view()[key], kind(value), key)


def _equal(ours, theirs, what: str) -> None:
    assert ours == theirs, f"{what}: plan {ours!r}, seed {theirs!r}"


FLAG_CHECKS = {
    # model and data
    "model_name_or_path": _model,
    "tokenizer_name": lambda s, r, v: _equal(s.model["tokenizer"] or s.model["path"], v, "tokenizer"),
    "tokenizer_name_or_path": lambda s, r, v: _equal(s.model["tokenizer"] or s.model["path"], v, "tokenizer"),
    "use_fast_tokenizer": lambda s, r, v: _equal(s.model["use_fast_tokenizer"], _bool(v), "use_fast_tokenizer"),
    "trust_remote_code": lambda s, r, v: _equal(s.model["trust_remote_code"], _bool(v), "trust_remote_code"),
    "torch_dtype": lambda s, r, v: _equal(s.args.view()["precision"], {"bfloat16": "bf16"}[v], "torch_dtype"),
    "dataset_name": lambda s, r, v: _equal(s.datasets["dataset"]["hub_id"], v, "dataset_name"),
    "subset": lambda s, r, v: _equal(s.datasets["dataset"]["data_dir"], v, "subset"),
    "streaming": lambda s, r, v: _equal(s.datasets["dataset"]["streaming"], _bool(v), "streaming"),
    "train_file": _train_file,
    "validation_split_percentage": lambda s, r, v: _equal(
        s.datasets["dataset"]["validation_split_percentage"], float(v), "validation_split_percentage"
    ),
    "task": lambda s, r, v: _equal(s.args.view()["task"], v, "task"),
    "max_seq_length": _number("max_seq_length"),
    "max_source_length": _number("max_prompt_length"),
    "max_length": _number("max_length"),
    "max_prompt_length": _number("max_prompt_length"),
    "dataset_concatenation": lambda s, r, v: _equal(s.args.view()["packing"], True, "packing"),
    "group_by_length": lambda s, r, v: _equal(s.args.view()["group_by_length"], _bool(v), "group_by_length"),
    "pad_max": lambda s, r, v: _equal(s.args.view()["pad_to_max"], _bool(v), "pad_to_max"),
    "remove_unused_columns": lambda s, r, v: _equal(s.args.view()["remove_unused_columns"], _bool(v), "columns"),
    # the batch and the schedule
    "per_device_train_batch_size": _number("per_device_train_batch_size"),
    "per_device_eval_batch_size": _number("per_device_eval_batch_size"),
    "gradient_accumulation_steps": _number("gradient_accumulation_steps"),
    "learning_rate": _number("learning_rate", float),
    "weight_decay": _number("weight_decay", float),
    "warmup_ratio": _number("warmup_ratio", float),
    "warmup_steps": _number("warmup_steps"),
    "adam_epsilon": _number("adam_epsilon", float),
    "lr_scheduler_type": lambda s, r, v: _equal(s.args.view()["lr_scheduler_type"], v, "lr_scheduler_type"),
    "optim": lambda s, r, v: _equal(s.args.view()["optim"], v, "optim"),
    "num_train_epochs": _number("num_train_epochs", float),
    "max_steps": _number("max_steps"),
    "gradient_checkpointing": lambda s, r, v: _equal(s.args.view()["gradient_checkpointing"], _bool(v), "checkpoint"),
    "deepspeed": _deepspeed,
    # cadence and reporting
    "save_steps": _number("save_steps"),
    "save_total_limit": _number("save_total_limit"),
    "save_strategy": lambda s, r, v: _equal(s.args.view()["save_strategy"], v, "save_strategy"),
    "logging_steps": _number("logging_steps"),
    "evaluation_strategy": lambda s, r, v: _equal(s.args.view()["eval_strategy"], v, "eval_strategy"),
    "run_name": lambda s, r, v: _equal(s.args.view()["run_name"], v, "run_name"),
    "report_to": lambda s, r, v: _equal(s.args.view()["report_to"], [] if v == "none" else [v], "report_to"),
    # precision and device
    "bf16": lambda s, r, v: _equal(s.args.view()["precision"], "bf16" if _bool(v) else "fp32", "precision"),
    "no_cuda": lambda s, r, v: _equal(s.hardware["device"], "cpu", "device"),
    "use_cpu": lambda s, r, v: _equal(s.hardware["device"], "cpu", "device"),
    "device": lambda s, r, v: _equal(s.hardware["device"], v, "device"),
    "ddp_backend": lambda s, r, v: _equal(s.args.view()["ddp_backend"], v, "ddp_backend"),
    "use_habana": lambda s, r, v: _equal(s.args.view().get("use_habana"), _bool(v), "use_habana"),
    "use_lazy_mode": lambda s, r, v: _equal(s.args.view().get("use_lazy_mode"), _bool(v), "use_lazy_mode"),
    "use_hpu_graphs_for_training": lambda s, r, v: _equal(
        s.args.view().get("use_hpu_graphs_for_training"), _bool(v), "use_hpu_graphs_for_training"
    ),
    # the adapter
    "peft": lambda s, r, v: _equal(s.peft["method"], {"lora": "lora", "ptun": "p_tuning"}[v], "peft"),
    "lora_rank": lambda s, r, v: _equal(s.peft["r"], int(v), "lora_rank"),
    "lora_alpha": lambda s, r, v: _equal(s.peft["alpha"], float(v), "lora_alpha"),
    "lora_dropout": lambda s, r, v: _equal(s.peft["dropout"], float(v), "lora_dropout"),
    "lora_target_modules": lambda s, r, v: _equal(s.peft["target_modules"], _list(v), "lora_target_modules"),
    "lora_all_linear": lambda s, r, v: _equal(s.peft["all_linear"], _bool(v), "lora_all_linear"),
    # merging
    "base-model-path": _merge_base,
    "base_model_name": _merge_base,
    "lora-model-path": _input_stage,
    "adapter_model_name": _input_stage,
    # generation
    "use_hpu_graphs": lambda s, r, v: _equal(s.args.view()["use_hpu_graphs"], True, "use_hpu_graphs"),
    "use_kv_cache": lambda s, r, v: _equal(s.args.view()["use_kv_cache"], True, "use_kv_cache"),
    "batch_size": _number("batch_size"),
    "max_new_tokens": _number("max_new_tokens"),
    "prompt": lambda s, r, v: _equal(s.args.view()["prompts"], [v], "prompts"),
}


def check_launcher(spec, launcher: list[str]) -> int:
    """The seed's launcher arguments against the plan's launch command; the number of values compared."""
    ours = spec.launch["command"]
    if not launcher or launcher[0] in ("python", "python3") and len(launcher) == 1:
        assert spec.launch["launcher"] == "inprocess" and spec.launch["world_size"] == 1, spec.launch
        return 1
    if launcher[0] == "deepspeed":
        assert ours[: ours.index("--module")] == launcher, ours
        return len(launcher) - 1
    if launcher[0] == "mpirun":  # (the interpreter: ours is the runner's own `python`, the seed's `python3`)
        assert launcher[-1].startswith("python") and ours[: ours.index("python")] == launcher[:-1], ours
        return len(launcher) - 2
    if any(t.endswith("gaudi_spawn.py") for t in launcher):  # python [path/]gaudi_spawn.py --world_size N --use_*
        at = next(i for i, t in enumerate(launcher) if t.endswith("gaudi_spawn.py"))
        spawn = ours.index("neuralchat_recipes.backends.gaudi_spawn")
        script = next(i for i, t in enumerate(ours) if t.endswith("run_stage.py"))
        assert sorted(ours[spawn + 1 : script]) == sorted(launcher[at + 1 :]), ours  # (argparse: order is free)
        return len(launcher[at + 1 :])
    if launcher[1:3] == ["-m", "torch.distributed.launch"]:
        # torchrun is torch.distributed.launch renamed, with the same options; the seed's values are placeholders
        assert ours[0] == "torchrun", ours
        names = {a.split("=")[0].lstrip("-") for a in launcher[3:]}
        assert names <= {a.lstrip("-") for a in ours if a.startswith("--")}, (names, ours)
        return len(names)
    raise AssertionError(f"a launcher this test does not know: {launcher}")


@pytest.fixture
def seed_files(tmp_path, monkeypatch):
    """The local files the seed commands name, in a working directory of their own."""
    monkeypatch.chdir(tmp_path)
    for name in ("alpaca_data.json", "stanford_alpaca/alpaca_data.json"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("[]")
    model = tmp_path / "mosaicml" / "mpt-7b"
    model.mkdir(parents=True)
    (model / "config.json").write_text(json.dumps({"model_type": "mpt"}))
    return tmp_path


def compare(row: Row) -> tuple[int, list[str]]:
    """(values compared, deliberate differences) of a row; raises AssertionError at the first mismatch."""
    env, launcher, script, flags = parse(row.command)
    spec = plan_for(f"recipe={row.recipe}", "hardware.master_addr=10.0.0.1").stage(row.stage)
    compared, excepted = 0, []
    for key, value in env.items():
        _equal(spec.launch["env"].get(key), value, f"environment {key}")
        compared += 1
    compared += check_launcher(spec, launcher)
    values = {**(row.script_values or {}), **flags}
    for flag, value in values.items():
        if (row.id, flag) in EXCEPTIONS:
            excepted.append(flag)
            continue
        if flag in NOT_PLAN_VALUES:
            continue
        assert flag in FLAG_CHECKS, f"seed flag --{flag} is neither compared nor listed with a reason"
        try:
            FLAG_CHECKS[flag](spec, row, value)
        except AssertionError as exc:
            raise AssertionError(f"{row.id}: --{flag}={value!r}: {exc}") from None
        compared += 1
    return compared, excepted


def test_the_table_has_every_seed_command_verbatim():
    commands = seed_commands()
    assert len(commands) == 37, len(commands)
    assert [(r.seed, r.command) for r in ROWS] == commands
    assert len({r.id for r in ROWS}) == len(ROWS)


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_the_recipe_plans_the_seed_command_value_for_value(seed_files, row):
    compared, excepted = compare(row)
    assert compared > 0
    assert sorted(excepted) == sorted(f for (i, f) in EXCEPTIONS if i == row.id)


def test_every_seed_recipe_file_reproduces_some_seed_command():
    from neuralchat_recipes.compose import group_options

    seed_files = {r for r in group_options("recipe") if r.startswith(("itrex/", "optimum_habana/"))}
    assert seed_files == {r.recipe for r in ROWS}, seed_files ^ {r.recipe for r in ROWS}


def test_every_exception_names_a_flag_its_command_sets():
    by_id = {r.id: r for r in ROWS}
    for (row_id, flag), reason in EXCEPTIONS.items():
        assert flag in parse(by_id[row_id].command)[3] and len(reason) > 40, (row_id, flag)


def test_a_wrong_value_is_caught(seed_files):
    row = next(r for r in ROWS if r.id == "004-dl1-llama2-chat")
    wrong = Row(**{**row.__dict__, "command": row.command.replace("--learning_rate 1e-4", "--learning_rate 3e-4")})
    with pytest.raises(AssertionError, match="learning_rate"):
        compare(wrong)
    unknown = Row(**{**row.__dict__, "command": row.command + " --made_up_flag 1"})
    with pytest.raises(AssertionError, match="neither compared nor listed"):
        compare(unknown)
