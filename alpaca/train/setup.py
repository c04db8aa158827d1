"""train.py's command line and the checks it makes before any work; DeepSpeed's set-up on a machine without a GPU.

They live here, not in train.py, so that train.py reads as the recipe top to bottom: its argument dataclasses (the
configuration), model and tokenizer, data, saving, LoRA, train(). Everything here runs before the model loads, and
this module imports torch and transformers only inside the functions that need them: `check_paths_first` reports
a mistyped path within a second, before the ~20 s those imports (and DeepSpeed's) take.
train.py calls these and keeps `train.parse_args(argv)`.
"""

from __future__ import annotations

import argparse
import difflib
import os
import pathlib
import sys
from typing import TYPE_CHECKING

from alpaca import cli, files
from alpaca.errors import MissingPathError, OutputExistsError, UsageError
from alpaca.train.legacy_flags import translate_legacy_flags

if TYPE_CHECKING:
    import transformers

DATA_PATH_REQUIRED = "--data_path is required: a JSON list or JSONL of {instruction, input, output} records."
# What a finished or interrupted run leaves in output_dir (besides *.safetensors and checkpoint-N directories).
TRAINED_MODEL_FILES = ("config.json", "adapter_config.json", "trainer_state.json", "pytorch_model.bin")


# ----------------------------------------------------------------------------- command line and checks

def _argparse_bool(value: str) -> bool:
    """argparse `type=` for the dataclasses' booleans: cli.parse_bool's spellings (`false`, `False`, `0`, ...)."""
    try:
        return cli.parse_bool(value)
    except UsageError:
        raise argparse.ArgumentTypeError(f"takes True or False, not {value!r}") from None


def argument_parser(dataclass_types: tuple[type, ...], prog: str = "python train.py"):
    """An HfArgumentParser for the dataclasses whose mistakes raise cli.UsageError (one `error:` line, not
    argparse's page of usage) and whose booleans are read by cli.parse_bool, as in every other script."""
    import transformers
    from transformers.hf_argparser import string_to_bool

    class ArgumentParser(transformers.HfArgumentParser, cli.ArgumentParser):
        def unknown_flags(self, remaining: list[str]) -> UsageError:
            """The error for arguments no dataclass took, with the closest known flag for each typo."""
            known = [option for action in self._actions for option in action.option_strings]
            flags = [arg.split("=", 1)[0] for arg in remaining if arg.startswith("-")] or remaining
            hints = [f"{flag} (did you mean {match[0]}?)" if (match := difflib.get_close_matches(flag, known, n=1))
                     else flag for flag in flags]
            return UsageError(f"unknown flag {', '.join(hints)}; `{self.prog} --help` lists the flags.")

    parser = ArgumentParser(dataclass_types, prog=prog, allow_abbrev=False)  # `--max_step 5` is not --max_steps
    for action in parser._actions:
        if action.type is string_to_bool:
            action.type = _argparse_bool
    return parser


def parse_args(dataclass_types: tuple[type, type, type], argv: list[str] | None = None,
               prog: str = "python train.py",
               data_description: str = "a JSON list or JSONL of {instruction, input, output} records") -> tuple:
    """The three argument groups (model, data, training: train.py's dataclasses, or train_dpo.py's) from argv (old
    flags translated), and the translation notices. `prog` and `data_description` (what --data_path holds) word the
    errors for the script that parses.

    Every mistake is a UsageError, printed after the notices (a translation may explain it)."""
    argv, notices = translate_legacy_flags(sys.argv[1:] if argv is None else argv)

    def refuse(message: str) -> UsageError:
        if cli.is_main_process():
            print("".join(f"legacy flag: {notice}\n" for notice in notices), end="", file=sys.stderr)
        return UsageError(message)

    from transformers.training_args import ParallelMode

    parser = argument_parser(dataclass_types, prog)
    try:
        model_args, data_args, training_args, remaining = parser.parse_args_into_dataclasses(
            args=argv, return_remaining_strings=True)
    except ValueError as error:  # TrainingArguments.__post_init__ refusing a combination of flags
        raise refuse(str(error)) from None
    if remaining:
        raise refuse(str(parser.unknown_flags(remaining)))
    problems = [
        (data_args.data_path is None, f"--data_path is required: {data_description}."),
        (training_args.lora_r < 0, f"--lora_r must be >= 0 (0 turns LoRA off), got {training_args.lora_r}."),
        (bool(training_args.fsdp) and training_args.parallel_mode != ParallelMode.DISTRIBUTED,
         "--fsdp shards the model across processes: launch with torchrun --nproc_per_node=N (N GPUs)."),
        (training_args.merge_lora and training_args.lora_r == 0,
         "--merge_lora True needs LoRA: pass --lora_r (e.g. 16)."),
        (data_args.val_set_size > 0 and bool(data_args.eval_data_path),
         "give --val_set_size or --eval_data_path, not both: the held-out examples would leave training unused."),
    ]
    for failed, message in problems:
        if failed:
            raise refuse(message)
    return model_args, data_args, training_args, notices


