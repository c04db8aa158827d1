"""Supervised fine-tuning of a causal LM on Alpaca-format data with the Hugging Face Trainer.

LLaMA-7B on 4 GPUs with FSDP, the 2023 recipe in transformers 5's flags:

    torchrun --nproc_per_node=4 --master_port=29500 train.py \
        --model_name_or_path /path/to/llama-7b-hf --data_path ./alpaca_data.json --output_dir output/alpaca \
        --bf16 True --num_train_epochs 3 --per_device_train_batch_size 4 --per_device_eval_batch_size 4 \
        --gradient_accumulation_steps 8 --eval_strategy no --save_strategy steps --save_steps 2000 \
        --save_total_limit 1 --learning_rate 2e-5 --weight_decay 0. --warmup_steps 0.03 --lr_scheduler_type cosine \
        --logging_steps 1 --fsdp --fsdp_config configs/fsdp_llama.json --tf32 True

The 2023 README's command also runs as pasted: legacy_flags.py translates the flags transformers 5 renamed or
dropped, with a notice each. DeepSpeed instead of FSDP: `--deepspeed configs/default_offload_opt_param.json`.
LoRA: `--lora_r 16`. Less padding: `--train_sampling_strategy group_by_length`, or `--padding_free True` with
`--attn_implementation flash_attention_2`. On a CPU: `--use_cpu True` (torchrun then runs DDP over gloo).
"""

import contextlib
import gc
import itertools
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import transformers
from torch.utils.data import Dataset
from tqdm import tqdm
from transformers import DataCollatorWithFlattening, Trainer
from transformers.trainer_pt_utils import LengthGroupedSampler

from alpaca import cli, files
from alpaca.errors import DataError, MissingPathError, UsageError
from alpaca.prompts.alpaca import PROMPT_DICT, format_prompt  # noqa: F401  (PROMPT_DICT: the original's name, re-exported)
from alpaca.train import conversations as train_conversations
from alpaca.train import setup as train_setup
from alpaca.train import throughput

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
DEFAULT_PAD_TOKEN = "[PAD]"
DEFAULT_EOS_TOKEN = "</s>"
DEFAULT_BOS_TOKEN = "<s>"
DEFAULT_UNK_TOKEN = "<unk>"
VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3")  # kernels that attend within each packed sequence


@dataclass
class ModelArguments:
    model_name_or_path: str = field(default="facebook/opt-125m",
                                    metadata={"help": "Base model: a local directory or a Hugging Face Hub id."})
    torch_dtype: str = field(default="float32", metadata={
        "help": "dtype to load the weights in. float32 (the original) keeps fp32 master weights under --bf16 mixed "
                "precision; bfloat16 halves the memory of a frozen LoRA base.",
        "choices": ["float32", "bfloat16", "float16"]})
    attn_implementation: str | None = field(default=None, metadata={
        "help": "Attention kernel: sdpa, eager, flash_attention_2, ... (default: the model's choice)."})
    trust_remote_code: bool = field(default=False, metadata={
        "help": "Allow code shipped with the checkpoint to run. Only for checkpoints you trust."})


@dataclass
class DataArguments:
    data_path: str | None = field(default=None, metadata={
        "help": "Training data: a JSON list or JSONL of {instruction, input, output} records (input may be omitted) "
                "and/or conversations {messages: [system?, user, assistant, user, assistant, ...]}."})
    eval_data_path: str | None = field(default=None, metadata={"help": "Evaluation data, same format."})
    val_set_size: int = field(default=0, metadata={
        "help": "Hold out this many training examples (chosen with --seed) as the evaluation set."})


