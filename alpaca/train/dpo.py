"""Direct preference optimisation (DPO) of an Alpaca model with TRL's DPOTrainer: the preference stage's trainer.

The recipe, top to bottom: the command line (train.py's argument groups, with TRL's DPO settings added to the
training group), the preference file, the model and its reference, the trainer, saving. Everything train.py shares
is imported from it, not copied: the flags and their legacy translations, the up-front checks (data, output_dir,
resume), model and tokenizer loading ([PAD] added, the Alpaca chat template attached), LoRA settings, saving under
FSDP/DeepSpeed, the throughput and MFU log lines.

The reference model is the starting model, frozen: a second copy loaded exactly as the policy was (same added
tokens, same mean-initialised rows), or, under LoRA, the policy itself with its adapter switched off (TRL's way,
no second copy in memory).
"""

import logging
import os
from dataclasses import dataclass, field

from trl import DPOConfig

from alpaca import files
from alpaca.errors import DataError, UsageError
from alpaca.prompts.conversation import check_messages, format_conversation, is_conversation
from alpaca.train import setup as train_setup
from alpaca.train import sft as train
from alpaca.train import throughput
from alpaca.train.conversations import check_chat_template

logger = logging.getLogger(__name__)

PREFERENCE_FIELDS = ("prompt", "chosen", "rejected")
DATA_DESCRIPTION = ("a JSON list or JSONL of {prompt, chosen, rejected} records (judge.py preferences writes one) "
                    "and/or {messages, chosen, rejected} records whose messages end with a user turn")


@dataclass
class DPODataArguments:
    data_path: str | None = field(default=None, metadata={
        "help": "Preference pairs: a JSON list or JSONL of {prompt, chosen, rejected} records, the prompt being the "
                "exact Alpaca prompt (judge.py preferences writes PREFS/preferences.jsonl), and/or {messages, "
                "chosen, rejected} records, messages a conversation ending with the user turn the two answers "
                "answer (rendered as train.py renders a conversation)."})
    eval_data_path: str | None = field(default=None, metadata={"help": "Evaluation pairs, same format."})
    val_set_size: int = field(default=0, metadata={
        "help": "Hold out this many training pairs (chosen with --seed) as the evaluation set."})


@dataclass
class DPOTrainingArguments(train.TrainingArguments, DPOConfig):
    """train.py's training arguments (and their defaults) plus TRL's DPO settings: --beta, --loss_type, ...

    train.py's defaults win where the two differ (no bf16, no gradient checkpointing unless asked), except the
    learning rate, whose default is DPO's own."""

    learning_rate: float = field(default=1e-6, metadata={
        "help": "Peak learning rate (DPO's usual 1e-6 by default: far below supervised fine-tuning's)."})
    beta: float = field(default=0.1, metadata={
        "help": "How far the model may move from the reference: the DPO loss is -log sigmoid(beta x (chosen - "
                "rejected log-ratio)). Higher keeps it closer."})
    max_length: int | None = field(default=None, metadata={
        "help": "TRL's name for --model_max_length (prompt + answer tokens); when given, it wins. A pair whose "
                "prompt alone fills it is dropped; a longer answer is cut."})
    # ModelArguments has --trust_remote_code already; TRL's copy of the field stays off the command line.
    trust_remote_code: bool = field(default=False, init=False)

    def __post_init__(self):
        if self.max_length is None:
            self.max_length = self.model_max_length
        super().__post_init__()


def parse_args(argv: list[str] | None = None) -> tuple[train.ModelArguments, DPODataArguments, DPOTrainingArguments,
                                                      list[str]]:
    """The three argument groups from argv (old flags translated) and the translation notices, as train.py does;
    every mistake is a errors.UsageError."""
    return train_setup.parse_args((train.ModelArguments, DPODataArguments, DPOTrainingArguments), argv,
                                  prog="python train_dpo.py", data_description=DATA_DESCRIPTION)


# ----------------------------------------------------------------------------- data

