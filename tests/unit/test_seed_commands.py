"""The seeds' launch command lines against our plans, argument for argument.

Each case is a command copied from the documents the project reproduces (optimum-habana's TRL
examples, ITREX's fine-tuning guide) and the overrides that express it here. Every argument of the
seed command is accounted for: the launcher's own arguments (gaudi_spawn / mpirun) must equal
ours, the environment it sets must be in the stage's launch environment with the same value, and
every script flag is either compared with the planned value or listed in NOT_PLAN_ARGS with the
reason it is not one. An unknown flag fails the test.
"""

import shlex

import pytest

from tests.conftest import plan_for

OH_SFT_MIXTRAL = """DEEPSPEED_HPU_ZERO3_SYNC_MARK_STEP_REQUIRED=1 python ../gaudi_spawn.py --world_size 4 --use_deepspeed sft.py \
    --model_name_or_path mistralai/Mixtral-8x7B-Instruct-v0.1 --dataset_name "philschmid/dolly-15k-oai-style" \
    --subset 'data/' --streaming False --deepspeed ../language-modeling/llama2_ds_zero3_config.json \
    --output_dir="./model_mixtral" --do_train --max_steps=500 --logging_steps=10 --save_steps=100 \
    --per_device_train_batch_size=2 --per_device_eval_batch_size=1 --gradient_accumulation_steps=2 \
    --learning_rate=1e-4 --lr_scheduler_type="cosine" --warmup_steps=100 --weight_decay=0.05 \
    --optim="paged_adamw_32bit" --lora_target_modules "q_proj" "v_proj" --bf16 --remove_unused_columns=False \
    --max_seq_length 512 --run_name="sft_mixtral" --report_to=none --use_habana --use_lazy_mode"""

OH_SFT_LLAMA70B = """DEEPSPEED_HPU_ZERO3_SYNC_MARK_STEP_REQUIRED=1 python ../gaudi_spawn.py --world_size 8 --use_deepspeed sft.py \
    --model_name_or_path meta-llama/Llama-2-70b-hf --dataset_name "lvwerra/stack-exchange-paired" \
    --deepspeed ../language-modeling/llama2_ds_zero3_config.json --output_dir="./sft" --do_train --max_steps=500 \
    --logging_steps=10 --save_steps=100 --per_device_train_batch_size=1 --per_device_eval_batch_size=1 \
    --gradient_accumulation_steps=2 --learning_rate=1e-4 --lr_scheduler_type="cosine" --warmup_steps=100 \
    --weight_decay=0.05 --optim="paged_adamw_32bit" --lora_target_modules "q_proj" "v_proj" --bf16 \
    --remove_unused_columns=False --run_name="sft_llama2" --report_to=none --use_habana --use_lazy_mode"""

OH_DPO_LLAMA70B = """DEEPSPEED_HPU_ZERO3_SYNC_MARK_STEP_REQUIRED=1 python ../gaudi_spawn.py --world_size 8 --use_deepspeed dpo.py \
    --model_name_or_path="sft/final_merged_checkpoint" --tokenizer_name_or_path=meta-llama/Llama-2-70b-hf \
    --deepspeed ../language-modeling/llama2_ds_zero3_config.json \
    --lora_target_modules "q_proj" "v_proj" "k_proj" "out_proj" "fc_in" "fc_out" "wte" \
    --output_dir="dpo" --max_prompt_length=256 --max_length=512 --report_to=none"""

ITREX_DPO_LLAMA2_CHAT = """python ../instruction/gaudi_spawn.py --world_size 8 --use_mpi dpo_clm.py \
    --model_name_or_path "meta-llama/Llama-2-7b-chat-hf" --output_dir "llama" --per_device_train_batch_size 1 \
    --gradient_accumulation_steps 8 --learning_rate 5e-4 --num_train_epochs 3  --lora_alpha 16 --lora_rank 16 \
    --lora_dropout 0.05 --dataset_name Intel/orca_dpo_pairs --bf16  --use_auth_token True --use_habana \
    --use_lazy_mode --pad_max true --report_to none --torch_dtype bfloat16 --use_hpu_graphs_for_training"""

