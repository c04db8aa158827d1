"""Publish a fine-tuned model as a weight diff against its base model, and recover it bit for bit.

    python weight_diff.py make_diff --path_raw RAW --path_tuned TUNED --path_diff DIFF
    python weight_diff.py recover --path_raw RAW --path_diff DIFF --path_tuned RECOVERED

`make_diff` writes DIFF: one diff tensor per tuned tensor, the tuned config and tokenizer, and
`weight_diff_manifest.json` (SHA-256, dtype and shape of every tuned tensor). `recover` rebuilds the
tuned model from RAW + DIFF, checks every tensor against the manifest and stops at the first bad one.
The raw input and output embeddings are first resized as train.py resized them: rows for the tokens
training added (`[PAD]` when the raw tokenizer has no pad token, ...) hold the mean of the old rows,
spare rows are dropped.

Both stream one block of rows at a time straight from the safetensors files (single-file or sharded)
with numpy, so they never hold a whole model, and they import neither torch nor transformers (together
~350 MiB before any weight is read): the peak memory is a few tens of MiB whatever the model's size.
Only `test_inference` loads the recovered model. Output goes to a temporary directory that is renamed
into place only when everything has been written and checked.

A diff made by the original 2023 code (float32 tuned minus raw, no manifest, as published for
Alpaca-7B) is recovered the way that code did it: raw and diff added in float32.
"""

import contextlib
import functools
import hashlib
import json
import math
import os
import pathlib
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable
from typing import NamedTuple

import fire
import numpy as np
from tqdm import tqdm

from safetensors_stream import (
    FLOATS,
    STORAGE,
    TensorSpec,
    bits,
    checkpoint_tensors,
    from_float32,
    itemsize,
    parse_size,
    plan_shards,
    read_rows,
    row_chunks,
    shard_file_names,
    to_float32,
    write_header,
    write_index,
)

MANIFEST_NAME = "weight_diff_manifest.json"
FORMAT_NAME = "alpaca-weight-diff"
FORMAT_VERSION = 1
DEFAULT_PAD_TOKEN = "[PAD]"  # train.DEFAULT_PAD_TOKEN (importing train.py would import torch and transformers)
ALPACA_7B_NAIVE_SUM = 50637.1836  # sum of all Alpaca-7B weights: the original's only integrity check
INFERENCE_INSTRUCTION = "List three technologies that make life easier."
CONFIG_FILES = ("config.json", "generation_config.json")
SPECIAL_TOKEN_ROLES = ("pad_token", "eos_token", "bos_token", "unk_token")  # those train.py adds when missing
# Input and output embeddings (LLaMA, GPT-NeoX, GPT-2, BLOOM, ...): the tensors a vocabulary resize changes.
EMBEDDING_NAME = re.compile(r"(^|\.)(embed_tokens|embed_in|embed_out|wte|word_embeddings|lm_head|output)\.weight$")
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "merges.txt", "vocab.txt", "chat_template.jinja", "chat_template.json",
)

# The names the manifest uses (PyTorch's), as in `str(torch.bfloat16)` without "torch.".
MANIFEST_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
}
FROM_MANIFEST_DTYPE = {name: dtype for dtype, name in MANIFEST_DTYPES.items()}
# The diff of a tensor is the XOR of the tuned and raw bit patterns, stored as integers of the same width
# (types PyTorch has always had, so that a diff loads anywhere).
DIFF_DTYPES = {1: "U8", 2: "I16", 4: "I32", 8: "I64"}

# Why XOR: `tuned == raw ^ (tuned ^ raw)` holds for every bit pattern (NaN payloads, inf, -0.0,
# subnormals, any exponent gap), in the tuned dtype. Arithmetic diffs are not exact: `(tuned - raw) + raw`
# rounds twice, a wider dtype does not help in general (the exact difference of two float32 numbers can
# need ~280 bits when their exponents are far apart) and inf - inf is NaN. XOR keeps the diff as small as
# the tuned weights, zero wherever a weight did not change, and with zero high bits wherever it changed a
# little (same sign and exponent), which compresses well.


class RawSource(NamedTuple):
    """How to build the raw operand of one output tensor: rows [0, kept_rows) of `spec`, then copies of
    `appended_row` (the mean of the kept rows, float32) for the tokens the pad-token resize added."""

    spec: TensorSpec
    name: str
    kept_rows: int
    appended_row: np.ndarray | None


