"""Publish a fine-tuned model as a weight diff against its base model, and recover it bit for bit.

    python weight_diff.py make_diff --path_raw RAW --path_tuned TUNED --path_diff DIFF
    python weight_diff.py recover --path_raw RAW --path_diff DIFF --path_tuned RECOVERED

`make_diff` writes DIFF: one diff tensor per tuned tensor, the tuned config and tokenizer, and
`weight_diff_manifest.json` (SHA-256, dtype and shape of every tuned tensor). `recover` rebuilds the
tuned model from RAW + DIFF, checks every tensor against the manifest and stops at the first bad one.
As in training, a raw tokenizer without a pad token gets `[PAD]`, and the raw input and output
embeddings grow by rows holding the mean of the old rows, before the diff is taken or applied.

Both work one tensor (and one block of rows) at a time from safetensors files, single-file or
sharded, so they never hold a whole model. Output goes to a temporary directory that is renamed
into place only when everything has been written and checked.

A diff made by the original 2023 code (float32 tuned minus raw, no manifest, as published for
Alpaca-7B) is recovered the way that code did it: raw and diff added in float32.
"""

import contextlib
import hashlib
import json
import math
import os
import pathlib
import shutil
import sys
import tempfile
import time
from typing import NamedTuple

import fire
import torch
from safetensors import safe_open
from tqdm import tqdm

MANIFEST_NAME = "weight_diff_manifest.json"
FORMAT_NAME = "alpaca-weight-diff"
FORMAT_VERSION = 1
DEFAULT_PAD_TOKEN = "[PAD]"  # train.DEFAULT_PAD_TOKEN (importing train.py would cost ~100 MB of memory)
ALPACA_7B_NAIVE_SUM = 50637.1836  # sum of all Alpaca-7B weights: the original's only integrity check
ROWS_PER_CHUNK_ELEMENTS = 1 << 20  # 1M elements (4 MB in float32) per piece of work bounds memory
INFERENCE_INSTRUCTION = "List three technologies that make life easier."
CONFIG_FILES = ("config.json", "generation_config.json")
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "merges.txt", "vocab.txt", "chat_template.jinja", "chat_template.json",
)

# safetensors' dtype names <-> torch dtypes.
SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
DTYPE_NAMES = {dtype: name for name, dtype in SAFETENSORS_DTYPES.items()}
# The diff of a tensor is the XOR of the tuned and raw bit patterns, stored as integers of the same width.
BITS_DTYPES = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}

# Why XOR: `tuned == raw ^ (tuned ^ raw)` holds for every bit pattern (NaN payloads, inf, -0.0,
# subnormals, any exponent gap), in the tuned dtype, on any device. Arithmetic diffs are not exact:
# `(tuned - raw) + raw` rounds twice, a wider dtype does not help in general (the exact difference of
# two float32 numbers can need ~280 bits when their exponents are far apart) and inf - inf is NaN.
# XOR keeps the diff as small as the tuned weights, zero wherever a weight did not change, and with
# zero high bits wherever it changed a little (same sign and exponent), which compresses well.


class TensorSpec(NamedTuple):
    """Where a tensor lives in a checkpoint and what it is, read from the safetensors header only."""

    file: pathlib.Path
    dtype: torch.dtype
    shape: tuple[int, ...]


class RawSource(NamedTuple):
    """How to build the raw operand of one output tensor: rows [0, kept_rows) of `name`, then copies of
    `appended_row` (the mean of the kept rows) for the tokens the pad-token resize added."""

    spec: TensorSpec
    name: str
    kept_rows: int
    appended_row: torch.Tensor | None


# ----------------------------------------------------------------------------- reading checkpoints

def checkpoint_tensors(model_dir: pathlib.Path) -> dict[str, TensorSpec]:
    """Map every tensor name of a safetensors checkpoint (single file or sharded) to its spec."""
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = sorted({model_dir / shard for shard in weight_map.values()})
    elif (model_dir / "model.safetensors").exists():
        files = [model_dir / "model.safetensors"]
    elif list(model_dir.glob("*.bin")):
        raise FileNotFoundError(
            f"{model_dir} holds PyTorch pickle weights (*.bin) but no safetensors; this script reads safetensors "
            f"only. Convert it once, e.g. `python -c \"from transformers import AutoModelForCausalLM as M; "
            f"M.from_pretrained('{model_dir}', dtype='auto').save_pretrained('{model_dir}-safetensors')\"`, "
            f"and pass the new directory.")
    else:
        raise FileNotFoundError(f"{model_dir} has no model.safetensors or model.safetensors.index.json.")
    specs = {}
    for file in files:
        if not file.exists():
            raise FileNotFoundError(f"{file} is listed in {index} but missing: the checkpoint is incomplete.")
        with safe_open(str(file), "pt") as f:
            for name in f.keys():
                piece = f.get_slice(name)
                dtype = SAFETENSORS_DTYPES.get(piece.get_dtype())
                if dtype is None:
                    raise ValueError(f"{file}: tensor {name!r} has dtype {piece.get_dtype()}, which is not supported.")
                specs[name] = TensorSpec(file, dtype, tuple(piece.get_shape()))
    return specs