@dataclass
class TrainingArguments(transformers.TrainingArguments):
    cache_dir: str | None = field(default=None, metadata={"help": "Where to cache models downloaded from the Hub."})
    optim: str = field(default="adamw_torch", metadata={"help": "Optimizer (the original's: adamw_torch)."})
    model_max_length: int = field(default=512, metadata={
        "help": "Maximum sequence length. Sequences are right-padded and possibly truncated."})
    padding_free: bool = field(default=False, metadata={
        "help": "Concatenate each batch into one sequence with position_ids instead of padding. Fast only with a "
                "variable-length attention kernel (--attn_implementation flash_attention_2)."})
    lora_r: int = field(default=0, metadata={"help": "LoRA rank; 0 trains all weights."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input."})
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"], metadata={
        "help": "Module names that get LoRA adapters (space separated), or all-linear."})
    merge_lora: bool = field(default=False, metadata={
        "help": "With --lora_r: also write base + adapter merged into a full checkpoint in output_dir/merged."})
    overwrite_output_dir: bool = field(default=False, metadata={
        "help": "Train into an --output_dir that already holds a trained model or checkpoints, replacing them "
                "(without it such a directory is refused; --resume_from_checkpoint continues the run there)."})
    peak_tflops: float | None = field(default=None, metadata={
        "help": "Peak bf16 TFLOP/s of one device, for the logged MFU (default: a table of common GPUs; none on CPU)."})


# ----------------------------------------------------------------------------- tokenizer and model

def smart_tokenizer_and_embedding_resize(special_tokens_dict: dict, tokenizer, model) -> None:
    """Add `special_tokens_dict` to the tokenizer and resize the model's embeddings to len(tokenizer).

    Each new input and output embedding row is set to the mean of the rows before it, so a new token starts as an
    average token rather than a random one. Note: the vocabulary may grow to a size not divisible by 64.
    """
    num_new_tokens = tokenizer.add_special_tokens(special_tokens_dict)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # the mean is set below, cheaply
    if num_new_tokens > 0:
        for embeddings in (model.get_input_embeddings(), model.get_output_embeddings()):
            if embeddings is None:
                continue
            weight = embeddings.weight.data
            weight[-num_new_tokens:] = weight[:-num_new_tokens].mean(dim=0, keepdim=True)


def missing_special_tokens(tokenizer) -> dict:
    """The special tokens to add: pad, eos, bos, unk when absent or set to the empty string."""
    defaults = {"pad_token": DEFAULT_PAD_TOKEN, "eos_token": DEFAULT_EOS_TOKEN,
                "bos_token": DEFAULT_BOS_TOKEN, "unk_token": DEFAULT_UNK_TOKEN}
    return {name: token for name, token in defaults.items() if not getattr(tokenizer, name)}


def load_model_and_tokenizer(model_args: ModelArguments, training_args: TrainingArguments):
    """The base model and its tokenizer (right padding, model_max_length, special tokens added)."""
    files.check_local_weights(model_args.model_name_or_path, cache_dir=training_args.cache_dir)
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            model_args.model_name_or_path, cache_dir=training_args.cache_dir,
            dtype=getattr(torch, model_args.torch_dtype), attn_implementation=model_args.attn_implementation,
            trust_remote_code=model_args.trust_remote_code, use_safetensors=True)
    except OSError as error:
        if os.path.isdir(model_args.model_name_or_path):
            raise  # a local checkpoint that does not load is not a path mistake: keep the whole story
        raise MissingPathError(f"--model_name_or_path {model_args.model_name_or_path}: no such local directory, and "
                               "it could not be loaded from the Hugging Face Hub either "
                               f"({str(error).splitlines()[0]})") from error
    tokenizer = transformers.AutoTokenizer.from_pretrained(
        model_args.model_name_or_path, cache_dir=training_args.cache_dir, padding_side="right",
        trust_remote_code=model_args.trust_remote_code)
    tokenizer.model_max_length = training_args.model_max_length  # a saved tokenizer may say ~1e30
    tokenizer.padding_side = "right"
    smart_tokenizer_and_embedding_resize(missing_special_tokens(tokenizer), tokenizer, model)
    from alpaca.prompts.alpaca import (
        attach_chat_template,  # the Alpaca prompt as a chat template, saved with the tokenizer
    )

    if attach_chat_template(tokenizer) is None:  # every save (checkpoints, LoRA, merged) is then servable as trained
        logger.warning("No Alpaca chat template reproduces this tokenizer's prompt ids; serve with completions.")
    return model, tokenizer