def check_paths(argv: list[str]) -> None:
    """The path mistakes argv alone shows, found without torch or transformers: the data files (--data_path,
    --eval_data_path: missing, unreadable, malformed, as train() checks them), --data_path left out, --output_dir a
    file, and a --model_name_or_path that is no local directory and cannot come from the Hub (offline, unreachable);
    a directory that is there is train()'s to judge (its weights), after the flags.

    Each is the sentence train() would give after those imports; anything else (typos in flag names, values) is left
    to parse_args, which names it."""
    _, flags = cli.split_argv(argv)
    if flags.get("help"):
        return
    data_path = flags.get("data_path")
    if data_path is None and not difflib.get_close_matches("data_path", list(flags), n=1):  # a typo: parse_args
        raise UsageError(DATA_PATH_REQUIRED)
    for path in (data_path, flags.get("eval_data_path")):
        if isinstance(path, str):
            files.load_alpaca_records(path, conversations=True)  # train.py takes conversations too
    if isinstance(flags.get("output_dir"), str):
        _check_output_dir_is_no_file(flags["output_dir"])
    model = flags.get("model_name_or_path")
    if isinstance(model, str) and not os.path.isdir(os.path.expanduser(model)):  # what is there: train() looks
        cache_dir = flags.get("cache_dir")
        files.check_local_weights(model, cache_dir=cache_dir if isinstance(cache_dir, str) else None)


def check_paths_first(argv: list[str] | None = None) -> None:
    """`check_paths` for `python train.py`, before it imports torch: a mistake is reported as every other one is
    (one `error:` line, on rank 0 only under torchrun) and exits, 1 (2 for a flag left out)."""
    cli.check_first(lambda: check_paths(sys.argv[1:] if argv is None else argv))


def resume_checkpoint(training_args: transformers.TrainingArguments) -> str | bool | None:
    """--resume_from_checkpoint as Trainer.train takes it: True (the last checkpoint-N in output_dir), a checkpoint
    directory, or None (`False` included: the flag is a string, and 'False' is not a directory)."""
    value = training_args.resume_from_checkpoint
    try:
        return cli.parse_bool(value) or None
    except UsageError:
        return value or None


def _check_output_dir_is_no_file(output_dir: str) -> None:
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise OutputExistsError(f"--output_dir {output_dir} is a file; give a directory (it is created if missing).")


def check_output_dir(output_dir: str, resume: str | bool | None, overwrite: bool) -> None:
    """Refuse, before any work, to train into a directory that holds a trained model or checkpoints.

    Resuming continues the run that wrote it (--resume_from_checkpoint True, or a checkpoint inside it);
    --overwrite_output_dir True replaces what is there. An empty or absent directory is always fine.
    """
    from transformers.trainer_utils import get_last_checkpoint

    out = pathlib.Path(output_dir)
    _check_output_dir_is_no_file(output_dir)
    if resume is True and (not out.is_dir() or get_last_checkpoint(output_dir) is None):
        raise MissingPathError(f"--resume_from_checkpoint True continues from the last checkpoint-N directory in "
                               f"--output_dir {output_dir}, and there is none; pass a checkpoint directory instead, "
                               "or leave the flag out to start afresh.")
    if overwrite or not out.is_dir():
        return
    if resume is True or (resume and out.resolve() in pathlib.Path(resume).resolve().parents):
        return  # continuing the run that wrote this directory
    trained = sorted(p.name for p in out.iterdir() if p.name in TRAINED_MODEL_FILES or p.suffix == ".safetensors"
                     or (p.is_dir() and p.name.startswith("checkpoint-")))
    if trained:
        raise OutputExistsError(
            f"--output_dir {output_dir} already holds a trained model or checkpoints ({', '.join(trained[:4])}"
            f"{', ...' if len(trained) > 4 else ''}). Pass --resume_from_checkpoint True to continue that run, "
            "--overwrite_output_dir True to replace it, or another --output_dir.")


# ----------------------------------------------------------------------------- DeepSpeed on a CPU

def deepspeed_build_notices(training_args: transformers.TrainingArguments) -> list[str]:
    """One line per DeepSpeed C++ op this run will compile before it trains, which it does silently for minutes:
    CPU Adam for an optimizer offloaded to the CPU, and the shared-memory collectives of DeepSpeed's CPU backend
    when there is no GPU. Each is built once per machine and kept in TORCH_EXTENSIONS_DIR (default
    ~/.cache/torch_extensions); an interrupted build leaves a lock file there that makes later runs wait forever."""
    if not training_args.deepspeed:
        return []
    import torch
    from deepspeed.git_version_info import installed_ops
    from torch.utils.cpp_extension import _get_build_directory

    zero = training_args.hf_deepspeed_config.config.get("zero_optimization", {})
    needed = ["cpu_adam"] if zero.get("offload_optimizer", {}).get("device") == "cpu" else []
    needed += ["deepspeed_shm_comm"] if not torch.cuda.is_available() else []
    notices = []
    for op in needed:
        build_dir = _get_build_directory(op, verbose=False)
        if installed_ops.get(op) or any(name.endswith(".so") for name in os.listdir(build_dir)):
            continue
        notice = f"DeepSpeed compiles its {op} op on this first use: minutes, once; later runs reuse {build_dir}."
        if os.path.exists(os.path.join(build_dir, "lock")):
            notice += (f" A lock file is there: if nothing happens for minutes, an earlier build was interrupted; "
                       f"stop, delete {os.path.join(build_dir, 'lock')} and start again.")
        notices.append(notice)
    return notices


def join_deepspeed_to_the_process_group(training_args: transformers.TrainingArguments) -> None:
    """Under torchrun without a GPU, accelerate starts the gloo process group but leaves DeepSpeed's own
    communication layer unset: DeepSpeed then counts a world of 1 and fails its batch-size check (`train_batch_size
    64 != 4 * 8 * 1`). Hand it the group, as accelerate does on GPUs. A no-op with a GPU or in one process."""
    import torch

    if training_args.deepspeed and training_args.world_size > 1 and not torch.cuda.is_available():
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")