ITREX_DL1_LLAMA2 = """python gaudi_spawn.py --world_size 8 --use_mpi finetune_clm.py \
    --model_name_or_path "meta-llama/Llama-2-7b-chat-hf" --bf16 True --train_file "/path/to/alpaca_data.json" \
    --dataset_concatenation --per_device_train_batch_size 2 --per_device_eval_batch_size 2 \
    --gradient_accumulation_steps 4 --evaluation_strategy "no" --save_strategy "steps" --save_steps 2000 \
    --save_total_limit 1 --learning_rate 1e-4  --logging_steps 1 --do_train --num_train_epochs 3 \
    --overwrite_output_dir --log_level info --output_dir ./llama2_peft_finetuned_model --peft lora \
    --use_fast_tokenizer false --device "hpu" --use_habana --use_lazy_mode"""

ITREX_GAUDI2_LLAMA70B_ZERO3 = """PT_HPU_MAX_COMPOUND_OP_SIZE=10 DEEPSPEED_HPU_ZERO3_SYNC_MARK_STEP_REQUIRED=1 python gaudi_spawn.py \
    --world_size 8 --use_deepspeed finetune_clm.py --model_name_or_path "meta-llama/Llama-2-70b-chat-hf" --bf16 True \
    --dataset_name tatsu-lab/alpaca --dataset_concatenation --per_device_train_batch_size 2 \
    --per_device_eval_batch_size 2 --gradient_accumulation_steps 4 --evaluation_strategy "no" \
    --save_strategy "steps" --save_steps 2000 --save_total_limit 1 --learning_rate 1e-4  --logging_steps 1 \
    --do_train --num_train_epochs 3 --overwrite_output_dir --log_level info --output_dir ./llama2_peft_finetuned_model \
    --peft lora --use_fast_tokenizer false --device "hpu" --use_habana --use_lazy_mode \
    --deepspeed llama2_ds_zero3_config.json"""

ITREX_GAUDI2_MIXTRAL_ZERO3 = """PT_HPU_MAX_COMPOUND_OP_SIZE=10 DEEPSPEED_HPU_ZERO3_SYNC_MARK_STEP_REQUIRED=1 \
    python3 ./gaudi_spawn.py --use_deepspeed --world_size 8 finetune_clm.py \
    --model_name_or_path "mistralai/Mixtral-8x7B-v0.1" --bf16 True --dataset_name tatsu-lab/alpaca \
    --dataset_concatenation --per_device_train_batch_size 2 --per_device_eval_batch_size 8 \
    --gradient_accumulation_steps 4 --do_train --learning_rate 1e-4 --num_train_epochs 3 --logging_steps 10 \
    --save_total_limit 2 --overwrite_output_dir --log_level info --save_strategy epoch \
    --output_dir ./mixtral_peft_finetuned_model --peft lora --lora_target_modules q_proj k_proj v_proj o_proj \
    --lora_rank 64 --lora_alpha 16 --use_fast_tokenizer True --use_habana --use_lazy_mode \
    --deepspeed llama2_ds_zero3_config.json"""

ITREX_XEON_PTUN_LLAMA2 = """mpirun -f nodefile -n 16 -ppn 4 -genv OMP_NUM_THREADS=56 python3 finetune_clm.py \
    --model_name_or_path meta-llama/Llama-2-7b-chat-hf --train_file ./alpaca_data.json --bf16 True \
    --output_dir ./llama2_peft_finetuned_model --num_train_epochs 3 --per_device_train_batch_size 4 \
    --per_device_eval_batch_size 4 --gradient_accumulation_steps 1 --evaluation_strategy "no" \
    --save_strategy "steps" --save_steps 2000 --save_total_limit 1 --learning_rate 1e-4 --logging_steps 1 \
    --peft ptun --group_by_length True --dataset_concatenation --use_fast_tokenizer false --do_train \
    --no_cuda --ddp_backend ccl"""