# ----------------------------------------------------------------------------- the mean of embedding rows

def cascade_column_sums(row_blocks: Iterable[np.ndarray], rows: int, width: int) -> np.ndarray:
    """Column sums of a [rows, width] float32 matrix fed as blocks of rows, added in the order of PyTorch's CPU
    sum over dim 0: four levels of float32 accumulators; every 2**power rows the first level is added into the
    next (and carried further when a higher block boundary is crossed), with power = max(4, ceil(log2 rows) / 4).
    For widths that are a multiple of 64 this equals `torch.sum(dim=0)` bit for bit on any number of threads."""
    levels, power = 4, max(4, (rows - 1).bit_length() // 4)
    step = 1 << power
    cascaded_rows = rows - rows % step  # rows after the last whole step go into the first level only
    accumulators = np.zeros((levels, width), np.float32)
    done = 0
    for block in row_blocks:
        for row in block.reshape(-1, width):
            accumulators[0] += row
            done += 1
            if done % step == 0 and done <= cascaded_rows:
                for level in range(1, levels):
                    accumulators[level] += accumulators[level - 1]
                    accumulators[level - 1] = 0
                    if done & ((step - 1) << (level * power)):
                        break
    return accumulators[0] + accumulators[1] + accumulators[2] + accumulators[3]


def mean_of_rows(spec: TensorSpec, rows: int) -> np.ndarray:
    """The float32 mean of rows [0, rows), shape [1, *row shape], equal bit for bit to what train.py's
    smart_tokenizer_and_embedding_resize computes on the float32 model (`weight[:rows].mean(dim=0)`, which
    PyTorch evaluates as a sum, then a division), read block by block: no full copy of the matrix."""
    width = math.prod(spec.shape[1:])
    blocks = (to_float32(read_rows(spec, start, stop), spec.dtype)
              for start, stop in row_chunks((rows, *spec.shape[1:])))
    if width % 64 == 0:  # every embedding width in practice
        total = cascade_column_sums(blocks, rows, width)
    else:  # PyTorch sums the last columns of such widths in an order that depends on the CPU's vector width
        import torch

        total = torch.from_numpy(np.concatenate(list(blocks)).reshape(rows, width)).sum(dim=0).numpy()
    return (total / np.float32(rows)).reshape(1, *spec.shape[1:])


# ----------------------------------------------------------------------------- output directories

def check_model_files(source: pathlib.Path) -> None:
    """The config and tokenizer that will be copied must be there: checked before the work, not after it."""
    if not (source / "config.json").exists():
        raise FileNotFoundError(f"{source} has no config.json; it must be a Hugging Face model directory.")
    if not any((source / name).exists() for name in TOKENIZER_FILES):
        raise FileNotFoundError(f"{source} has no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...); copy the "
                                "tokenizer of the fine-tuned model into it.")


def copy_model_files(source: pathlib.Path, destination: pathlib.Path) -> None:
    """Copy the config and tokenizer files (not the weights), as the original saved the tuned ones."""
    for name in CONFIG_FILES + TOKENIZER_FILES:
        if (source / name).exists():
            shutil.copy2(source / name, destination / name)


def check_output_free(final_dir: pathlib.Path | None) -> None:
    if final_dir is not None and final_dir.exists():
        raise FileExistsError(f"{final_dir} already exists; remove it or choose another output path.")


@contextlib.contextmanager
def staged_output(final_dir: pathlib.Path | None):
    """Yield a temporary directory next to final_dir; rename it into place only if the block succeeds.
    With final_dir None the directory is scratch space, removed at the end either way."""
    check_output_free(final_dir)
    parent = final_dir.parent if final_dir is not None else None
    created = [] if parent is None else [d for d in (parent, *parent.parents) if not d.exists()]
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.partial-" if final_dir else "recover-",
                                            dir=parent))
    try:
        yield staging
        if final_dir is not None:
            staging.rename(final_dir)  # same filesystem: atomic, so no reader ever sees half a model
    finally:
        if staging.exists():
            shutil.rmtree(staging)
            for directory in created:  # parents made for the output, innermost first: a failure leaves none
                with contextlib.suppress(OSError):
                    directory.rmdir()


# ----------------------------------------------------------------------------- the raw operand

def read_json(path: pathlib.Path) -> dict:
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist.")
    return json.loads(path.read_text())