def save_the_models_length_limit(tokenizer, model) -> None:
    """Set tokenizer.model_max_length, which was --model_max_length for tokenizing the data, to the model's real
    limit (config.max_position_embeddings, e.g. 4096) for every saved copy of the tokenizer.

    Training's length (512) in a checkpoint would make transformers warn "Token indices sequence length is longer
    than the specified maximum ... will result in indexing errors" on every longer prompt at inference, which the
    model reads without trouble: a false alarm. A model whose config names no limit keeps training's."""
    limit = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    if isinstance(limit, int) and limit > 0:
        tokenizer.model_max_length = limit


# ----------------------------------------------------------------------------- data

def format_examples(examples: Sequence[dict], tokenizer) -> tuple[list[str], list[str]]:
    """(prompts, targets): the Alpaca template filled with each example, and output + eos."""
    sources = [format_prompt(example["instruction"], example.get("input")) for example in examples]
    targets = [f"{example['output']}{tokenizer.eos_token}" for example in examples]
    return sources, targets


def _tokenize_fn(strings: Sequence[str], tokenizer, chunk_size: int = 4096) -> dict:
    """Token ids of each string on its own (truncated to model_max_length, no padding), end to end in one array.

    Returns dict(ids: int64 [total_tokens], lengths: int64 [n_strings], input_ids_lens: int64 [n_strings], the
    non-pad tokens of each string, pad_positions).

    Public API only. A fast tokenizer's own call, `tokenizer(chunk)`, asks Rust for character offsets and builds a
    Python dict per string, and takes about twice as long as the Rust tokenizer's `encode_batch_fast` (its public,
    documented batch call without offsets; `backend_tokenizer` is the tokenizer's public handle on it). So each chunk
    goes through the tokenizer's own call once, for its longest string: that call sets truncation and special
    tokens in the backend exactly as for a call on the whole chunk, and gives the ids to check the backend's against;
    any difference sends the chunk through the tokenizer's own call instead.
    """
    ids = []
    chunks = range(0, len(strings), chunk_size)
    for start in tqdm(chunks, desc="Tokenizing", unit="chunk", disable=len(chunks) < 4, leave=False):
        chunk = list(strings[start:start + chunk_size])
        if not tokenizer.is_fast:
            ids.extend(_tokenize(chunk, tokenizer))
            continue
        probe = max(range(len(chunk)), key=lambda i: len(chunk[i]))
        expected = _tokenize(chunk[probe:probe + 1], tokenizer)[0]
        fast = [encoding.ids for encoding in tokenizer.backend_tokenizer.encode_batch_fast(chunk)]
        if fast[probe] != expected:  # not foreseen: the backend was not configured as the call configures it
            logger.warning("The Rust tokenizer's batch call disagrees with the tokenizer's own; using the latter.")
            fast = _tokenize(chunk, tokenizer)
        ids.extend(fast)
    if tokenizer.is_fast:  # the calls above left truncation on in the backend, and save_pretrained would write it
        tokenizer.backend_tokenizer.no_truncation()
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(lengths.sum()))
    tokenized = dict(ids=flat, lengths=lengths, pad_positions=np.flatnonzero(flat == tokenizer.pad_token_id))
    ends = np.cumsum(lengths)
    tokenized["input_ids_lens"] = lengths - _pads_in(tokenized, ends - lengths, ends)
    return tokenized


def _tokenize(strings: list[str], tokenizer) -> list[list[int]]:
    """The tokenizer's own call: ids of each string, truncated to model_max_length, special tokens added."""
    return tokenizer(strings, max_length=tokenizer.model_max_length, truncation=True,
                     return_attention_mask=False)["input_ids"]