def load_preferences(path: str) -> list[dict]:
    """The preference pairs of a JSON list or JSONL file: dicts with string `chosen` and `rejected`, and the prompt
    they answer as either a string `prompt` (the Alpaca prompt) or `messages` (a conversation ending with a user
    turn, docs/conversations.md); other fields are kept. A mistake is a DataError naming the file and the line
    (JSONL) or record."""
    records = files.load_records(path)
    if not records:
        raise DataError(f"{path} holds no preference pairs.")
    jsonl = path.endswith(".jsonl") or not _first_char_is(path, "[")  # files.load_records' rule
    places = [f"line {n}" for n, _ in files.read_jsonl(path)] if jsonl else \
        [f"record {i}" for i in range(len(records))]
    for place, record in zip(places, records, strict=True):
        check_pair(record, f"{path}, {place}")
    return records


def check_pair(record: object, where: str) -> None:
    """DataError, one sentence naming `where`, unless `record` is a preference pair (load_preferences)."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected an object with prompt (or messages), chosen and rejected, got "
                        f"{type(record).__name__}.")
    if "prompt" in record and "messages" in record:
        raise DataError(f"{where}: give the prompt once, as 'prompt' (the Alpaca prompt) or as 'messages' (a "
                        "conversation ending with a user turn), not both.")
    if "messages" in record:
        check_messages(record["messages"], where, last="user", why_last=(
            "a pair's messages end with the user turn that chosen and rejected answer, so leave its answer out of "
            "them."))
    for name in PREFERENCE_FIELDS:
        if name == "prompt" and "messages" in record:
            continue
        if name not in record:
            raise DataError(f"{where}: field '{name}' is missing; every pair needs prompt (or messages), chosen and "
                            "rejected.")
        if not isinstance(record[name], str):
            raise DataError(f"{where}: field '{name}' must be a string, got {type(record[name]).__name__}.")
    if "prompt" in record and not record["prompt"].strip():
        raise DataError(f"{where}: field 'prompt' is empty; give the Alpaca prompt the answers respond to.")


def _first_char_is(path: str, char: str) -> bool:
    with open(path, encoding="utf-8-sig") as f:
        return f.read(4096).lstrip().startswith(char)


def split_preferences(pairs: list[dict], data_args: DPODataArguments, seed: int) -> tuple[list[dict], list | None]:
    """(training pairs, evaluation pairs or None): --val_set_size held out with the seed, or --eval_data_path."""
    import torch

    if data_args.eval_data_path:
        return pairs, load_preferences(data_args.eval_data_path)
    if data_args.val_set_size <= 0:
        return pairs, None
    if data_args.val_set_size >= len(pairs):
        raise UsageError(f"--val_set_size {data_args.val_set_size} leaves no training pairs: "
                                     f"{data_args.data_path} has {len(pairs)}.")
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed)).tolist()
    held_out = [pairs[i] for i in order[:data_args.val_set_size]]
    return [pairs[i] for i in sorted(order[data_args.val_set_size:])], held_out


def prompt_text(pair: dict, eos_token: str) -> str:
    """The prompt of a pair as text: its `prompt`, or its `messages` rendered as the Alpaca chat template renders
    them for the next answer (format_conversation: each earlier answer + eos, then "### Response:"), without the
    BOS text, which the tokenizer adds as it does to train.py's prompts."""
    return format_conversation(pair["messages"], eos_token) if is_conversation(pair) else pair["prompt"]


def as_dataset(pairs: list[dict], tokenizer):
    """A datasets.Dataset of the pairs' prompt (text, `prompt_text`), chosen and rejected. TRL adds eos to the
    answers and tokenizes prompt + answer as one text, with the tokenizer's special tokens: the ids train.py gives
    prompt + output + eos, and, for a conversation, the ids of the conversation with the answer as its last
    assistant turn through the chat template (tests/train/test_train_dpo.py compares them)."""
    from datasets import Dataset

    if any(is_conversation(pair) for pair in pairs):
        check_chat_template(tokenizer)
    return Dataset.from_list([{"prompt": prompt_text(pair, tokenizer.eos_token), "chosen": pair["chosen"],
                               "rejected": pair["rejected"]} for pair in pairs])


