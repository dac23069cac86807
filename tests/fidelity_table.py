"""The seed commands, value for value: every training, merge and generation command in shared/seeds/, the recipe file
that reproduces it, and what the comparison does with each value it sets.

`tests/unit/test_seed_fidelity.py` plans each row's recipe and compares every value of its command with the plan:
the launcher's own arguments (gaudi_spawn, mpirun, deepspeed, torch.distributed.launch) argument for argument, the
environment it sets, and every script flag, either compared (FLAG_CHECKS in the test) or listed below with the
reason it is not a plan value (NOT_PLAN_VALUES: the same for every row) or a deliberate difference of one row
(EXCEPTIONS). A flag in neither fails the test; so does a command text that is not in its seed file.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# seed 000's SFT command runs finetune_neuralchat_v3.py with no flags: its settings are the script's own
# (shared/RECIPE_FACTS.md, "neural-chat-7b-v3-1"), written here as the flags of ITREX's finetuning arguments
NEURAL_CHAT_SFT_SCRIPT = {
    "model_name_or_path": "mistralai/Mistral-7B-v0.1",
    "dataset_name": "Open-Orca/SlimOrca",
    "use_fast_tokenizer": "false",
    "max_seq_length": "2560",
    "max_source_length": "1024",
    "validation_split_percentage": "0",
    "per_device_train_batch_size": "1",
    "gradient_accumulation_steps": "8",
    "learning_rate": "1e-4",
    "lr_scheduler_type": "cosine",
    "warmup_ratio": "0.03",
    "weight_decay": "0",
    "num_train_epochs": "2",
    "bf16": True,
    "save_steps": "1000",
    "save_total_limit": "10",
    "logging_steps": "10",
    "lora_rank": "16",
    "lora_alpha": "64",
    "lora_dropout": "0.05",
    "lora_target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "deepspeed": "ds_config.json",
    "adam_epsilon": "1e-6",
    "use_habana": True,
    "use_lazy_mode": True,
}

# Flags that are not values of a plan, for every row, and why.
NOT_PLAN_VALUES = {
    "output_dir": "artifacts are content-addressed under output_root (the plan's output_dir is a fingerprint's)",
    "output_name": "the merged model is an artifact under output_root, addressed by its fingerprint",
    "output-path": "the merged model is an artifact under output_root, addressed by its fingerprint",
    "overwrite_output_dir": "artifacts are never overwritten: another setting is another fingerprint",
    "do_train": "a training stage always trains",
    "log_level": "progress is one line per logging step; library chatter is switched off",
    "use_auth_token": "the hub token comes from the environment variable hub_token_env names (HF_TOKEN)",
}


@dataclass(frozen=True)
class Row:
    id: str
    seed: str  # the seed file's number (shared/seeds/<seed>_*.txt)
    command: str  # verbatim, continuation lines joined (the test finds it in the seed file)
    recipe: str  # `recipe=` of the file that reproduces it
    stage: str  # the stage of that recipe that runs it
    names: dict[str, str] = field(default_factory=dict)  # the command's paths of earlier outputs -> stage names
    script_values: dict[str, object] | None = None  # a command without flags: the values its script sets
    zero_stage: int = 3  # the ZeRO stage of the command's DeepSpeed config file


# Deliberate differences, each with its reason: (row id, flag) -> why the plan differs from the seed.
EXCEPTIONS = {
    ("002-dpo-xeon-mpt", "lora_target_modules"): "MPT-7B has no k_proj / q_proj / v_proj (it projects them together in "
    "Wqkv); with the seed's names PEFT finds nothing to adapt, so the recipe adapts Wqkv",
    ("003-xeon-ddp-ptun-llama-7b", "dataset_concatenation"): "p-tuning's virtual tokens would be shared by every "
    "sample of a concatenated block; packing is refused with virtual-token adapters",
    ("004-xeon-ddp-ptun-llama2-chat", "dataset_concatenation"): "p-tuning's virtual tokens would be shared by every "
    "sample of a concatenated block; packing is refused with virtual-token adapters",
}

ROWS = [
    Row(
        id="000-sft-deepspeed",
        seed="000",
        command="deepspeed --include localhost:0,1,2,3,4,5,6,7 --master_port 29501 finetune_neuralchat_v3.py",
        recipe="itrex/neural_chat_v3_1",
        stage="sft",
        script_values=NEURAL_CHAT_SFT_SCRIPT,
        zero_stage=2,
    ),
    Row(
        id="000-merge-apply-lora",
        seed="000",
        command="python apply_lora.py --base-model-path mistralai/Mistral-7B-v0.1 --lora-model-path finetuned_model/ --output-path finetuned_model_lora",
        recipe="itrex/neural_chat_v3_1",
        stage="merge",
        names={"finetuned_model/": "sft"},
    ),
    Row(
        id="000-dpo-one-card",
        seed="000",
        command="python ../dpo_pipeline/dpo_clm.py --model_name_or_path \"./finetuned_model_lora\" --output_dir \"./finetuned_model_lora_plus_dpo\" --per_device_train_batch_size 8 --gradient_accumulation_steps 8 --learning_rate 5e-4 --max_steps 1000 --save_steps 10 --logging_steps 10 --lora_alpha 16 --lora_rank 16 --lora_dropout 0.05 --dataset_name Intel/orca_dpo_pairs --bf16 --max_length 1536 --max_prompt_length 1024 --lr_scheduler_type \"cosine\" --warmup_steps 100 --use_habana --use_lazy_mode --pad_max true --gradient_checkpointing true --lora_all_linear false --lora_target_modules 'k_proj' 'q_proj' 'v_proj'",
        recipe="itrex/neural_chat_v3_1",
        stage="dpo",
        names={"./finetuned_model_lora": "merge"},
    ),
    Row(
        id="001-sft-mixtral-4x",
        seed="001",
        command='DEEPSPEED_HPU_ZERO3_SYNC_MARK_STEP_REQUIRED=1 python ../gaudi_spawn.py --world_size 4 --use_deepspeed sft.py --model_name_or_path mistralai/Mixtral-8x7B-Instruct-v0.1 --dataset_name "philschmid/dolly-15k-oai-style" --subset \'data/\' --streaming False --deepspeed ../language-modeling/llama2_ds_zero3_config.json --output_dir="./model_mixtral" --do_train --max_steps=500 --logging_steps=10 --save_steps=100 --per_device_train_batch_size=2 --per_device_eval_batch_size=1 --gradient_accumulation_steps=2 --learning_rate=1e-4 --lr_scheduler_type="cosine" --warmup_steps=100 --weight_decay=0.05 --optim="paged_adamw_32bit" --lora_target_modules "q_proj" "v_proj" --bf16 --remove_unused_columns=False --max_seq_length 512 --run_name="sft_mixtral" --report_to=none --use_habana --use_lazy_mode',
        recipe="optimum_habana/sft_mixtral_8x7b_4x",
        stage="sft",
    ),
    Row(
        id="001-sft-llama2-70b-deepspeed",
        seed="001",
        command='DEEPSPEED_HPU_ZERO3_SYNC_MARK_STEP_REQUIRED=1 python ../gaudi_spawn.py --world_size 8 --use_deepspeed sft.py --model_name_or_path meta-llama/Llama-2-70b-hf --dataset_name "lvwerra/stack-exchange-paired" --deepspeed ../language-modeling/llama2_ds_zero3_config.json --output_dir="./sft" --do_train --max_steps=500 --logging_steps=10 --save_steps=100 --per_device_train_batch_size=1 --per_device_eval_batch_size=1 --gradient_accumulation_steps=2 --learning_rate=1e-4 --lr_scheduler_type="cosine" --warmup_steps=100 --weight_decay=0.05 --optim="paged_adamw_32bit" --lora_target_modules "q_proj" "v_proj" --bf16 --remove_unused_columns=False --run_name="sft_llama2" --report_to=none --use_habana --use_lazy_mode',
        recipe="optimum_habana/stack_llama2_70b",
        stage="sft",
    ),
    Row(
        id="001-sft-llama2-70b-mpi",
        seed="001",
        command='DEEPSPEED_HPU_ZERO3_SYNC_MARK_STEP_REQUIRED=1 python ../gaudi_spawn.py --world_size 8 --use_mpi sft.py --model_name_or_path meta-llama/Llama-2-70b-hf --dataset_name "lvwerra/stack-exchange-paired" --deepspeed ../language-modeling/llama2_ds_zero3_config.json --output_dir="./sft" --do_train --max_steps=500 --logging_steps=10 --save_steps=100 --per_device_train_batch_size=1 --per_device_eval_batch_size=1 --gradient_accumulation_steps=2 --learning_rate=1e-4 --lr_scheduler_type="cosine" --warmup_steps=100 --weight_decay=0.05 --optim="paged_adamw_32bit" --lora_target_modules "q_proj" "v_proj" --bf16 --remove_unused_columns=False --run_name="sft_llama2" --report_to=none --use_habana --use_lazy_mode',
        recipe="optimum_habana/stack_llama2_70b_sft_mpi",
        stage="sft",
    ),
    Row(
        id="001-merge-sft",
        seed="001",
        command='python merge_peft_adapter.py --base_model_name="meta-llama/Llama-2-70b-hf" --adapter_model_name="sft" --output_name="sft/final_merged_checkpoint"',
        recipe="optimum_habana/stack_llama2_70b",
        stage="merge_sft",
        names={"sft": "sft"},
    ),
    Row(
        id="001-dpo-llama2-70b",
        seed="001",
        command='DEEPSPEED_HPU_ZERO3_SYNC_MARK_STEP_REQUIRED=1 python ../gaudi_spawn.py --world_size 8 --use_deepspeed dpo.py --model_name_or_path="sft/final_merged_checkpoint" --tokenizer_name_or_path=meta-llama/Llama-2-70b-hf --deepspeed ../language-modeling/llama2_ds_zero3_config.json --lora_target_modules "q_proj" "v_proj" "k_proj" "out_proj" "fc_in" "fc_out" "wte" --output_dir="dpo" --max_prompt_length=256 --max_length=512 --report_to=none',
        recipe="optimum_habana/stack_llama2_70b",
        stage="dpo",
        names={"sft/final_merged_checkpoint": "merge_sft"},
    ),
    Row(
        id="001-merge-dpo-onto-base",
        seed="001",
        command='python merge_peft_adapter.py --base_model_name="meta-llama/Llama-2-70b-hf" --adapter_model_name="dpo" --output_name="stack-llama-2"',
        recipe="optimum_habana/stack_llama2_70b",
        stage="merge_dpo",
        names={"dpo": "dpo"},
    ),
    Row(
        id="001-generate-8x-deepspeed",
        seed="001",
        command='python ../gaudi_spawn.py --world_size 8 --use_deepspeed run_generation.py --model_name_or_path ../trl/stack-llama-2/ --use_hpu_graphs --use_kv_cache --batch_size 1 --bf16 --max_new_tokens 100 --prompt "Here is my prompt"',
        recipe="optimum_habana/stack_llama2_70b",
        stage="generate",
        names={"../trl/stack-llama-2/": "merge_dpo"},
    ),
    Row(
        id="002-dpo-gaudi-mpt",
        seed="002",
        command='python dpo_clm.py --model_name_or_path "mosaicml/mpt-7b" --output_dir "mpt_7b-dpo" --per_device_train_batch_size 1 --gradient_accumulation_steps 8 --learning_rate 5e-4 --max_steps 1000 --save_steps 10 --lora_alpha 16 --lora_rank 16 --lora_dropout 0.05 --dataset_name Intel/orca_dpo_pairs --bf16 --use_auth_token True --use_habana --use_lazy_mode --pad_max true --report_to none --torch_dtype bfloat16 --use_hpu_graphs_for_training',
        recipe="itrex/dpo/gaudi_mpt_7b",
        stage="dpo",
    ),
    Row(
        id="002-dpo-gaudi-8x-llama2-chat",
        seed="002",
        command='python ../instruction/gaudi_spawn.py --world_size 8 --use_mpi dpo_clm.py --model_name_or_path "meta-llama/Llama-2-7b-chat-hf" --output_dir "llama" --per_device_train_batch_size 1 --gradient_accumulation_steps 8 --learning_rate 5e-4 --num_train_epochs 3 --lora_alpha 16 --lora_rank 16 --lora_dropout 0.05 --dataset_name Intel/orca_dpo_pairs --bf16 --use_auth_token True --use_habana --use_lazy_mode --pad_max true --report_to none --torch_dtype bfloat16 --use_hpu_graphs_for_training',
        recipe="itrex/dpo/gaudi_8x_llama2_7b_chat",
        stage="dpo",
    ),
    Row(
        id="002-dpo-xeon-mpt",
        seed="002",
        command="python dpo_clm.py --model_name_or_path \"./mosaicml/mpt-7b\" --output_dir \"./finetuned_model_lora_plus_dpo\" --per_device_train_batch_size 2 --gradient_accumulation_steps 2 --learning_rate 5e-4 --max_steps 1000 --save_steps 10 --logging_steps 10 --lora_alpha 16 --lora_rank 16 --lora_dropout 0.05 --dataset_name Intel/orca_dpo_pairs --bf16 --max_length 1024 --max_prompt_length 512 --lr_scheduler_type \"cosine\" --warmup_steps 100 --use_cpu true --gradient_checkpointing true --lora_all_linear false --lora_target_modules 'k_proj' 'q_proj' 'v_proj'",
        recipe="itrex/dpo/xeon_mpt_7b",
        stage="dpo",
    ),
    Row(
        id="002-dpo-gpu-mpt",
        seed="002",
        command='python dpo_clm.py --model_name_or_path "mosaicml/mpt-7b" --output_dir "mpt_7b-dpo" --per_device_train_batch_size 1 --gradient_accumulation_steps 8 --learning_rate 5e-4 --max_steps 1000 --save_steps 10 --lora_alpha 16 --lora_rank 16 --lora_dropout 0.05 --dataset_name Intel/orca_dpo_pairs --bf16 --use_auth_token True',
        recipe="itrex/dpo/gpu_mpt_7b",
        stage="dpo",
    ),
    Row(
        id="003-xeon-flan-t5",
        seed="003",
        command='python finetune_seq2seq.py --model_name_or_path "google/flan-t5-xl" --bf16 True --train_file "stanford_alpaca/alpaca_data.json" --per_device_train_batch_size 2 --per_device_eval_batch_size 2 --gradient_accumulation_steps 1 --do_train --learning_rate 1.0e-5 --warmup_ratio 0.03 --weight_decay 0.0 --num_train_epochs 5 --logging_steps 10 --save_steps 2000 --save_total_limit 2 --overwrite_output_dir --output_dir ./flan-t5-xl_peft_finetuned_model --peft lora',
        recipe="itrex/finetune/xeon_flan_t5_xl",
        stage="sft",
    ),
    Row(
        id="003-xeon-llama-7b",
        seed="003",
        command='python finetune_clm.py --model_name_or_path "decapoda-research/llama-7b-hf" --bf16 True --train_file "/path/to/alpaca_data.json" --dataset_concatenation --per_device_train_batch_size 8 --per_device_eval_batch_size 8 --gradient_accumulation_steps 1 --do_train --learning_rate 1e-4 --num_train_epochs 3 --logging_steps 100 --save_total_limit 2 --overwrite_output_dir --log_level info --save_strategy epoch --output_dir ./llama_peft_finetuned_model --peft lora --use_fast_tokenizer false',
        recipe="itrex/finetune_v1/xeon_llama_7b",
        stage="sft",
    ),
    Row(
        id="003-xeon-mpt",
        seed="003",
        command='python finetune_clm.py --model_name_or_path "mosaicml/mpt-7b" --bf16 True --train_file "/path/to/alpaca_data.json" --dataset_concatenation --per_device_train_batch_size 8 --per_device_eval_batch_size 8 --gradient_accumulation_steps 1 --do_train --learning_rate 1e-4 --num_train_epochs 3 --logging_steps 100 --save_total_limit 2 --overwrite_output_dir --log_level info --save_strategy epoch --output_dir ./mpt_peft_finetuned_model --peft lora --trust_remote_code True --tokenizer_name "EleutherAI/gpt-neox-20b"',
        recipe="itrex/finetune/xeon_mpt_7b",
        stage="sft",
    ),
    Row(
        id="003-torchrun-flan-t5",
        seed="003",
        command='python -m torch.distributed.launch --master_addr=<MASTER_ADDRESS> --nproc_per_node=<NUM_PROCESSES_PER_NODE> --nnodes=<NUM_NODES> --node_rank=<NODE_RANK> finetune_seq2seq.py --model_name_or_path "google/flan-t5-xl" --bf16 True --train_file "stanford_alpaca/alpaca_data.json" --per_device_train_batch_size 2 --per_device_eval_batch_size 2 --gradient_accumulation_steps 1 --do_train --learning_rate 1.0e-5 --warmup_ratio 0.03 --weight_decay 0.0 --num_train_epochs 5 --logging_steps 10 --save_steps 2000 --save_total_limit 2 --overwrite_output_dir --output_dir ./flan-t5-xl_peft_finetuned_model --peft lora',
        recipe="itrex/finetune_v1/torchrun_flan_t5_xl",
        stage="sft",
    ),
    Row(
        id="003-xeon-ddp-ptun-llama-7b",
        seed="003",
        command='mpirun -f nodefile -n 16 -ppn 4 -genv OMP_NUM_THREADS=56 python3 finetune_clm.py --model_name_or_path decapoda-research/llama-7b-hf --train_file ./alpaca_data.json --bf16 True --output_dir ./llama_peft_finetuned_model --num_train_epochs 3 --per_device_train_batch_size 4 --per_device_eval_batch_size 4 --gradient_accumulation_steps 1 --evaluation_strategy "no" --save_strategy "steps" --save_steps 2000 --save_total_limit 1 --learning_rate 1e-4 --logging_steps 1 --peft ptun --group_by_length True --dataset_concatenation --use_fast_tokenizer false --do_train',
        recipe="itrex/finetune_v1/xeon_ddp_ptun_llama_7b",
        stage="sft",
    ),
    Row(
        id="003-xeon-ddp-lora-mpt",
        seed="003",
        command='mpirun -f nodefile -n 16 -ppn 4 -genv OMP_NUM_THREADS=56 python3 finetune_clm.py --model_name_or_path mosaicml/mpt-7b --train_file ./alpaca_data.json --bf16 True --output_dir ./mpt_peft_finetuned_model --num_train_epochs 3 --per_device_train_batch_size 4 --per_device_eval_batch_size 4 --gradient_accumulation_steps 1 --evaluation_strategy "no" --save_strategy "steps" --save_steps 2000 --save_total_limit 1 --learning_rate 1e-4 --logging_steps 1 --peft lora --group_by_length True --dataset_concatenation --do_train --trust_remote_code True --tokenizer_name "EleutherAI/gpt-neox-20b"',
        recipe="itrex/finetune/xeon_ddp_lora_mpt_7b",
        stage="sft",
    ),
    Row(
        id="004-xeon-flan-t5",
        seed="004",
        command='python finetune_seq2seq.py --model_name_or_path "google/flan-t5-xl" --bf16 True --train_file "stanford_alpaca/alpaca_data.json" --per_device_train_batch_size 2 --per_device_eval_batch_size 2 --gradient_accumulation_steps 1 --do_train --learning_rate 1.0e-5 --warmup_ratio 0.03 --weight_decay 0.0 --num_train_epochs 5 --logging_steps 10 --save_steps 2000 --save_total_limit 2 --overwrite_output_dir --output_dir ./flan-t5-xl_peft_finetuned_model --peft lora',
        recipe="itrex/finetune/xeon_flan_t5_xl",
        stage="sft",
    ),
    Row(
        id="004-xeon-llama2-code",
        seed="004",
        command='python finetune_clm.py --model_name_or_path "meta-llama/Llama-2-7b-hf" --bf16 True --dataset_name "theblackcat102/evol-codealpaca-v1" --per_device_train_batch_size 8 --per_device_eval_batch_size 8 --gradient_accumulation_steps 1 --do_train --learning_rate 1e-4 --num_train_epochs 3 --logging_steps 100 --save_total_limit 2 --overwrite_output_dir --log_level info --save_strategy epoch --output_dir ./llama2_peft_finetuned_model --peft lora --use_fast_tokenizer false --no_cuda',
        recipe="itrex/finetune/xeon_llama2_7b_code",
        stage="sft",
    ),
    Row(
        id="004-xeon-codellama",
        seed="004",
        command='python finetune_clm.py --model_name_or_path "codellama/CodeLlama-7b-hf" --bf16 True --dataset_name "sahil2801/CodeAlpaca-20k" --per_device_train_batch_size 8 --per_device_eval_batch_size 8 --gradient_accumulation_steps 1 --do_train --learning_rate 1e-4 --num_train_epochs 3 --logging_steps 100 --save_total_limit 2 --overwrite_output_dir --log_level info --save_strategy epoch --output_dir ./codellama_peft_finetuned_model --peft lora --use_fast_tokenizer True --no_cuda --task code-generation',
        recipe="itrex/finetune/xeon_codellama_7b",
        stage="sft",
    ),
    Row(
        id="004-xeon-mpt",
        seed="004",
        command='python finetune_clm.py --model_name_or_path "mosaicml/mpt-7b" --bf16 True --train_file "/path/to/alpaca_data.json" --dataset_concatenation --per_device_train_batch_size 8 --per_device_eval_batch_size 8 --gradient_accumulation_steps 1 --do_train --learning_rate 1e-4 --num_train_epochs 3 --logging_steps 100 --save_total_limit 2 --overwrite_output_dir --log_level info --save_strategy epoch --output_dir ./mpt_peft_finetuned_model --peft lora --trust_remote_code True --use_fast_tokenizer True --tokenizer_name "EleutherAI/gpt-neox-20b" --no_cuda',
        recipe="itrex/finetune/xeon_mpt_7b",
        stage="sft",
    ),
    Row(
        id="004-xeon-falcon",
        seed="004",
        command='python finetune_clm.py --model_name_or_path "tiiuae/falcon-7b" --bf16 True --train_file "/path/to/alpaca_data.json" --dataset_concatenation --per_device_train_batch_size 8 --per_device_eval_batch_size 8 --gradient_accumulation_steps 1 --do_train --learning_rate 1e-4 --num_train_epochs 3 --logging_steps 100 --save_total_limit 2 --overwrite_output_dir --log_level info --save_strategy epoch --output_dir ./falcon_peft_finetuned_model --peft lora --use_fast_tokenizer True --no_cuda',
        recipe="itrex/finetune/xeon_falcon_7b",
        stage="sft",
    ),
    Row(
        id="004-xeon-mistral",
        seed="004",
        command='python finetune_clm.py --model_name_or_path "mistralai/Mistral-7B-v0.1" --bf16 True --train_file "/path/to/alpaca_data.json" --dataset_concatenation --per_device_train_batch_size 8 --per_device_eval_batch_size 8 --gradient_accumulation_steps 1 --do_train --learning_rate 1e-4 --num_train_epochs 3 --logging_steps 100 --save_total_limit 2 --overwrite_output_dir --log_level info --save_strategy epoch --output_dir ./mistral_peft_finetuned_model --peft lora --use_fast_tokenizer True --no_cuda',
        recipe="itrex/finetune/xeon_mistral_7b",
        stage="sft",
    ),
    Row(
        id="004-xeon-starcoder",
        seed="004",
        command='python finetune_clm.py --model_name_or_path "bigcode/starcoder" --bf16 True --dataset_name "sahil2801/CodeAlpaca-20k" --per_device_train_batch_size 8 --per_device_eval_batch_size 8 --gradient_accumulation_steps 1 --do_train --learning_rate 1e-4 --num_train_epochs 3 --logging_steps 100 --save_total_limit 2 --overwrite_output_dir --log_level info --save_strategy epoch --output_dir ./starcoder_peft_finetuned_model --peft lora --use_fast_tokenizer True --no_cuda --task code-generation',
        recipe="itrex/finetune/xeon_starcoder",
        stage="sft",
    ),
    Row(
        id="004-xeon-ddp-flan-t5",
        seed="004",
        command='mpirun -f nodefile -n 16 -ppn 4 -genv OMP_NUM_THREADS=56 python3 finetune_seq2seq.py --model_name_or_path "google/flan-t5-xl" --bf16 True --train_file "stanford_alpaca/alpaca_data.json" --per_device_train_batch_size 2 --per_device_eval_batch_size 2 --gradient_accumulation_steps 1 --do_train --learning_rate 1.0e-5 --warmup_ratio 0.03 --weight_decay 0.0 --num_train_epochs 5 --logging_steps 10 --save_steps 2000 --save_total_limit 2 --overwrite_output_dir --output_dir ./flan-t5-xl_peft_finetuned_model --peft lora --no_cuda --ddp_backend ccl',
        recipe="itrex/finetune/xeon_ddp_flan_t5_xl",
        stage="sft",
    ),
    Row(
        id="004-xeon-ddp-ptun-llama2-chat",
        seed="004",
        command='mpirun -f nodefile -n 16 -ppn 4 -genv OMP_NUM_THREADS=56 python3 finetune_clm.py --model_name_or_path meta-llama/Llama-2-7b-chat-hf --train_file ./alpaca_data.json --bf16 True --output_dir ./llama2_peft_finetuned_model --num_train_epochs 3 --per_device_train_batch_size 4 --per_device_eval_batch_size 4 --gradient_accumulation_steps 1 --evaluation_strategy "no" --save_strategy "steps" --save_steps 2000 --save_total_limit 1 --learning_rate 1e-4 --logging_steps 1 --peft ptun --group_by_length True --dataset_concatenation --use_fast_tokenizer false --do_train --no_cuda --ddp_backend ccl',
        recipe="itrex/finetune/xeon_ddp_ptun_llama2_7b_chat",
        stage="sft",
    ),
    Row(
        id="004-xeon-ddp-lora-mpt",
        seed="004",
        command='mpirun -f nodefile -n 16 -ppn 4 -genv OMP_NUM_THREADS=56 python3 finetune_clm.py --model_name_or_path mosaicml/mpt-7b --train_file ./alpaca_data.json --bf16 True --output_dir ./mpt_peft_finetuned_model --num_train_epochs 3 --per_device_train_batch_size 4 --per_device_eval_batch_size 4 --gradient_accumulation_steps 1 --evaluation_strategy "no" --save_strategy "steps" --save_steps 2000 --save_total_limit 1 --learning_rate 1e-4 --logging_steps 1 --peft lora --group_by_length True --dataset_concatenation --do_train --trust_remote_code True --use_fast_tokenizer True --tokenizer_name "EleutherAI/gpt-neox-20b" --no_cuda --ddp_backend ccl',
        recipe="itrex/finetune/xeon_ddp_lora_mpt_7b",
        stage="sft",
    ),
    Row(
        id="004-dl1-llama2-chat",
        seed="004",
        command='python finetune_clm.py --model_name_or_path "meta-llama/Llama-2-7b-chat-hf" --bf16 True --train_file "/path/to/alpaca_data.json" --dataset_concatenation --per_device_train_batch_size 2 --per_device_eval_batch_size 2 --gradient_accumulation_steps 4 --evaluation_strategy "no" --save_strategy "steps" --save_steps 2000 --save_total_limit 1 --learning_rate 1e-4 --logging_steps 1 --do_train --num_train_epochs 3 --overwrite_output_dir --log_level info --output_dir ./llama2_peft_finetuned_model --peft lora --use_fast_tokenizer false --device "hpu" --use_habana --use_lazy_mode',
        recipe="itrex/finetune/dl1_llama2_7b_chat",
        stage="sft",
    ),
    Row(
        id="004-dl1-mpt",
        seed="004",
        command='python finetune_clm.py --model_name_or_path "mosaicml/mpt-7b" --bf16 True --train_file "/path/to/alpaca_data.json" --dataset_concatenation --per_device_train_batch_size 2 --per_device_eval_batch_size 2 --gradient_accumulation_steps 4 --evaluation_strategy "no" --save_strategy "steps" --save_steps 2000 --save_total_limit 1 --learning_rate 1e-4 --logging_steps 1 --do_train --num_train_epochs 3 --overwrite_output_dir --log_level info --output_dir ./mpt_peft_finetuned_model --peft lora --trust_remote_code True --tokenizer_name "EleutherAI/gpt-neox-20b" --device "hpu" --use_habana --use_lazy_mode',
        recipe="itrex/finetune/dl1_mpt_7b",
        stage="sft",
    ),
    Row(
        id="004-dl1-8x-llama2-chat",
        seed="004",
        command='python gaudi_spawn.py --world_size 8 --use_mpi finetune_clm.py --model_name_or_path "meta-llama/Llama-2-7b-chat-hf" --bf16 True --train_file "/path/to/alpaca_data.json" --dataset_concatenation --per_device_train_batch_size 2 --per_device_eval_batch_size 2 --gradient_accumulation_steps 4 --evaluation_strategy "no" --save_strategy "steps" --save_steps 2000 --save_total_limit 1 --learning_rate 1e-4 --logging_steps 1 --do_train --num_train_epochs 3 --overwrite_output_dir --log_level info --output_dir ./llama2_peft_finetuned_model --peft lora --use_fast_tokenizer false --device "hpu" --use_habana --use_lazy_mode',
        recipe="itrex/finetune/dl1_8x_llama2_7b_chat",
        stage="sft",
    ),
    Row(
        id="004-dl1-8x-mpt",
        seed="004",
        command='python gaudi_spawn.py --world_size 8 --use_mpi finetune_clm.py --model_name_or_path "mosaicml/mpt-7b" --bf16 True --train_file "/path/to/alpaca_data.json" --dataset_concatenation --per_device_train_batch_size 2 --per_device_eval_batch_size 2 --gradient_accumulation_steps 4 --evaluation_strategy "no" --save_strategy "steps" --save_steps 2000 --save_total_limit 1 --learning_rate 1e-4 --logging_steps 1 --do_train --num_train_epochs 3 --overwrite_output_dir --log_level info --output_dir ./mpt_peft_finetuned_model --peft lora --trust_remote_code True --tokenizer_name "EleutherAI/gpt-neox-20b" --device "hpu" --use_habana --use_lazy_mode',
        recipe="itrex/finetune/dl1_8x_mpt_7b",
        stage="sft",
    ),
    Row(
        id="004-gaudi2-8x-llama2-70b-zero3",
        seed="004",
        command='PT_HPU_MAX_COMPOUND_OP_SIZE=10 DEEPSPEED_HPU_ZERO3_SYNC_MARK_STEP_REQUIRED=1 python gaudi_spawn.py --world_size 8 --use_deepspeed finetune_clm.py --model_name_or_path "meta-llama/Llama-2-70b-chat-hf" --bf16 True --dataset_name tatsu-lab/alpaca --dataset_concatenation --per_device_train_batch_size 2 --per_device_eval_batch_size 2 --gradient_accumulation_steps 4 --evaluation_strategy "no" --save_strategy "steps" --save_steps 2000 --save_total_limit 1 --learning_rate 1e-4 --logging_steps 1 --do_train --num_train_epochs 3 --overwrite_output_dir --log_level info --output_dir ./llama2_peft_finetuned_model --peft lora --use_fast_tokenizer false --device "hpu" --use_habana --use_lazy_mode --deepspeed llama2_ds_zero3_config.json',
        recipe="itrex/finetune/gaudi2_8x_llama2_70b_chat_zero3",
        stage="sft",
    ),
    Row(
        id="004-gaudi2-8x-mixtral-zero3",
        seed="004",
        command='PT_HPU_MAX_COMPOUND_OP_SIZE=10 DEEPSPEED_HPU_ZERO3_SYNC_MARK_STEP_REQUIRED=1 python3 ./gaudi_spawn.py --use_deepspeed --world_size 8 finetune_clm.py --model_name_or_path "mistralai/Mixtral-8x7B-v0.1" --bf16 True --dataset_name tatsu-lab/alpaca --dataset_concatenation --per_device_train_batch_size 2 --per_device_eval_batch_size 8 --gradient_accumulation_steps 4 --do_train --learning_rate 1e-4 --num_train_epochs 3 --logging_steps 10 --save_total_limit 2 --overwrite_output_dir --log_level info --save_strategy epoch --output_dir ./mixtral_peft_finetuned_model --peft lora --lora_target_modules q_proj k_proj v_proj o_proj --lora_rank 64 --lora_alpha 16 --use_fast_tokenizer True --use_habana --use_lazy_mode --deepspeed llama2_ds_zero3_config.json',
        recipe="itrex/finetune/gaudi2_8x_mixtral_zero3",
        stage="sft",
    ),
    Row(
        id="004-arc-gemma-2b",
        seed="004",
        command='python finetune_clm.py --model_name_or_path "google/gemma-2b" --train_file "/path/to/alpaca_data.json" --dataset_concatenation --per_device_train_batch_size 2 --per_device_eval_batch_size 2 --gradient_accumulation_steps 4 --evaluation_strategy "no" --save_strategy "steps" --save_steps 2000 --save_total_limit 1 --learning_rate 1e-4 --do_train --num_train_epochs 3 --overwrite_output_dir --log_level info --output_dir ./gemma-2b_peft_finetuned_model --peft lora --gradient_checkpointing True',
        recipe="itrex/finetune/arc_gemma_2b",
        stage="sft",
    ),
]