def _pads_in(tokenized: dict, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Pad tokens among tokenized["ids"][starts[i]:ends[i]], for each i (pads are rare: a search, not a scan)."""
    pad_positions = tokenized["pad_positions"]
    return np.searchsorted(pad_positions, ends) - np.searchsorted(pad_positions, starts)


@contextlib.contextmanager
def _garbage_collection_paused():
    """Tokenizing creates millions of objects and no reference cycle; each few hundred of them would start a
    collection that walks every live object and finds nothing to free (about 1 s of 10 on 52K examples)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@_garbage_collection_paused()
def preprocess(sources: Sequence[str], targets: Sequence[str], tokenizer) -> dict:
    """Tokenize prompt + target and mask the prompt: dict(input_ids, labels), lists of 1-D LongTensors [seq_len].

    Each full text and each prompt is tokenized on its own and truncated to model_max_length; the labels are the
    input ids with the first n positions set to IGNORE_INDEX, n being the number of non-pad tokens of the prompt.

    Two batched tokenizer calls, the full texts and the prompts, through the public API only. Why not fewer: for
    SentencePiece BPE the prompt's tokens can be read off the full text's (a greedy merge never crosses a boundary
    the full text has), which saves the second call, but telling such tokenizers apart and counting what each token
    spells meant parsing the serialized tokenizer (backend_tokenizer.to_str(): ~80 lines over internals a library
    upgrade may change, for one family out of three). Measured on 52K examples (bench/bench_train.py, 2 cores at
    load 3.5-6): the two calls took 1.2-1.5x the tokenizer's own batched call over the full texts and 1.8-2.0x the
    Rust batch call without offsets over them (the floor), against 0.9-1.4x for the read-off; the original's
    one-by-one loop took 7-13x that floor.
    """
    full = _tokenize_fn([s + t for s, t in zip(sources, targets, strict=True)], tokenizer)
    ids, lengths = full["ids"], full["lengths"]
    source_lens = _tokenize_fn(sources, tokenizer)["input_ids_lens"]
    logger.info(f"Tokenized {len(sources)} examples")
    # Labels for the whole set at once (position within its example < prompt length: masked), then one tensor per
    # example as a view of one big tensor: far cheaper than a tensor, or a masking step, per example.
    starts = np.cumsum(lengths) - lengths
    position = np.arange(len(ids)) - np.repeat(starts, lengths)
    labels = np.where(position < np.repeat(source_lens, lengths), IGNORE_INDEX, ids)
    sizes = lengths.tolist()
    input_ids, labels = list(torch.from_numpy(ids).split(sizes)), list(torch.from_numpy(labels).split(sizes))
    return dict(input_ids=input_ids, labels=labels)


class SupervisedDataset(Dataset):
    """Alpaca examples, tokenized once. `lengths` (tokens per example) feeds the length-grouped sampler."""

    def __init__(self, data_path: str | Sequence[dict], tokenizer):
        super().__init__()
        examples = files.load_alpaca_records(data_path, conversations=True) if isinstance(data_path, str) else data_path
        data_dict = train_conversations.tokenize_records(  # `messages` records through the chat template
            examples, tokenizer, lambda part: preprocess(*format_examples(part, tokenizer), tokenizer), IGNORE_INDEX)
        # The prompt is masked from the start, so an example has a response token to learn from iff its last label
        # is one (one look per example, not a comparison of every label).
        keep = [i for i, labels in enumerate(data_dict["labels"]) if labels[-1].item() != IGNORE_INDEX]
        if len(keep) < len(examples):
            logger.warning(f"Dropped {len(examples) - len(keep)} of {len(examples)} examples whose prompt fills "
                           f"model_max_length={tokenizer.model_max_length}: no response token is left to learn from.")
        if not keep:
            raise DataError(f"Every example's prompt fills --model_max_length {tokenizer.model_max_length}: no "
                            "response token is left to learn from; raise --model_max_length.")
        self.input_ids = [data_dict["input_ids"][i] for i in keep]
        self.labels = [data_dict["labels"][i] for i in keep]
        self.lengths = [len(ids) for ids in self.input_ids]

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i) -> dict[str, torch.Tensor]:
        return dict(input_ids=self.input_ids[i], labels=self.labels[i])