ITREX_XEON_LORA_MPT = """mpirun -f nodefile -n 16 -ppn 4 -genv OMP_NUM_THREADS=56 python3 finetune_clm.py \
    --model_name_or_path mosaicml/mpt-7b --train_file ./alpaca_data.json --bf16 True \
    --output_dir ./mpt_peft_finetuned_model --num_train_epochs 3 --per_device_train_batch_size 4 \
    --per_device_eval_batch_size 4 --gradient_accumulation_steps 1 --evaluation_strategy "no" \
    --save_strategy "steps" --save_steps 2000 --save_total_limit 1 --learning_rate 1e-4  --logging_steps 1 \
    --peft lora --group_by_length True --dataset_concatenation --do_train --trust_remote_code True \
    --use_fast_tokenizer True --tokenizer_name "EleutherAI/gpt-neox-20b" --no_cuda --ddp_backend ccl"""

ITREX_XEON_FLAN_T5 = """mpirun -f nodefile -n 16 -ppn 4 -genv OMP_NUM_THREADS=56 python3 finetune_seq2seq.py \
    --model_name_or_path "google/flan-t5-xl" --bf16 True --train_file "stanford_alpaca/alpaca_data.json" \
    --per_device_train_batch_size 2 --per_device_eval_batch_size 2 --gradient_accumulation_steps 1 --do_train \
    --learning_rate 1.0e-5 --warmup_ratio 0.03 --weight_decay 0.0 --num_train_epochs 5 --logging_steps 10 \
    --save_steps 2000 --save_total_limit 2 --overwrite_output_dir --output_dir ./flan-t5-xl_peft_finetuned_model \
    --peft lora --no_cuda --ddp_backend ccl"""

# ITREX's multi-card and multi-node commands save every 2000 steps, keep one checkpoint and log every step
ITREX_CADENCE = ("sft.save_steps=2000", "sft.save_total_limit=1", "sft.logging_steps=1")
XEON = (*ITREX_CADENCE, "hardware=xeon_spr_ddp", "hardware.master_addr=10.0.0.1", "sft.global_batch_size=64")
CASES = [
    # (id, seed command, overrides, stage)
    ("oh-sft-mixtral-4x", OH_SFT_MIXTRAL, ["recipe=mixtral_sft"], "sft"),
    ("oh-sft-llama70b-deepspeed", OH_SFT_LLAMA70B, ["recipe=stack_llama2_70b", "hardware=gaudi2_8x"], "sft"),
    (
        "oh-sft-llama70b-mpi",
        OH_SFT_LLAMA70B.replace("--use_deepspeed", "--use_mpi"),
        ["recipe=stack_llama2_70b", "hardware=gaudi2_8x", "hardware.gaudi.spawn=mpi"],
        "sft",
    ),
    ("oh-dpo-llama70b", OH_DPO_LLAMA70B, ["recipe=stack_llama2_70b", "hardware=gaudi2_8x"], "dpo"),
    ("itrex-dpo-llama2-chat", ITREX_DPO_LLAMA2_CHAT, ["recipe=dpo_llama2_7b_chat", "hardware=gaudi2_8x"], "dpo"),
    (
        "itrex-dl1-llama2",
        ITREX_DL1_LLAMA2,
        [
            "recipe=instruct",
            "model=llama2_7b_chat",
            "hardware=gaudi1_8x",
            *ITREX_CADENCE,
            "sft.global_batch_size=64",
            "sft.micro_batch_size=2",
        ],
        "sft",
    ),
    (
        "itrex-gaudi2-llama70b-zero3",
        ITREX_GAUDI2_LLAMA70B_ZERO3,
        [
            "recipe=instruct",
            "model=llama2_70b",
            "model.path=meta-llama/Llama-2-70b-chat-hf",
            "hardware=gaudi2_8x",
            *ITREX_CADENCE,
            "+deepspeed@sft.deepspeed=zero3",
            "sft.global_batch_size=64",
            "sft.micro_batch_size=2",
            "dataset@sft.dataset=alpaca",
        ],
        "sft",
    ),
    (
        "itrex-gaudi2-mixtral-zero3",
        ITREX_GAUDI2_MIXTRAL_ZERO3,
        [
            "recipe=instruct",
            "model=mixtral_8x7b",
            "hardware=gaudi2_8x",
            "+deepspeed@sft.deepspeed=zero3",
            "sft.peft.r=64",
            "sft.peft.target_modules=[q_proj,k_proj,v_proj,o_proj]",
            "dataset@sft.dataset=alpaca",
            "sft.global_batch_size=64",
            "sft.micro_batch_size=2",
            "sft.logging_steps=10",
            "sft.save_total_limit=2",
        ],
        "sft",
    ),
    (
        "itrex-xeon-ptun-llama2",
        ITREX_XEON_PTUN_LLAMA2,
        [
            "recipe=instruct",
            *XEON,
            "model=llama2_7b_chat",
            "sft.micro_batch_size=4",
            "peft@sft.peft=p_tuning",
            "sft.packing=false",
            "sft.group_by_length=true",
        ],
        "sft",
    ),
    (
        "itrex-xeon-lora-mpt",
        ITREX_XEON_LORA_MPT,
        ["recipe=instruct", *XEON, "model=mpt_7b", "sft.micro_batch_size=4", "sft.group_by_length=true"],
        "sft",
    ),
    (
        "itrex-xeon-flan-t5",
        ITREX_XEON_FLAN_T5,
        [
            "recipe=instruct",
            "hardware=xeon_spr_ddp",
            "hardware.master_addr=10.0.0.1",
            "model=flan_t5_xl",
            "sft.global_batch_size=32",
            "sft.micro_batch_size=2",
            "sft.learning_rate=1e-5",
            "sft.warmup_ratio=0.03",
            "sft.num_train_epochs=5",
            "sft.logging_steps=10",
            "sft.save_total_limit=2",
            "sft.save_steps=2000",
            "sft.packing=false",
            "sft.task=completion",
        ],
        "sft",
    ),
]