def read_rows(spec: TensorSpec, name: str, start: int | None = None, stop: int | None = None) -> torch.Tensor:
    """Rows [start, stop) of a tensor (all of it when start is None), copied out of the memory-mapped
    file so that the file's pages are released when it closes: the whole file never stays resident."""
    with safe_open(str(spec.file), "pt") as f:
        if start is None or not spec.shape:
            return f.get_tensor(name).clone()
        return f.get_slice(name)[start:stop].clone()


def row_chunks(shape: tuple[int, ...]) -> list[tuple[int | None, int | None]]:
    """Split a tensor along its first dimension into blocks of about ROWS_PER_CHUNK_ELEMENTS elements."""
    if not shape or shape[0] == 0:
        return [(None, None)]
    rows_per_chunk = max(1, ROWS_PER_CHUNK_ELEMENTS // max(1, math.prod(shape[1:])))
    return [(start, min(start + rows_per_chunk, shape[0])) for start in range(0, shape[0], rows_per_chunk)]


def bits(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor's bit patterns as integers of the same width (a view, no copy)."""
    return tensor.view(BITS_DTYPES[tensor.element_size()])


def as_bytes(tensor: torch.Tensor):
    """The tensor's bytes, little-endian and row-major, as in a safetensors file (a numpy view)."""
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()


# ----------------------------------------------------------------------------- writing checkpoints

def parse_size(size: int | str) -> int:
    """'2GB', '500MB', '4GiB' or a number of bytes -> bytes."""
    if isinstance(size, int):
        return size
    text = size.strip().upper()
    units = {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "KB": 10**3, "MB": 10**6, "GB": 10**9, "B": 1}
    for unit, factor in units.items():
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * factor)
    return int(text)


def plan_shards(tensors: list[tuple[str, torch.dtype, tuple[int, ...]]], max_shard_bytes: int) -> list[list]:
    """Group tensors, in order, into shards of at most max_shard_bytes (a bigger tensor gets a shard alone)."""
    shards, current, current_bytes = [], [], 0
    for name, dtype, shape in tensors:
        size = math.prod(shape) * dtype.itemsize
        if current and current_bytes + size > max_shard_bytes:
            shards.append(current)
            current, current_bytes = [], 0
        current.append((name, dtype, shape))
        current_bytes += size
    return shards + [current] if current else shards


def write_header(handle, tensors: list[tuple[str, torch.dtype, tuple[int, ...]]], metadata: dict[str, str]) -> None:
    """Write a safetensors header for tensors whose bytes will follow in this order, so that a shard can be
    written one tensor at a time instead of being assembled in memory first."""
    header, offset = {"__metadata__": metadata}, 0
    for name, dtype, shape in tensors:
        size = math.prod(shape) * dtype.itemsize
        header[name] = {"dtype": DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data must start 8-byte aligned
    handle.write(len(encoded).to_bytes(8, "little") + encoded)


def shard_file_names(count: int) -> list[str]:
    if count == 1:
        return ["model.safetensors"]
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


def write_index(out_dir: pathlib.Path, shards: list[list], file_names: list[str]) -> None:
    if len(shards) == 1:
        return
    weight_map = {name: file for shard, file in zip(shards, file_names, strict=True) for name, _, _ in shard}
    total = sum(math.prod(shape) * dtype.itemsize for shard in shards for _, dtype, shape in shard)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def copy_model_files(source: pathlib.Path, destination: pathlib.Path) -> None:
    """Copy the config and tokenizer files (not the weights), as the original saved the tuned ones."""
    if not (source / "config.json").exists():
        raise FileNotFoundError(f"{source} has no config.json; it must be a Hugging Face model directory.")
    tokenizer_files = [name for name in TOKENIZER_FILES if (source / name).exists()]
    if not tokenizer_files:
        raise FileNotFoundError(f"{source} has no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...).")
    for name in CONFIG_FILES + tuple(tokenizer_files):
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


# ----------------------------------------------------------------------------- the raw operand

def read_json(path: pathlib.Path) -> dict:
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist.")
    return json.loads(path.read_text())


def pad_token_resize(path_raw: pathlib.Path) -> tuple[int, int]:
    """(number of tokens added, vocabulary size after) when [PAD] is added to the raw tokenizer as training
    did; (0, size) when it already has a pad token."""
    from transformers import AutoTokenizer  # imported here: only this step needs it

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path_raw))
    except (OSError, ValueError) as error:
        raise FileNotFoundError(f"Could not load the raw tokenizer from {path_raw}: {error}") from error
    if tokenizer.pad_token is not None:
        return 0, len(tokenizer)
    added = tokenizer.add_special_tokens({"pad_token": DEFAULT_PAD_TOKEN})
    return added, len(tokenizer)