def check_lengths(trainer, n_pairs: int, max_length: int, name: str = "training") -> None:
    """Say how many pairs TRL dropped (prompt alone >= max_length) or cut (prompt + answer longer); refuse a run
    left with none, which TRL would only report as `num_samples=0` after loading everything."""
    dataset = trainer.train_dataset if name == "training" else trainer.eval_dataset
    kept = len(dataset)
    if kept == 0:
        raise DataError(f"Every {name} pair's prompt fills --model_max_length {max_length}: nothing is left to "
                        "learn from; raise --model_max_length.")
    if kept < n_pairs:
        logger.warning(f"Dropped {n_pairs - kept} of {n_pairs} {name} pairs whose prompt fills --model_max_length "
                       f"{max_length}.")
    cut = sum(len(p) + max(len(c), len(r)) > max_length for p, c, r in
              zip(dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"], strict=True))
    if cut:
        logger.warning(f"{cut} of {kept} {name} pairs are longer than --model_max_length {max_length} tokens: their "
                       "answers are cut there.")


# ----------------------------------------------------------------------------- training

def train_dpo(argv: list[str] | None = None) -> None:
    """The recipe: parse flags, check inputs, load the model and its frozen reference, train with DPO, save."""
    from trl import DPOTrainer

    model_args, data_args, training_args, notices = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        level=logging.INFO if training_args.should_log else logging.WARNING)
    for notice in notices if training_args.should_log else []:
        logger.warning(f"legacy flag: {notice}")

    # Inputs and output_dir first: a typo should fail in a second, not after a 7B model (twice) has loaded.
    pairs = load_preferences(data_args.data_path)
    train_pairs, eval_pairs = split_preferences(pairs, data_args, training_args.seed)
    resume = train_setup.resume_checkpoint(training_args)
    train_setup.check_output_dir(training_args.output_dir, resume, training_args.overwrite_output_dir)
    for notice in train_setup.deepspeed_build_notices(training_args) if training_args.should_log else []:
        logger.warning(notice)
    train_setup.join_deepspeed_to_the_process_group(training_args)

    model, tokenizer = train.load_model_and_tokenizer(model_args, training_args)
    peft_config, ref_model = None, None
    if training_args.lora_r > 0:
        peft_config = train.lora_config(model, training_args)  # TRL wraps the model; the reference: adapter off
    else:
        # Loaded as the policy was, so its vocabulary ([PAD] added) and mean-initialised rows are the policy's; TRL
        # would load the checkpoint's original vocabulary, which no longer fits the tokenizer.
        ref_model, _ = train.load_model_and_tokenizer(model_args, training_args)
        ref_model.requires_grad_(False).eval()
    use_cache = model.config.use_cache
    model.config.use_cache = False
    conversations = sum(map(is_conversation, train_pairs))
    kinds = f" ({conversations} with a conversation as prompt)" if conversations else ""
    logger.info(f"{len(train_pairs)} training pairs{kinds}" + (f", {len(eval_pairs)} evaluation pairs" if eval_pairs
                                                                else "")
                + f"; beta {training_args.beta}, reference: "
                + ("the model with its LoRA adapter off" if peft_config else "a frozen copy of the starting model"))

    trainer = DPOTrainer(model=model, ref_model=ref_model, args=training_args,
                         train_dataset=as_dataset(train_pairs, tokenizer),
                         eval_dataset=as_dataset(eval_pairs, tokenizer) if eval_pairs else None,
                         processing_class=tokenizer, peft_config=peft_config)
    check_lengths(trainer, len(train_pairs), training_args.max_length)
    if eval_pairs:
        check_lengths(trainer, len(eval_pairs), training_args.max_length, name="evaluation")
    throughput.add_throughput_callback(trainer, training_args.peak_tflops)
    if training_args.fsdp and not trainer.is_fsdp_enabled and training_args.should_log:
        logger.warning("--fsdp was given, but FSDP is not in use here (it needs GPUs: on a CPU accelerate falls back "
                       "to DDP, and a single process does not shard): every process holds the whole model.")

    trainer.train(resume_from_checkpoint=resume)
    trainer.save_state()
    if eval_pairs:
        metrics = trainer.evaluate()
        metrics["eval_samples"] = len(trainer.eval_dataset)
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    trainer.model.config.use_cache = use_cache
    train.safe_save_model_for_hf_trainer(trainer=trainer, output_dir=training_args.output_dir)
    if training_args.merge_lora and training_args.should_save:
        train.merge_lora_checkpoint(model_args, training_args, training_args.output_dir,
                                    os.path.join(training_args.output_dir, "merged"))