def declared_special_tokens(model_dir: pathlib.Path) -> dict[str, str | None]:
    """The pad, eos, bos and unk tokens as a tokenizer's saved files declare them (tokenizer_config.json, then
    special_tokens_map.json); None where neither sets one, or sets the empty string (which train.py also counts
    as missing). Read from the files rather than by loading the tokenizer, which would import transformers and
    torch: more memory than the whole diff needs."""
    declared = [model_dir / name for name in ("tokenizer_config.json", "special_tokens_map.json")]
    if not any(path.exists() for path in declared) and not any((model_dir / n).exists() for n in TOKENIZER_FILES):
        raise FileNotFoundError(f"{model_dir} has no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...); "
                                "the model directory must hold its tokenizer.")
    tokens = dict.fromkeys(SPECIAL_TOKEN_ROLES)
    for path in reversed(declared):  # tokenizer_config.json wins
        for role, token in (read_json(path) if path.exists() else {}).items():
            token = token.get("content") if isinstance(token, dict) else token
            if role in tokens and isinstance(token, str) and token:
                tokens[role] = token
    return tokens


def added_token_ids(model_dir: pathlib.Path) -> dict[str, int]:
    """Content -> id of the tokens a tokenizer's files list as added to its base vocabulary (tokenizer.json's
    added_tokens, tokenizer_config.json's added_tokens_decoder, added_tokens.json)."""
    ids = {}
    if (model_dir / "tokenizer.json").exists():
        ids.update({t["content"]: t["id"] for t in read_json(model_dir / "tokenizer.json").get("added_tokens", [])})
    if (model_dir / "tokenizer_config.json").exists():
        decoder = read_json(model_dir / "tokenizer_config.json").get("added_tokens_decoder", {})
        ids.update({t["content"]: int(i) for i, t in decoder.items() if isinstance(t, dict) and "content" in t})
    if (model_dir / "added_tokens.json").exists():
        ids.update(read_json(model_dir / "added_tokens.json"))
    return ids


def pad_token_resize(path_raw: pathlib.Path, raw_config: dict, tuned_dir: pathlib.Path,
                     tuned_vocab_size: int | None) -> tuple[int, int | None]:
    """(tokens training appended to the raw vocabulary, vocabulary size after) for a model tuned from this raw one.

    train.py, like the original, adds each of [PAD], </s>, <s>, <unk> whose role the raw tokenizer leaves empty
    (only the ones not already in the vocabulary count) and resizes the embeddings to len(tokenizer), which
    also drops spare rows (OPT, Qwen). The tokens added take the highest ids: they are the tuned tokenizer's
    tokens for those roles whose ids end its vocabulary. And every row beyond the raw embeddings is a token
    added in training, however it was added (a chat template's tokens, tokenizer files that do not say).
    """
    if not isinstance(tuned_vocab_size, int):
        return 0, tuned_vocab_size
    missing = [role for role, token in declared_special_tokens(path_raw).items() if token is None]
    tuned_tokens, ids = declared_special_tokens(tuned_dir), added_token_ids(tuned_dir)
    new_ids = sorted({ids[tuned_tokens[role]] for role in missing if tuned_tokens[role] in ids}, reverse=True)
    added = 0
    while added < len(new_ids) and new_ids[added] == tuned_vocab_size - 1 - added:
        added += 1
    raw_rows = raw_config.get("vocab_size")
    if isinstance(raw_rows, int):  # rows beyond the raw embeddings can only be tokens added in training
        added = max(added, tuned_vocab_size - raw_rows)
    return added, tuned_vocab_size