def mean_of_rows(spec: TensorSpec, name: str, rows: int) -> torch.Tensor:
    """The mean of rows [0, rows) in float32, computed on the CPU exactly as train.py's
    smart_tokenizer_and_embedding_resize does on a float32 model (same kernel, same summation order), and
    always on the CPU so that make_diff and recover agree bit for bit whatever device each one runs on."""
    old_rows = torch.empty((rows, *spec.shape[1:]), dtype=torch.float32)
    for start, stop in row_chunks((rows, *spec.shape[1:])):  # filled block by block: no second full copy
        old_rows[start:stop] = read_rows(spec, name, start, stop)
    return old_rows.mean(dim=0, keepdim=True)


def match_raw_tensors(
    raw_specs: dict[str, TensorSpec], targets: dict[str, tuple[torch.dtype, tuple[int, ...]]],
    raw_config: dict, added_tokens: int, vocab_size: int, path_raw: pathlib.Path, skip_missing=lambda name: False,
) -> dict[str, RawSource]:
    """For every target tensor (name -> dtype, shape), the raw tensor it is diffed against, after the pad-token
    resize: raw [V, ...] embeddings become [vocab_size, ...] with the last `added_tokens` rows set to the mean
    of the rows before them. A tied raw model has no output embedding in its file: its input embedding serves.
    Raises ValueError naming the first tensor whose name or shape does not match."""
    raw_rows = raw_config.get("vocab_size")
    kept_rows = vocab_size - added_tokens
    if added_tokens and (raw_rows is None or kept_rows > raw_rows):
        raise ValueError(f"{path_raw}: the raw embeddings have {raw_rows} rows but the tokenizer has {kept_rows} "
                         "tokens before [PAD] is added; the tokenizer and the weights do not belong together.")
    embeddings = [name for name, spec in raw_specs.items() if len(spec.shape) == 2 and spec.shape[0] == raw_rows]
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
        resized = added_tokens and raw_name in embeddings
        expected = (vocab_size, *spec.shape[1:]) if resized else spec.shape
        if tuple(shape) != tuple(expected):
            raise ValueError(f"Tensor {name!r} has shape {list(shape)} in the tuned model but the raw model "
                             f"{path_raw} gives {list(expected)}" + (" after adding [PAD]" if resized else "")
                             + ": these are not the same architecture.")
        if spec.dtype.is_floating_point != dtype.is_floating_point or (
                not dtype.is_floating_point and spec.dtype != dtype):
            raise ValueError(f"Tensor {name!r} is {dtype} in the tuned model but {spec.dtype} in {path_raw}.")
        if resized and raw_name not in means:
            means[raw_name] = mean_of_rows(spec, raw_name, kept_rows)
        rows = kept_rows if resized else (shape[0] if shape else 0)
        sources[name] = RawSource(spec, raw_name, rows, means.get(raw_name) if resized else None)
        used.add(raw_name)
    unused = sorted(set(raw_specs) - used - set(embeddings))
    if unused:
        raise ValueError(f"The raw model {path_raw} has tensors the tuned model lacks, e.g. {unused[:3]}: "
                         "is it the base model this diff belongs to?")
    return sources