# Script flags that are not plan arguments, and why.
NOT_PLAN_ARGS = {
    "output_dir": "artifacts are content-addressed under output_root",
    "overwrite_output_dir": "artifacts are never overwritten; staging is cleared by the runner",
    "do_train": "a training stage always trains",
    "report_to": "recipe.report_to (the seeds switch it off; ours defaults to none too)",
    "run_name": "the run record is named after the recipe",
    "per_device_eval_batch_size": "held-out evaluation uses the training micro batch",
    "evaluation_strategy": "eval follows do_eval / eval_steps (off by default, as in the seeds)",
    "save_strategy": "checkpoints are saved every save_steps (resume points)",
    "log_level": "progress is one line per logging step",
    "remove_unused_columns": "our collators build the batches; the trainers get remove_unused_columns=False",
    "streaming": "datasets are read whole (they are small enough for every recipe)",
    "subset": "the dataset entry's data_dir / config",
    "use_auth_token": "hub_token_env (HF_TOKEN) is passed to every stage",
    "device": "the hardware profile's device",
    "no_cuda": "use_cpu from the cpu backend",
    "train_file": "the dataset entry's local path (alpaca_file)",
    "torch_dtype": "the model's torch_dtype follows the precision (bf16)",
}


def parse(command: str):
    """(environment, launcher argv, script, {flag: value}) of a seed command line."""
    tokens = shlex.split(command)
    env = {}
    while "=" in tokens[0] and not tokens[0].startswith("-"):
        key, value = tokens.pop(0).split("=", 1)
        env[key] = value
    script_at = next(i for i, t in enumerate(tokens) if t.endswith(".py") and "gaudi_spawn" not in t)
    launcher, rest = tokens[:script_at], tokens[script_at + 1 :]
    flags, key = {}, None
    for token in rest:
        if token.startswith("--"):
            key, _, value = token[2:].partition("=")
            flags[key] = value if value else True
        else:
            flags[key] = (
                token if flags[key] is True else [*([flags[key]] if isinstance(flags[key], str) else flags[key]), token]
            )
    return env, launcher, tokens[script_at], flags


def _bool(value) -> bool:
    return value is True or str(value).lower() == "true"