def match_raw_tensors(
    raw_specs: dict[str, TensorSpec], targets: dict[str, tuple[str, tuple[int, ...]]],
    raw_config: dict, added_tokens: int, vocab_size: int, path_raw: pathlib.Path, skip_missing=lambda name: False,
) -> dict[str, RawSource]:
    """For every target tensor (name -> dtype, shape), the raw tensor it is diffed against, after the resize
    training did: raw [V, ...] embeddings become [vocab_size, ...], their first vocab_size - added_tokens rows
    kept and the last `added_tokens` rows set to the mean of those. A tied raw model has no output embedding in
    its file: its input embedding serves. Raises ValueError naming the first tensor that does not match."""
    raw_rows = raw_config.get("vocab_size")
    resizing = isinstance(vocab_size, int) and (added_tokens > 0 or vocab_size != raw_rows)
    kept_rows = vocab_size - added_tokens if resizing else raw_rows
    if resizing and (raw_rows is None or kept_rows > raw_rows):
        raise ValueError(f"{path_raw}: the raw embeddings have {raw_rows} rows, but the tuned model's vocabulary has "
                         f"{vocab_size} tokens, {added_tokens} of them added in training: the tuned model was not "
                         "trained from this raw model.")
    embeddings = [name for name, spec in raw_specs.items()
                  if len(spec.shape) == 2 and spec.shape[0] == raw_rows and EMBEDDING_NAME.search(name)]
    tied = raw_config.get("tie_word_embeddings", False) and len(embeddings) == 1
    sources, means, used = {}, {}, set()
    for name, (dtype, shape) in targets.items():
        raw_name = name
        if name not in raw_specs:
            if tied and len(shape) == 2 and shape[0] in (raw_rows, vocab_size) and name not in embeddings:
                raw_name = embeddings[0]  # the tied output embedding shares the input embedding's weights
            elif skip_missing(name):
                continue
            else:
                raise ValueError(f"Tensor {name!r} is in the tuned model but not in the raw model {path_raw}: "
                                 "is it the base model this diff belongs to?")
        spec = raw_specs[raw_name]
        resized = resizing and raw_name in embeddings
        expected = (vocab_size, *spec.shape[1:]) if resized else spec.shape
        if tuple(shape) != tuple(expected):
            raise ValueError(f"Tensor {name!r} has shape {list(shape)} in the tuned model but the raw model "
                             f"{path_raw} gives {list(expected)}" + (" after the resize" if resized else "")
                             + ": these are not the same architecture.")
        if (spec.dtype in FLOATS) != (dtype in FLOATS) or (dtype not in FLOATS and spec.dtype != dtype):
            raise ValueError(f"Tensor {name!r} is {MANIFEST_DTYPES[dtype]} in the tuned model but "
                             f"{MANIFEST_DTYPES[spec.dtype]} in {path_raw}.")
        if resized and added_tokens and raw_name not in means:
            means[raw_name] = mean_of_rows(spec, kept_rows)
        rows = kept_rows if resized else (shape[0] if shape else 0)
        sources[name] = RawSource(spec, raw_name, rows, means.get(raw_name) if resized else None)
        used.add(raw_name)
    unused = sorted(set(raw_specs) - used - set(embeddings))
    if unused:
        raise ValueError(f"The raw model {path_raw} has tensors the tuned model lacks, e.g. {unused[:3]}: "
                         "is it the base model this diff belongs to?")
    return sources


def raw_operand(source: RawSource, start: int | None, stop: int | None, dtype: str) -> np.ndarray:
    """Rows [start, stop) of the resized raw tensor, flattened, in `dtype`'s storage type. Floating-point raw
    weights pass through float32, as the original loaded them, so that the raw operand is the same whatever
    dtype the raw files hold."""
    spec = source.spec
    if start is None:
        parts = [read_rows(spec)]
    else:
        parts = []
        if start < source.kept_rows:
            parts.append(read_rows(spec, start, min(stop, source.kept_rows)))
        if stop > source.kept_rows:
            count = stop - max(start, source.kept_rows)
            parts.append(np.tile(source.appended_row.reshape(-1), count))  # already float32
    if dtype not in FLOATS:
        return parts[0]
    parts = [part if part.dtype == np.float32 else to_float32(part, spec.dtype) for part in parts]
    return from_float32(np.concatenate(parts) if len(parts) > 1 else parts[0], dtype)


# ----------------------------------------------------------------------------- make_diff / recover

