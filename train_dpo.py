"""Preference optimisation (DPO) of a fine-tuned Alpaca model on judged preference pairs, with TRL's DPOTrainer.

The pairs come from `judge.py preferences` (PREFS/preferences.jsonl: prompt, chosen, rejected) or any file of such
records, or of {messages, chosen, rejected} records whose prompt is a conversation ending with a user turn (rendered
as train.py renders a conversation; docs/preferences.md), or both. The flags are train.py's (LoRA, --use_cpu, FSDP
and DeepSpeed configs, --seed, --max_steps, learning rate, batch sizes, gradient checkpointing,
--resume_from_checkpoint) plus TRL's DPO settings (--beta, --loss_type, ...). One GPU:

    python train_dpo.py --model_name_or_path output/alpaca --data_path prefs/preferences.jsonl \
        --output_dir output/alpaca-dpo --beta 0.1 --learning_rate 5e-7 --num_train_epochs 1 \
        --per_device_train_batch_size 4 --gradient_accumulation_steps 8 --bf16 True --logging_steps 10 \
        --model_max_length 1024

4 GPUs with FSDP: `torchrun --nproc_per_node=4 train_dpo.py ... --fsdp --fsdp_config configs/fsdp_llama.json`.
LoRA: `--lora_r 16 --learning_rate 5e-6` (the reference is then the model with its adapter off). On a CPU:
`--use_cpu True`. The output directory loads with inference.py, serves with `transformers serve` (the Alpaca
chat template is saved with it) and diffs with `weight_diff.py make_diff`. The code is in alpaca/train/dpo.py;
docs/preferences.md walks through the whole loop.
"""

from alpaca import cli
from alpaca.train.dpo import train_dpo

if __name__ == "__main__":
    cli.report_errors(train_dpo, "training interrupted: checkpoints saved so far are in --output_dir; continue with "
                                 "--resume_from_checkpoint True.")