def raw_operand(source: RawSource, start: int | None, stop: int | None, dtype: torch.dtype) -> torch.Tensor:
    """Rows [start, stop) of the resized raw tensor, in `dtype`. Floating-point raw weights pass through float32,
    as the original loaded them, so that the raw operand is the same whatever dtype the raw files hold."""
    if start is None:
        tensor = read_rows(source.spec, source.name)
        return tensor.to(torch.float32).to(dtype) if dtype.is_floating_point else tensor
    parts = []
    if start < source.kept_rows:
        parts.append(read_rows(source.spec, source.name, start, min(stop, source.kept_rows)))
    if stop > source.kept_rows:
        count = stop - max(start, source.kept_rows)
        parts.append(source.appended_row.expand(count, *source.appended_row.shape[1:]))
    if dtype.is_floating_point:
        parts = [part.to(torch.float32).to(dtype) for part in parts]
    return torch.cat(parts) if len(parts) > 1 else parts[0]


# ----------------------------------------------------------------------------- make_diff / recover

def make_diff(path_raw: str, path_tuned: str, path_diff: str, device: str = "cpu",
              max_shard_size: int | str = "2GB") -> pathlib.Path:
    """Write the diff that turns the raw model into the tuned one, with its manifest, config and tokenizer.

    Every tuned tensor `t` (any shape, float32/bfloat16/float16 or other) is stored as the XOR of its bits with
    the raw operand `r` (the raw tensor resized for [PAD] and cast to t's dtype), same shape, as an integer
    tensor of the same width: recover computes `t = r ^ diff` exactly. Returns the diff directory.
    """
    started = time.time()
    path_raw, path_tuned, path_diff = pathlib.Path(path_raw), pathlib.Path(path_tuned), pathlib.Path(path_diff)
    compute_device = resolve_device(device)
    check_output_free(path_diff)
    tuned_specs = checkpoint_tensors(path_tuned)
    raw_specs = checkpoint_tensors(path_raw)
    added_tokens, vocab_size = pad_token_resize(path_raw)
    targets = {name: (spec.dtype, spec.shape) for name, spec in sorted(tuned_specs.items())}
    sources = match_raw_tensors(raw_specs, targets, read_json(path_raw / "config.json"), added_tokens,
                                vocab_size, path_raw)

    outputs = [(name, BITS_DTYPES[dtype.itemsize], shape) for name, (dtype, shape) in targets.items()]
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
                        tuned = read_rows(tuned_specs[name], name, start, stop).to(compute_device)
                        raw = raw_operand(sources[name], start, stop, dtype).to(compute_device)
                        diff = as_bytes(bits(tuned) ^ bits(raw))
                        handle.write(diff)
                        digests["sha256"].update(as_bytes(tuned))
                        digests["diff_sha256"].update(diff)
                        digests["raw_sha256"].update(as_bytes(raw))
                        progress.update(diff.nbytes)
                    entries[name] = {"dtype": str(dtype).removeprefix("torch."), "shape": list(shape),
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
    Returns path_tuned.
    """
    started = time.time()
    path_raw, path_diff = pathlib.Path(path_raw), pathlib.Path(path_diff)
    final_dir = pathlib.Path(path_tuned) if path_tuned is not None else None
    compute_device = resolve_device(device)
    check_output_free(final_dir)
    diff_specs = checkpoint_tensors(path_diff)
    raw_specs = checkpoint_tensors(path_raw)
    added_tokens, vocab_size = pad_token_resize(path_raw)
    manifest_path = path_diff / MANIFEST_NAME
    manifest = read_manifest(manifest_path) if manifest_path.exists() else None
    if manifest is None:
        print(f"recover: {path_diff} has no {MANIFEST_NAME}; treating it as a diff made by the original code "
              "(float32 tuned minus raw), recovered as raw + diff in float32.")
        targets = {name: (torch.float32, spec.shape) for name, spec in sorted(diff_specs.items())}
    else:
        targets = {name: (getattr(torch, entry["dtype"]), tuple(entry["shape"]))
                   for name, entry in manifest["tensors"].items()}
        check_diff_tensors(targets, diff_specs, path_diff)
    if manifest is not None and manifest["pad_token_resize"]["added_tokens"] != added_tokens:
        raise ValueError(f"The diff was made from a raw tokenizer that needed {manifest['pad_token_resize']} "
                         f"but the one in {path_raw} needs {added_tokens} new token(s): wrong raw model.")
    # 2023 LLaMA checkpoints stored RoPE's inv_freq buffers, which today's models recompute and do not save.
    is_legacy_buffer = lambda name: manifest is None and name.endswith("rotary_emb.inv_freq")  # noqa: E731
    sources = match_raw_tensors(raw_specs, targets, read_json(path_raw / "config.json"), added_tokens,
                                vocab_size, path_raw, skip_missing=is_legacy_buffer)
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
                        diff = read_rows(diff_specs[name], name, start, stop).to(compute_device)
                        raw = raw_operand(sources[name], start, stop, dtype).to(compute_device)
                        if manifest is None:
                            tuned = diff.to(torch.float32) + raw  # the original: diff.add_(raw) in float32
                        else:
                            tuned = (bits(raw) ^ diff).view(dtype)
                            digests["diff_sha256"].update(as_bytes(diff))
                            digests["raw_sha256"].update(as_bytes(raw))
                        handle.write(as_bytes(tuned))
                        digests["sha256"].update(as_bytes(tuned))
                        if naive and tuned.is_floating_point():
                            weight_sum += tuned.to(torch.float64).sum().item()
                        progress.update(tuned.nbytes)
                    if manifest is not None:
                        check_tensor(name, manifest["tensors"][name], digests, sources[name], path_raw, path_diff)
        write_index(staging, shards, file_names)
        copy_model_files(path_diff, staging)
        if naive:
            check_naive_sum(weight_sum, legacy_buffer_sum(diff_specs, targets, path_raw), manifest is None)
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
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}): the diff is damaged; copy it again.") from error
    if manifest.get("format") != FORMAT_NAME or manifest.get("representation") != "xor":
        raise ValueError(f"{path} is not a weight-diff manifest this script understands.")
    if manifest.get("version", 0) > FORMAT_VERSION:
        raise ValueError(f"{path} has format version {manifest['version']}; this script reads up to "
                         f"{FORMAT_VERSION}. Update weight_diff.py.")
    return manifest


def check_diff_tensors(targets: dict, diff_specs: dict[str, TensorSpec], path_diff: pathlib.Path) -> None:
    """The diff checkpoint must hold exactly the manifest's tensors, as integers of the tuned width."""
    for name, (dtype, shape) in targets.items():
        spec = diff_specs.get(name)
        if spec is None:
            raise ValueError(f"The diff {path_diff} lacks tensor {name!r} listed in its manifest: it is incomplete.")
        if spec.shape != shape or spec.dtype != BITS_DTYPES[dtype.itemsize]:
            raise ValueError(f"Tensor {name!r} in {spec.file} is {spec.dtype} {list(spec.shape)}; the manifest "
                             f"expects {BITS_DTYPES[dtype.itemsize]} {list(shape)}: the diff is damaged.")
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


def legacy_buffer_sum(diff_specs: dict[str, TensorSpec], targets: dict, path_raw: pathlib.Path) -> float:
    """Sum of the RoPE inv_freq buffers a 2023 diff carries (diff + the raw buffer, which the 2023 LLaMA
    code computed as 1 / base^(2i/d) in float32): the original's naive sum included them."""
    skipped = [name for name in diff_specs if name not in targets]
    if not skipped:
        return 0.0
    config = read_json(path_raw / "config.json")
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    base = (config.get("rope_parameters") or {}).get("rope_theta", config.get("rope_theta", 10000.0))
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2).float() / head_dim))
    return sum((read_rows(diff_specs[name], name).float() + inv_freq).double().sum().item() for name in skipped)