def make_diff(path_raw: str, path_tuned: str, path_diff: str, device: str = "cpu",
              max_shard_size: int | str = "2GB") -> pathlib.Path:
    """Write the diff that turns the raw model into the tuned one, with its manifest, config and tokenizer.

    Every tuned tensor `t` (any shape, float32/bfloat16/float16 or other) is stored as the XOR of its bits with
    the raw operand `r` (the raw tensor resized for [PAD] and cast to t's dtype), same shape, as an integer
    tensor of the same width: recover computes `t = r ^ diff` exactly. The XOR is a memory-bound byte
    operation that runs on the CPU; `device` is accepted for the original's command line. Returns the diff
    directory.
    """
    started = time.time()
    path_raw, path_tuned, path_diff = (pathlib.Path(str(path)) for path in (path_raw, path_tuned, path_diff))
    check_device(device)
    check_output_free(path_diff)
    check_model_files(path_tuned)
    tuned_specs = checkpoint_tensors(path_tuned)
    raw_specs = checkpoint_tensors(path_raw)
    raw_config = read_json(path_raw / "config.json")
    added_tokens, vocab_size = pad_token_resize(path_raw, raw_config, path_tuned,
                                                read_json(path_tuned / "config.json").get("vocab_size"))
    targets = {name: (spec.dtype, spec.shape) for name, spec in sorted(tuned_specs.items())}
    sources = match_raw_tensors(raw_specs, targets, raw_config, added_tokens, vocab_size, path_raw)

    outputs = [(name, DIFF_DTYPES[itemsize(dtype)], shape) for name, (dtype, shape) in targets.items()]
    shards = plan_shards(outputs, parse_size(max_shard_size))
    file_names = shard_file_names(len(shards))
    entries = {}
    with staged_output(path_diff) as staging, tqdm_bytes(outputs, "make_diff") as progress:
        for shard, file_name in zip(shards, file_names, strict=True):
            with open(staging / file_name, "wb") as handle:
                write_header(handle, shard, {"format": "pt", "weight_diff": "xor"})
                for name, _, shape in shard:
                    dtype = targets[name][0]
                    digests = {key: hashlib.sha256() for key in ("sha256", "diff_sha256", "raw_sha256")}
                    for start, stop in row_chunks(shape):
                        tuned = read_rows(tuned_specs[name], start, stop)
                        raw = raw_operand(sources[name], start, stop, dtype)
                        diff = bits(tuned) ^ bits(raw)
                        handle.write(diff)
                        digests["sha256"].update(tuned)
                        digests["diff_sha256"].update(diff)
                        digests["raw_sha256"].update(raw)
                        progress.update(diff.nbytes)
                    entries[name] = {"dtype": MANIFEST_DTYPES[dtype], "shape": list(shape),
                                     **{key: digest.hexdigest() for key, digest in digests.items()},
                                     "raw_tensor": sources[name].name}
        write_index(staging, shards, file_names)
        manifest = {
            "format": FORMAT_NAME, "version": FORMAT_VERSION, "representation": "xor",
            "representation_note": "diff = bits(tuned) XOR bits(raw), raw resized for the pad token and cast to "
                                   "the tuned dtype; recover: tuned = raw XOR diff",
            "pad_token_resize": {"pad_token": DEFAULT_PAD_TOKEN, "added_tokens": added_tokens,
                                 "vocab_size": vocab_size},
            "tensors": entries,
        }
        write_manifest(staging / MANIFEST_NAME, manifest)
        copy_model_files(path_tuned, staging)
    print(f"make_diff: {len(entries)} tensors, {len(shards)} shard(s) -> {path_diff} "
          f"in {time.time() - started:.1f} s")
    return path_diff


