"""The Gaudi backend against the real optimum-habana, read from its wheel without importing it.

optimum-habana cannot be imported without Habana's SynapseAI stack, so this test downloads the
pinned wheel (and the transformers version it requires, for the inherited TrainingArguments)
from PyPI, parses the source with ``ast`` and checks that every class the Gaudi backend imports,
every training argument and GaudiConfig key its plans emit, and every keyword our stages pass to
the Gaudi trainers exists in that version. Nothing the plan asks for may be dropped silently.
"""

import ast
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import plan_for

pytestmark = pytest.mark.slow

OPTIMUM_HABANA = "optimum-habana==1.21.*"

# Keys our plans produce that optimum-habana 1.21 has no field for, and what that means.
KNOWN_GAPS = {
    "dpo": {
        "pad_to_multiple_of": "GaudiDPOConfig has no static padding key; DPO batches on Gaudi are padded "
        "per batch (noted in the closing notes as not reproduced)"
    },
}


@pytest.fixture(scope="module")
def wheels(tmp_path_factory):
    root = tmp_path_factory.mktemp("wheels")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "-q",
            "-d",
            str(root),
            OPTIMUM_HABANA,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"could not download {OPTIMUM_HABANA} from PyPI: {proc.stderr[-2000:]}"
    oh = next(root.glob("optimum_habana-*.whl"))
    with zipfile.ZipFile(oh) as zf:
        zf.extractall(root / "oh")
        meta = next(n for n in zf.namelist() if n.endswith("METADATA"))
        requires = zf.read(meta).decode()
    spec = re.search(r"Requires-Dist: transformers\s*([^;\n]+)", requires).group(1).strip().replace(" ", "")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "-q",
            "-d",
            str(root),
            f"transformers{spec}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    with zipfile.ZipFile(next(root.glob("transformers-*.whl"))) as zf:
        zf.extract("transformers/training_args.py", root / "tf")
    return {"oh": root / "oh" / "optimum" / "habana", "tf": root / "tf" / "transformers", "transformers": spec}


def _class(path: Path, name: str) -> ast.ClassDef:
    tree = ast.parse(path.read_text())
    return next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == name)


def fields(path: Path, name: str) -> set[str]:
    """Dataclass fields declared in a class body."""
    return {
        n.target.id for n in _class(path, name).body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
    }