@dataclass
class DataCollatorForSupervisedDataset:
    """Right-pads a batch: input_ids with the pad id, labels with IGNORE_INDEX; attention_mask = input_ids != pad."""

    tokenizer: transformers.PreTrainedTokenizerBase

    def __call__(self, instances: Sequence[dict]) -> dict[str, torch.Tensor]:
        input_ids = [instance["input_ids"] for instance in instances]
        labels = [instance["labels"] for instance in instances]
        input_ids = torch.nn.utils.rnn.pad_sequence(input_ids, batch_first=True,
                                                    padding_value=self.tokenizer.pad_token_id)
        labels = torch.nn.utils.rnn.pad_sequence(labels, batch_first=True, padding_value=IGNORE_INDEX)
        return dict(input_ids=input_ids, labels=labels, attention_mask=input_ids.ne(self.tokenizer.pad_token_id))


def make_supervised_data_module(tokenizer, data_args: DataArguments, seed: int = 42, padding_free: bool = False,
                                varlen_attention: bool = False) -> dict:
    """Datasets and collator for the Trainer: dict(train_dataset, eval_dataset, data_collator).

    Padding-free batches are one row [1, total_tokens] with position_ids restarting at 0 for each example and the
    first label of each example masked, so no token learns from the previous example.
    """
    examples = files.load_alpaca_records(data_args.data_path, conversations=True)
    eval_dataset = None
    if data_args.val_set_size > 0:
        if data_args.val_set_size >= len(examples):
            raise UsageError(f"--val_set_size {data_args.val_set_size} leaves no training data: "
                             f"{data_args.data_path} has {len(examples)} examples.")
        order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed)).tolist()
        eval_dataset = SupervisedDataset([examples[i] for i in order[:data_args.val_set_size]], tokenizer)
        examples = [examples[i] for i in sorted(order[data_args.val_set_size:])]
    if data_args.eval_data_path:
        eval_dataset = SupervisedDataset(data_args.eval_data_path, tokenizer)
    train_dataset = SupervisedDataset(examples, tokenizer)
    if padding_free:
        data_collator = DataCollatorWithFlattening(return_flash_attn_kwargs=varlen_attention)
    else:
        data_collator = DataCollatorForSupervisedDataset(tokenizer=tokenizer)
    return dict(train_dataset=train_dataset, eval_dataset=eval_dataset, data_collator=data_collator)


class SupervisedTrainer(Trainer):
    """The Trainer, with the length-grouped sampler reading the lengths measured at tokenization time."""

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy == "group_by_length" and hasattr(dataset, "lengths"):
            return LengthGroupedSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                        lengths=dataset.lengths)
        return super()._get_train_sampler(train_dataset)


# ----------------------------------------------------------------------------- saving

def gather_full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The full state dict of an FSDP2-sharded model (parameters are DTensors), on the CPU of rank 0.

    Every rank must call it: it all-gathers one tensor at a time, moves it to the CPU of rank 0 and frees it, so rank
    0 ends with one full copy in CPU memory, the other ranks with {}, and no GPU ever holds more than one unsharded
    tensor beyond its shard. (The original called model.state_dict() and copied it: a full copy on every GPU.)
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def safe_save_model_for_hf_trainer(trainer: Trainer, output_dir: str) -> None:
    """Write an ordinary checkpoint (safetensors, config, tokenizer) to output_dir, whatever the model is wrapped in.

    FSDP2 (transformers 5's FSDP): the full state dict is gathered to the CPU of rank 0 and written there, whatever
    fsdp_config's state_dict_type says. DeepSpeed ZeRO-3 gathers the 16-bit weights on rank 0 (needs
    stage3_gather_16bit_weights_on_model_save, set in configs/); DDP and single processes save rank 0's copy.
    """
    from torch.distributed.fsdp import FSDPModule

    if isinstance(trainer.model_wrapped, FSDPModule) or isinstance(trainer.model, FSDPModule):
        state_dict = gather_full_state_dict(trainer.model)
        if trainer.args.should_save:
            trainer._save(output_dir, state_dict=state_dict)
    else:
        trainer.save_model(output_dir)
    if trainer.args.distributed_state is not None:
        trainer.args.distributed_state.wait_for_everyone()


