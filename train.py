"""Supervised fine-tuning of a causal LM on Alpaca-format data with the Hugging Face Trainer.

    torchrun --nproc_per_node=4 --master_port=29500 train.py \
        --model_name_or_path /path/to/llama-7b-hf --data_path ./alpaca_data.json --output_dir output/alpaca \
        --bf16 True --num_train_epochs 3 --per_device_train_batch_size 4 --gradient_accumulation_steps 8 \
        --learning_rate 2e-5 --lr_scheduler_type cosine --fsdp "full_shard auto_wrap" \
        --fsdp_config configs/fsdp_llama.json

The code lives in alpaca/train/ (the recipe in sft.py); docs/training.md explains the flags.
"""

if __name__ == "__main__":  # a mistyped path is reported in a second, before torch, transformers and DeepSpeed load
    from alpaca.train.setup import check_paths_first

    check_paths_first()

from alpaca.train.sft import (  # noqa: E402, F401  (the 2023 names, importable from here)
    DEFAULT_BOS_TOKEN,
    DEFAULT_EOS_TOKEN,
    DEFAULT_PAD_TOKEN,
    DEFAULT_UNK_TOKEN,
    IGNORE_INDEX,
    PROMPT_DICT,
    DataArguments,
    DataCollatorForSupervisedDataset,
    ModelArguments,
    SupervisedDataset,
    TrainingArguments,
    entry_point,
    make_supervised_data_module,
    preprocess,
    safe_save_model_for_hf_trainer,
    smart_tokenizer_and_embedding_resize,
    train,
)

if __name__ == "__main__":
    entry_point()