def init_params(path: Path, name: str) -> set[str]:
    init = next(n for n in _class(path, name).body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    return {a.arg for a in init.args.args + init.args.kwonlyargs} - {"self"}


def exported(path: Path) -> set[str]:
    """Names an __init__.py imports (what `from package import X` finds)."""
    return {
        a.asname or a.name
        for n in ast.walk(ast.parse(path.read_text()))
        if isinstance(n, ast.ImportFrom)
        for a in n.names
    }


@pytest.fixture(scope="module")
def oh_api(wheels):
    oh, tf = wheels["oh"], wheels["tf"]
    training_args = fields(tf / "training_args.py", "TrainingArguments")
    gaudi_args = training_args | fields(oh / "transformers" / "training_args.py", "GaudiTrainingArguments")
    return {
        "training_args": gaudi_args,
        "dpo_config": gaudi_args | fields(oh / "trl" / "trainer" / "dpo_config.py", "GaudiDPOConfig"),
        "gaudi_config": set(
            re.findall(r'kwargs\.pop\("(\w+)"', (oh / "transformers" / "gaudi_configuration.py").read_text())
        ),
        "trainer_init": init_params(oh / "transformers" / "trainer.py", "GaudiTrainer"),
        "dpo_trainer_init": init_params(oh / "trl" / "trainer" / "dpo_trainer.py", "GaudiDPOTrainer"),
        "runner_init": init_params(oh / "distributed" / "distributed_runner.py", "DistributedRunner"),
        "exports": exported(oh / "__init__.py"),
        "trl_exports": exported(oh / "trl" / "__init__.py"),
        "distributed_exports": exported(oh / "distributed" / "__init__.py"),
    }


GAUDI_PLANS = [
    ("recipe=neural_chat_v3", "hardware=gaudi2_8x"),
    ("recipe=stack_llama2_70b", "hardware=gaudi2_8x"),
    ("recipe=mixtral_sft",),
    ("recipe=dpo_llama2_7b_chat", "hardware=gaudi2_8x"),
    ("recipe=instruct", "hardware=gaudi2_1x", "sft.packing=false"),
]


def test_the_classes_the_backend_imports_exist(oh_api):
    source = (
        Path("neuralchat_recipes/backends/gaudi.py").read_text()
        + Path("neuralchat_recipes/backends/gaudi_spawn.py").read_text()
    )
    imported = {
        (m, n.strip())
        for m, names in re.findall(r"from optimum\.habana(\S*) import ([\w, ]+)", source)
        for n in names.split(",")
    }
    from neuralchat_recipes.backends.gaudi import GaudiDevice

    for module, trainer, arguments in GaudiDevice.trainers.values():  # imported by name when a stage runs
        imported |= {
            (module.removeprefix("optimum.habana"), trainer),
            (module.removeprefix("optimum.habana"), arguments),
        }
    assert imported, "the backend imports nothing from optimum.habana?"
    where = {"": oh_api["exports"], ".trl": oh_api["trl_exports"], ".distributed": oh_api["distributed_exports"]}
    for module, name in imported:
        assert name in where[module], f"optimum.habana{module} has no {name}"
    assert {"command_list", "world_size", "hostfile", "use_mpi", "use_deepspeed"} <= oh_api["runner_init"]


@pytest.mark.parametrize("overrides", GAUDI_PLANS, ids=lambda o: " ".join(o))
def test_every_training_argument_and_gaudi_config_key_exists(oh_api, overrides):
    from neuralchat_recipes.backends import get_device
    from tests.conftest import compose_recipe

    recipe = compose_recipe(*overrides)
    device = get_device(recipe.hardware)
    plan = plan_for(*overrides)
    checked = 0
    for spec in plan.stages:
        if spec.kind not in ("sft", "dpo"):
            continue
        args = spec.args
        ds = {"deepspeed": "ds_config.json" if args.deepspeed else None}
        if spec.kind == "sft":
            assert args.uses_plain_trainer(device)  # GaudiTrainer, never GaudiSFTTrainer
            fields, extra = oh_api["training_args"], args.plain_config_extra()
        else:
            fields, extra = oh_api["dpo_config"], args.dpo_config_extra()
        kwargs = args.wanted_arguments("out", fields, device, {**ds, **extra})
        dropped = set(kwargs) - fields
        assert dropped <= set(KNOWN_GAPS.get(spec.kind, {})), f"{spec.name}: optimum-habana has no {dropped}"
        for key in ("use_habana", "use_lazy_mode", "use_hpu_graphs_for_training", "throughput_warmup_steps"):
            assert key in kwargs, key
        gaudi_config = args.device_args.gaudi_config
        assert set(gaudi_config) <= oh_api["gaudi_config"], set(gaudi_config) - oh_api["gaudi_config"]
        checked += 1
    assert checked


def test_the_trainers_take_the_keywords_our_stages_pass(oh_api):
    from neuralchat_recipes.backends import get_device
    from tests.conftest import compose_recipe

    backend = get_device(compose_recipe("hardware=gaudi2_8x").hardware)
    gaudi_kwargs = {"gaudi_config"}  # device.trainer_kwargs
    # sft._run_plain_trainer and dpo.run
    assert {
        "model",
        "args",
        "train_dataset",
        "eval_dataset",
        "processing_class",
        "data_collator",
    } | gaudi_kwargs <= oh_api["trainer_init"]
    dpo = {"model", "ref_model", "args", "train_dataset", "eval_dataset", "peft_config", backend.dpo_tokenizer_kwarg}
    assert dpo | gaudi_kwargs <= oh_api["dpo_trainer_init"], dpo - oh_api["dpo_trainer_init"]
    # and the check is not vacuous: the keyword TRL 1.x uses is not GaudiDPOTrainer's
    assert "processing_class" not in oh_api["dpo_trainer_init"]