# ----------------------------------------------------------------------------- LoRA

def add_lora(model, training_args: TrainingArguments):
    """Wrap the model with LoRA adapters; only they train."""
    from peft import get_peft_model

    model = get_peft_model(model, lora_config(model, training_args))
    if training_args.gradient_checkpointing:
        model.enable_input_require_grads()  # checkpointed blocks need an input that requires grad
    model.print_trainable_parameters()
    return model


def lora_config(model, training_args: TrainingArguments):
    """The peft LoraConfig of --lora_r, --lora_alpha, --lora_dropout, --lora_target_modules (train_dpo.py hands it
    to TRL, which wraps the model itself); warns about target modules the model lacks."""
    from peft import LoraConfig

    target_modules = training_args.lora_target_modules
    if target_modules != ["all-linear"]:
        names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
        missing = [target for target in target_modules if target not in names]
        if missing:  # peft only fails when none match; a partial match would silently train fewer layers
            linear = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                             if isinstance(module, torch.nn.Linear)})
            logger.warning(f"--lora_target_modules {' '.join(missing)}: no such module in this model, so no adapter "
                           f"there. Its linear layers are: {' '.join(linear)} (or pass all-linear).")
    return LoraConfig(r=training_args.lora_r, lora_alpha=training_args.lora_alpha,
                      lora_dropout=training_args.lora_dropout, task_type="CAUSAL_LM",
                      target_modules="all-linear" if target_modules == ["all-linear"] else target_modules)


def merge_lora_checkpoint(model_args: ModelArguments, training_args: TrainingArguments, adapter_dir: str,
                          merged_dir: str) -> None:
    """Base model (resized exactly as in training) + adapter, merged and written as a full checkpoint, on the CPU."""
    from peft import PeftModel

    model, tokenizer = load_model_and_tokenizer(model_args, training_args)
    model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    save_the_models_length_limit(tokenizer, model)
    model.save_pretrained(merged_dir, safe_serialization=True)
    tokenizer.save_pretrained(merged_dir)
    logger.info(f"Merged LoRA checkpoint written to {merged_dir}")


# ----------------------------------------------------------------------------- training

def parse_args(argv: list[str] | None = None) -> tuple[ModelArguments, DataArguments, TrainingArguments, list[str]]:
    """The three argument groups from argv (old flags translated), and the translation notices; every mistake is a
    errors.UsageError (train_setup.parse_args)."""
    return train_setup.parse_args((ModelArguments, DataArguments, TrainingArguments), argv)