def check_naive_sum(weight_sum: float, buffer_sum: float, legacy: bool) -> None:
    total = weight_sum + buffer_sum
    if not math.isclose(total, ALPACA_7B_NAIVE_SUM, rel_tol=0, abs_tol=1e-2):
        hint = " If this diff is not Alpaca-7B's, pass --check_integrity_naively False." if legacy else ""
        raise ValueError(f"Naive integrity check failed: the recovered weights sum to {total:.4f}, not "
                         f"{ALPACA_7B_NAIVE_SUM} as Alpaca-7B's do.{hint}")
    print(f"recover: naive integrity check passed (sum of weights {total:.4f})")


def resolve_device(device: str) -> torch.device:
    compute_device = torch.device(device)
    if compute_device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"--device {device} was asked for but no CUDA GPU is available; use --device cpu.")
    return compute_device


def tqdm_bytes(tensors: list, description: str):
    total = sum(math.prod(shape) * dtype.itemsize for _, dtype, shape in tensors)
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


def main(task: str, **kwargs) -> None:
    tasks = {"make_diff": make_diff, "recover": recover}
    if task not in tasks:
        raise SystemExit(f"Unknown task {task!r}: use one of {', '.join(tasks)}.")
    tasks[task](**kwargs)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    fire.Fire(main)