def check_flag(spec, flag: str, value) -> None:
    a, peft = spec.args.view(), spec.peft or {}
    number = {
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "max_steps",
        "logging_steps",
        "save_steps",
        "save_total_limit",
        "num_train_epochs",
        "max_prompt_length",
        "max_length",
        "warmup_steps",
    }
    if flag in number:
        assert a[flag] == int(value), flag
    elif flag in ("learning_rate", "weight_decay", "warmup_ratio"):
        assert a[flag] == float(value), flag
    elif flag in ("lr_scheduler_type", "optim", "ddp_backend"):
        assert a[flag] == value, flag
    elif flag == "max_seq_length":
        assert a["max_seq_length"] == int(value)
    elif flag in ("bf16", "use_habana", "use_lazy_mode", "use_hpu_graphs_for_training"):
        assert a[flag] is _bool(value), flag
    elif flag == "pad_max":
        assert a["pad_to_max"] is _bool(value)
    elif flag == "dataset_concatenation":
        assert a["packing"] is True or spec.peft["method"] == "p_tuning", "packing (dataset_concatenation)"
    elif flag == "group_by_length":
        assert a["group_by_length"] is _bool(value)
    elif flag == "lora_target_modules":
        assert peft["target_modules"] == ([value] if isinstance(value, str) else value)
    elif flag == "lora_rank":
        assert peft["r"] == int(value)
    elif flag == "lora_alpha":
        assert peft["alpha"] == float(value)
    elif flag == "lora_dropout":
        assert peft["dropout"] == float(value)
    elif flag == "peft":
        assert peft["method"] == {"lora": "lora", "ptun": "p_tuning"}[value]
    elif flag == "model_name_or_path":
        if value.startswith("sft/"):  # the merged SFT model of the same recipe
            assert spec.inputs[0].stage.startswith("merge")
        else:
            assert spec.model["path"] == value
    elif flag in ("tokenizer_name_or_path", "tokenizer_name"):
        assert (spec.model["tokenizer"] or spec.model["path"]) == value
    elif flag == "use_fast_tokenizer":
        assert spec.model["use_fast_tokenizer"] is _bool(value)
    elif flag == "trust_remote_code":
        assert spec.model["trust_remote_code"] is _bool(value)
    elif flag == "dataset_name":
        assert spec.datasets["dataset"]["hub_id"] == value
    elif flag == "deepspeed":
        assert a["deepspeed"]["zero_optimization"]["stage"] == 3 and "zero3" in value
    else:
        raise AssertionError(f"seed flag --{flag} is neither compared nor listed in NOT_PLAN_ARGS")


def our_launcher(spec):
    cmd = spec.launch["command"]
    if spec.launch["launcher"] == "gaudi_spawn":
        return cmd[3 : cmd.index(next(c for c in cmd if c.endswith("run_stage.py")))]
    return cmd[: cmd.index("python")]


@pytest.mark.parametrize("command,overrides,stage", [pytest.param(c, o, s, id=i) for i, c, o, s in CASES])
def test_seed_command_matches_the_plan(command, overrides, stage):
    env, launcher, script, flags = parse(command)
    spec = plan_for(*overrides).stage(stage)
    for key, value in env.items():
        assert spec.launch["env"].get(key) == value, key
    ours = our_launcher(spec)
    if launcher[0] == "mpirun":
        assert launcher[-1].startswith("python")  # the interpreter that runs the script
        assert ours == launcher[:-1]  # mpirun -f nodefile -n 16 -ppn 4 -genv OMP_NUM_THREADS=56
    else:  # python [path/]gaudi_spawn.py --world_size N --use_deepspeed|--use_mpi (argparse: order free)
        assert launcher[0].startswith("python") and launcher[1].endswith("gaudi_spawn.py")
        assert sorted(ours) == sorted(launcher[2:])
    for flag, value in flags.items():
        if flag not in NOT_PLAN_ARGS:
            check_flag(spec, flag, value)


def test_the_parser_reads_flags_with_and_without_values():
    env, launcher, script, flags = parse("A=1 python x/gaudi_spawn.py --world_size 2 --use_mpi t.py --x=1 --y --z a b")
    assert env == {"A": "1"} and launcher == ["python", "x/gaudi_spawn.py", "--world_size", "2", "--use_mpi"]
    assert script == "t.py" and flags == {"x": "1", "y": True, "z": ["a", "b"]}


def test_a_wrong_value_is_caught():
    spec = plan_for("recipe=mixtral_sft").stage("sft")
    with pytest.raises(AssertionError):
        check_flag(spec, "learning_rate", "3e-4")
    with pytest.raises(AssertionError, match="neither compared"):
        check_flag(spec, "made_up_flag", "1")