def train(argv: list[str] | None = None) -> None:
    """The recipe: parse flags, load model and tokenizer, tokenize the data once, train, save to output_dir."""
    model_args, data_args, training_args, notices = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        level=logging.INFO if training_args.should_log else logging.WARNING)
    for notice in notices if training_args.should_log else []:
        logger.warning(f"legacy flag: {notice}")

    # Check the data files and output_dir first: a typo should fail in a second, not after a 7B model has loaded.
    for path in filter(None, (data_args.data_path, data_args.eval_data_path)):
        files.load_alpaca_records(path, conversations=True)
    resume = train_setup.resume_checkpoint(training_args)
    train_setup.check_output_dir(training_args.output_dir, resume, training_args.overwrite_output_dir)
    for notice in train_setup.deepspeed_build_notices(training_args) if training_args.should_log else []:
        logger.warning(notice)  # minutes of silence otherwise
    train_setup.join_deepspeed_to_the_process_group(training_args)
    model, tokenizer = load_model_and_tokenizer(model_args, training_args)
    attention = model.config._attn_implementation
    if training_args.padding_free and attention not in VARLEN_ATTENTION and training_args.should_log:
        logger.warning(f"--padding_free True with {attention} attention: no variable-length kernel, so transformers "
                       "masks the whole flattened batch with a dense block mask, whose cost grows with the square of "
                       "the batch's tokens (on CPU: up to 3x slower than padded batches at batch size 8). The fast "
                       "path is --attn_implementation flash_attention_2 on a GPU.")
    if training_args.lora_r > 0:
        model = add_lora(model, training_args)
    use_cache = model.config.use_cache
    model.config.use_cache = False  # a cache in training is wasted memory, and leaks across packed sequences

    data_module = make_supervised_data_module(tokenizer, data_args, seed=training_args.seed,
                                              padding_free=training_args.padding_free,
                                              varlen_attention=attention in VARLEN_ATTENTION)
    logger.info(f"{len(data_module['train_dataset'])} training examples"
                + (f", {len(data_module['eval_dataset'])} evaluation examples" if data_module["eval_dataset"] else ""))
    save_the_models_length_limit(tokenizer, model)  # the data is tokenized: checkpoints get the model's real limit
    trainer = SupervisedTrainer(model=model, processing_class=tokenizer, args=training_args, **data_module)
    throughput.add_throughput_callback(trainer, training_args.peak_tflops)  # tokens/s and MFU in every log line
    if training_args.fsdp and not trainer.is_fsdp_enabled and training_args.should_log:
        logger.warning("--fsdp was given, but FSDP is not in use here (it needs GPUs: on a CPU accelerate falls back "
                       "to DDP, and a single process does not shard): every process holds the whole model.")

    try:
        trainer.train(resume_from_checkpoint=resume)
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (kill, SLURM's time limit): cli.report_errors turns it into this
        if cli.is_main_process():
            print(file=sys.stderr)  # off the progress bar's line
        raise TrainingInterrupted(interrupted_message(training_args.output_dir, trainer.state.global_step)) from None
    trainer.save_state()
    if data_module["eval_dataset"] is not None:
        metrics = trainer.evaluate()
        metrics["eval_samples"] = len(data_module["eval_dataset"])
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    model.config.use_cache = use_cache
    safe_save_model_for_hf_trainer(trainer=trainer, output_dir=training_args.output_dir)
    if training_args.merge_lora and training_args.should_save:
        merge_lora_checkpoint(model_args, training_args, training_args.output_dir,
                              os.path.join(training_args.output_dir, "merged"))


class TrainingInterrupted(cli.UserError):
    """Ctrl-C or SIGTERM during training: the sentence says what was saved and how to go on. Exit 130, as for any
    interrupted command."""

    exit_code = 130


def interrupted_message(output_dir: str, step: int) -> str:
    """What an interrupted run left in output_dir, and the flag that continues it."""
    from transformers.trainer_utils import get_last_checkpoint

    last = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
    if last is None:
        return (f"training interrupted at step {step}, before its first checkpoint: nothing was saved in {output_dir}. "
                "Run the same command again to start afresh (--save_steps sets how often a checkpoint is written).")
    return (f"training interrupted at step {step}; the last checkpoint is {last}. Continue from it with the same "
            "command and --resume_from_checkpoint True.")


def entry_point() -> None:
    """The command line of `python train.py`."""
    cli.report_errors(train, "interrupted before or after the training steps (loading, tokenizing, the final save): "
                             "checkpoints written so far, if any, are in --output_dir; --resume_from_checkpoint True "
                             "continues from the last one.")