def recover(path_raw: str, path_diff: str, path_tuned: str | None = None, device: str = "cpu",
            test_inference: bool = True, check_integrity_naively: bool | None = None,
            max_shard_size: int | str = "2GB") -> pathlib.Path | None:
    """Rebuild the tuned model as raw + diff and save it (weights, config, tokenizer) to path_tuned.

    With a manifest (a diff from make_diff) every recovered tensor is checked against its SHA-256, dtype and
    shape, and the first bad tensor stops the run: a damaged diff and a wrong raw model are told apart.
    Without one the diff is taken to be the original's (float32 tuned minus raw) and the recovered float32
    weights are raw + diff, as the original computed them. check_integrity_naively compares the sum of all
    recovered weights with Alpaca-7B's; None (the default) does so only for a diff without a manifest.
    With path_tuned None the model is recovered to a scratch directory, checked, then deleted.
    The weights are rebuilt on the CPU; `device` is where test_inference runs the model. Returns path_tuned.
    """
    started = time.time()
    path_raw, path_diff = pathlib.Path(str(path_raw)), pathlib.Path(str(path_diff))
    final_dir = pathlib.Path(str(path_tuned)) if path_tuned is not None else None
    test_inference, check_integrity_naively = as_bool(test_inference), as_bool(check_integrity_naively)
    check_device(device, needs_gpu_now=test_inference)
    check_output_free(final_dir)
    check_model_files(path_diff)
    diff_specs = checkpoint_tensors(path_diff)
    raw_specs = checkpoint_tensors(path_raw)
    raw_config = read_json(path_raw / "config.json")
    manifest_path = path_diff / MANIFEST_NAME
    manifest = read_manifest(manifest_path) if manifest_path.exists() else None
    if manifest is None:
        print(f"recover: {path_diff} has no {MANIFEST_NAME}; treating it as a diff made by the original code "
              "(float32 tuned minus raw), recovered as raw + diff in float32.")
        if any(spec.dtype not in FLOATS for spec in diff_specs.values()):
            raise ValueError(f"{path_diff} has integer tensors, as weight_diff.py's XOR diffs do, but no "
                             f"{MANIFEST_NAME}: without it the diff cannot be applied. Copy the manifest too.")
        targets = {name: ("F32", spec.shape) for name, spec in sorted(diff_specs.items())}
        added_tokens, vocab_size = pad_token_resize(path_raw, raw_config, path_diff,
                                                    read_json(path_diff / "config.json").get("vocab_size"))
    else:
        targets = {name: (FROM_MANIFEST_DTYPE[entry["dtype"]], tuple(entry["shape"]))
                   for name, entry in manifest["tensors"].items()}
        check_diff_tensors(targets, diff_specs, path_diff)
        added_tokens, vocab_size = (manifest["pad_token_resize"][key] for key in ("added_tokens", "vocab_size"))
        needed, _ = pad_token_resize(path_raw, raw_config, path_diff, vocab_size)
        if needed != added_tokens:
            raise ValueError(f"The diff was made against a raw model whose tokenizer needed {added_tokens} new "
                             f"token(s) in training, but the one in {path_raw} needs {needed}: wrong raw model.")
    # 2023 LLaMA checkpoints stored RoPE's inv_freq buffers, which today's models recompute and do not save.
    is_legacy_buffer = lambda name: manifest is None and name.endswith("rotary_emb.inv_freq")  # noqa: E731
    sources = match_raw_tensors(raw_specs, targets, raw_config, added_tokens, vocab_size, path_raw,
                                skip_missing=is_legacy_buffer)
    targets = {name: target for name, target in targets.items() if name in sources}

    outputs = [(name, dtype, shape) for name, (dtype, shape) in targets.items()]
    shards = plan_shards(outputs, parse_size(max_shard_size))
    file_names = shard_file_names(len(shards))
    naive = check_integrity_naively if check_integrity_naively is not None else manifest is None
    weight_sum = 0.0
    with staged_output(final_dir) as staging, tqdm_bytes(outputs, "recover") as progress:
        for shard, file_name in zip(shards, file_names, strict=True):
            with open(staging / file_name, "wb") as handle:
                write_header(handle, shard, {"format": "pt"})
                for name, dtype, shape in shard:
                    digests = {key: hashlib.sha256() for key in ("sha256", "diff_sha256", "raw_sha256")}
                    for start, stop in row_chunks(shape):
                        diff = read_rows(diff_specs[name], start, stop)
                        raw = raw_operand(sources[name], start, stop, dtype)
                        if manifest is None:  # the original: diff.add_(raw) in float32
                            tuned = to_float32(diff, diff_specs[name].dtype) + raw
                        else:
                            tuned = (bits(raw) ^ bits(diff)).view(STORAGE[dtype])
                            digests["diff_sha256"].update(diff)
                            digests["raw_sha256"].update(raw)
                        handle.write(tuned)
                        digests["sha256"].update(tuned)
                        if naive and dtype in FLOATS:
                            with np.errstate(invalid="ignore", over="ignore"):  # inf - inf: the sum is NaN
                                weight_sum += float(to_float32(tuned, dtype).sum(dtype=np.float64))
                        progress.update(tuned.nbytes)
                    if manifest is not None:
                        check_tensor(name, manifest["tensors"][name], digests, sources[name], path_raw, path_diff)
        write_index(staging, shards, file_names)
        copy_model_files(path_diff, staging)
        if naive:
            check_naive_sum(weight_sum, legacy_buffer_sum(diff_specs, path_raw) if manifest is None else 0.0,
                            manifest is None)
        checked = "every tensor matches the manifest" if manifest else "no manifest to check against"
        print(f"recover: {len(targets)} tensors, {checked}; -> {final_dir or '(not saved)'} "
              f"in {time.time() - started:.1f} s")
        if test_inference and final_dir is None:
            run_test_inference(staging, device)
    if test_inference and final_dir is not None:  # after the rename: a failed generation keeps the weights
        run_test_inference(final_dir, device)
    return final_dir


def write_manifest(path: pathlib.Path, manifest: dict) -> None:
    """JSON with one line per tensor, so that the manifest reads (and diffs) like a table."""
    header = {key: value for key, value in manifest.items() if key != "tensors"}
    rows = ",\n".join(f"  {json.dumps(name)}: {json.dumps(entry)}" for name, entry in manifest["tensors"].items())
    path.write_text(json.dumps(header, indent=1)[:-2] + ',\n "tensors": {\n' + rows + "\n }\n}\n")


def read_manifest(path: pathlib.Path) -> dict:
    """The manifest, checked for the fields recover relies on: a damaged one is named, not a traceback."""
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}): the diff is damaged; copy it again.") from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME or \
            manifest.get("representation") != "xor":
        raise ValueError(f"{path} is not a weight-diff manifest this script understands.")
    version = manifest.get("version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(f"{path} has format version {version!r}; this script reads 1 to {FORMAT_VERSION}. "
                         "Update weight_diff.py, or copy the diff again.")
    resize, tensors = manifest.get("pad_token_resize"), manifest.get("tensors")
    problems = []
    if not (isinstance(resize, dict) and isinstance(resize.get("added_tokens"), int) and resize["added_tokens"] >= 0
            and (resize.get("vocab_size") is None or isinstance(resize["vocab_size"], int))):
        problems.append("pad_token_resize needs added_tokens and vocab_size")
    if not isinstance(tensors, dict) or not tensors:
        problems.append("tensors must map names to entries")
    else:
        for name, entry in tensors.items():
            if not (isinstance(entry, dict) and entry.get("dtype") in FROM_MANIFEST_DTYPE
                    and isinstance(entry.get("shape"), list) and all(isinstance(n, int) for n in entry["shape"])
                    and all(isinstance(entry.get(key), str) and len(entry[key]) == 64
                            for key in ("sha256", "diff_sha256", "raw_sha256"))):
                problems.append(f"the entry of tensor {name!r} lacks a valid dtype, shape or SHA-256")
                break
    if problems:
        raise ValueError(f"{path} is damaged ({problems[0]}); copy the diff again.")
    return manifest


def check_diff_tensors(targets: dict, diff_specs: dict[str, TensorSpec], path_diff: pathlib.Path) -> None:
    """The diff checkpoint must hold exactly the manifest's tensors, as integers of the tuned width."""
    for name, (dtype, shape) in targets.items():
        spec = diff_specs.get(name)
        if spec is None:
            raise ValueError(f"The diff {path_diff} lacks tensor {name!r} listed in its manifest: it is incomplete.")
        expected = DIFF_DTYPES[itemsize(dtype)]
        if spec.shape != shape or spec.dtype != expected:
            raise ValueError(f"Tensor {name!r} in {spec.file} is {spec.dtype} {list(spec.shape)}; the manifest "
                             f"expects {expected} {list(shape)}: the diff is damaged.")
    extra = sorted(set(diff_specs) - set(targets))
    if extra:
        raise ValueError(f"The diff {path_diff} has tensors its manifest does not list, e.g. {extra[:3]}.")


def check_tensor(name: str, entry: dict, digests: dict, source: RawSource, path_raw, path_diff) -> None:
    """Stop at the first tensor that does not match the manifest, saying which input is at fault."""
    if digests["diff_sha256"].hexdigest() != entry["diff_sha256"]:
        raise ValueError(f"The diff is damaged: tensor {name!r} in {path_diff} does not match the SHA-256 "
                         "recorded when it was made. Download or copy the diff again.")
    if digests["raw_sha256"].hexdigest() != entry["raw_sha256"]:
        resized = " (or its [PAD] rows, the mean of the other rows, came out differently)" \
            if source.appended_row is not None else ""
        raise ValueError(f"The raw model is not the one this diff was made from: tensor {source.name!r} in "
                         f"{source.spec.file} differs{resized}. Pass the exact base model the diff was made "
                         f"against as --path_raw.")
    if digests["sha256"].hexdigest() != entry["sha256"]:
        raise ValueError(f"Recovered tensor {name!r} does not match its SHA-256 in the manifest.")


def legacy_buffer_sum(diff_specs: dict[str, TensorSpec], path_raw: pathlib.Path) -> float:
    """What RoPE's inv_freq buffers added to the original's naive sum of a LLaMA model. The 2023 LLaMA code saved
    one per layer (1 / base^(2i/d) in float32), so the sum over the recovered state dict included
    num_hidden_layers of them, plus whatever the diff held there (~0). Today's models recompute the buffer and
    do not save it, and a 2023 diff converted to safetensors with today's transformers has lost it: without
    this term the check would fail on the very diff it was made for."""
    config = read_json(path_raw / "config.json")
    if config.get("model_type") != "llama":
        return 0.0
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    base = (config.get("rope_parameters") or {}).get("rope_theta", config.get("rope_theta", 10000.0))
    inv_freq = (1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))).astype(np.float32)
    held = sum(float(to_float32(read_rows(spec), spec.dtype).sum(dtype=np.float64))
               for name, spec in diff_specs.items() if name.endswith("rotary_emb.inv_freq"))
    return held + config["num_hidden_layers"] * float(inv_freq.sum(dtype=np.float64))


def check_naive_sum(weight_sum: float, buffer_sum: float, legacy: bool) -> None:
    total = weight_sum + buffer_sum
    if not math.isclose(total, ALPACA_7B_NAIVE_SUM, rel_tol=0, abs_tol=1e-2):
        hint = " If this diff is not Alpaca-7B's, pass --check_integrity_naively False." if legacy else ""
        raise ValueError(f"Naive integrity check failed: the recovered weights sum to {total:.4f}, not "
                         f"{ALPACA_7B_NAIVE_SUM} as Alpaca-7B's do.{hint}")
    print(f"recover: naive integrity check passed (sum of weights {total:.4f})")


def check_device(device: str, needs_gpu_now: bool = False) -> None:
    """Refuse a device that cannot work before any work is done. Only a run that will use a GPU (test_inference
    on cuda) imports torch to ask for one; the diff itself never needs it."""
    if str(device).split(":")[0] not in ("cpu", "cuda", "mps", "xpu", "auto"):
        raise ValueError(f"--device {device!r} is not a device: use cpu or cuda (or cuda:N).")
    if needs_gpu_now and str(device).startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError(f"--device {device} was asked for but no CUDA GPU is available; use --device cpu.")


def as_bool(value: bool | str | None) -> bool | None:
    """fire passes `--flag false` (lower case) as the string 'false', which Python takes for True."""
    if not isinstance(value, str):
        return value
    if value.strip().lower() in ("true", "1", "yes"):
        return True
    if value.strip().lower() in ("false", "0", "no"):
        return False
    raise ValueError(f"Expected True or False, got {value!r}.")


def tqdm_bytes(tensors: list, description: str):
    total = sum(math.prod(shape) * itemsize(dtype) for _, dtype, shape in tensors)
    return tqdm(total=total, unit="B", unit_scale=True, desc=description, disable=None, file=sys.stderr)


# ----------------------------------------------------------------------------- a sample generation

def run_test_inference(model_dir: pathlib.Path, device: str = "cpu", max_new_tokens: int = 128) -> str:
    """Load the recovered model, answer one fixed instruction with the no-input Alpaca prompt, print it."""
    from inference import format_prompt, generate_responses, load_model  # the project's one generation path

    model, tokenizer = load_model(str(model_dir), device=device)
    response = generate_responses(model, tokenizer, [{"instruction": INFERENCE_INSTRUCTION}],
                                  max_new_tokens=max_new_tokens)[0]
    print(f"test_inference:\n{format_prompt(INFERENCE_INSTRUCTION)}\n{response}")
    return response


def command(function):
    """`function` as a command-line task: a mistake the user can fix (a missing path, the wrong raw model, a
    damaged diff) prints as one line and exits with 1, without a traceback; the return value is not echoed."""

    @functools.wraps(function)  # fire reads the signature and docstring through the wrapper for --help
    def run(*args, **kwargs) -> None:
        try:
            function(*args, **kwargs)
        except (FileNotFoundError, FileExistsError, ValueError, RuntimeError) as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(1)

    return run


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    fire.Fire({"make_diff": command(make_diff), "recover": command(recover)})
