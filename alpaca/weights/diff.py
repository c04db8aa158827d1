"""Publish a fine-tuned model as a weight diff against its base model, and recover it bit for bit.

    python weight_diff.py make_diff --path_raw RAW --path_tuned TUNED --path_diff DIFF
    python weight_diff.py recover --path_raw RAW --path_diff DIFF --path_tuned RECOVERED

`make_diff` writes DIFF: one diff tensor per tuned tensor, the tuned config, tokenizer and chat template, and
`weight_diff_manifest.json` (SHA-256, dtype and shape of every tuned tensor, SHA-256 of every other file).
`recover` rebuilds the tuned model from RAW + DIFF, checks every file and tensor against the manifest and
stops at the first bad one. The raw input and output embeddings are first resized as train.py resized them:
rows for the tokens training added (`[PAD]` when the raw tokenizer has no pad token, ...) hold the mean of
the old rows, spare rows are dropped (raw_weights.py).

Both stream one block of rows at a time straight from the safetensors files (single-file or sharded)
with numpy, so they never hold a whole model, and they import neither torch nor transformers (together
~350 MiB before any weight is read): the peak memory is a few tens of MiB whatever the model's size.
Only `test_inference` loads the recovered model.

Safe by default: flags, paths and every input file are checked before any work (regular files only; no
symbolic link in the tuned or diff directory, whose files are copied into the output; shards next to their
index; safetensors headers as the format defines them). Output goes to a private (0700) temporary directory
renamed into place only when everything has been written and checked; a failure, Ctrl-C or SIGTERM leaves
nothing behind. An existing output is never overwritten (an empty directory is accepted).

A diff made by the original 2023 code (float32 tuned minus raw, no manifest, as published for
Alpaca-7B) is recovered the way that code did it: raw and diff added in float32.
"""

import contextlib
import errno
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
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

import numpy as np
from tqdm import tqdm

from alpaca import cli, errors
from alpaca.weights.raw import (
    MANIFEST_DTYPES,
    TOKENIZER_FILES,
    RawSource,
    match_raw_tensors,
    raw_operand,
    vocabulary_resize,
)
from alpaca.weights.safetensors_stream import (
    FLOATS,
    STORAGE,
    TensorSpec,
    bits,
    check_regular_file,
    checkpoint_tensors,
    itemsize,
    parse_size,
    plan_shards,
    present,
    read_json,
    read_rows,
    row_chunks,
    shard_file_names,
    to_float32,
    write_header,
    write_index,
)

MANIFEST_NAME = "weight_diff_manifest.json"
FORMAT_NAME = "alpaca-weight-diff"
FORMAT_VERSION = 2  # 2: the manifest also lists the SHA-256 of every config, tokenizer and chat template file
DEFAULT_PAD_TOKEN = "[PAD]"  # train.DEFAULT_PAD_TOKEN (importing train.py would import torch and transformers)
ALPACA_7B_NAIVE_SUM = 50637.1836  # sum of all Alpaca-7B weights: the original's only integrity check
INFERENCE_INSTRUCTION = "List three technologies that make life easier."
CONFIG_FILES = ("config.json", "generation_config.json")
CHAT_TEMPLATE_DIR = "additional_chat_templates"  # where transformers saves named chat templates, as NAME.jinja
INTERRUPTED = "interrupted: the unfinished output was removed; nothing half-written is left behind."

# The manifest names dtypes as PyTorch does (MANIFEST_DTYPES, in raw_weights.py).
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


# ----------------------------------------------------------------------------- config, tokenizer, chat template

def model_file_names(model_dir: pathlib.Path) -> list[str]:
    """The config, tokenizer and chat template files of model_dir that a diff carries (relative names)."""
    names = [name for name in CONFIG_FILES + TOKENIZER_FILES if present(model_dir / name)]
    templates = model_dir / CHAT_TEMPLATE_DIR
    if present(templates):
        if templates.is_symlink() or not templates.is_dir():
            raise errors.DataError(f"{templates} is not a directory (or is a symbolic link); it must hold the named "
                                "chat templates as NAME.jinja files.")
        names += sorted(f"{CHAT_TEMPLATE_DIR}/{path.name}" for path in templates.iterdir() if path.suffix == ".jinja")
    return names


def read_model_files(model_dir: pathlib.Path) -> dict[str, bytes]:
    """The bytes of model_dir's config, tokenizer and chat template files, which the output will carry as they
    are. Each must be a regular file, not a link (see `check_regular_file`); config.json and a tokenizer must be
    there. Read once, before any work: what is checked is what gets written."""
    if not model_dir.is_dir():
        raise errors.MissingPathError(f"{model_dir} does not exist or is not a directory.")
    names = model_file_names(model_dir)
    for name in names:
        check_regular_file(model_dir / name, follow_links=False)
    if "config.json" not in names:
        raise errors.MissingPathError(f"{model_dir} has no config.json; it must be a Hugging Face model directory.")
    if not any(name in TOKENIZER_FILES for name in names):
        raise errors.MissingPathError(f"{model_dir} has no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...); "
                                   "copy the tokenizer of the fine-tuned model into it.")
    return {name: (model_dir / name).read_bytes() for name in names}


def write_model_files(files: dict[str, bytes], out_dir: pathlib.Path) -> None:
    for name, content in files.items():
        (out_dir / name).parent.mkdir(mode=0o700, exist_ok=True)
        (out_dir / name).write_bytes(content)


def file_entries(files: dict[str, bytes]) -> dict[str, dict]:
    """The manifest's record of the non-weight files: name -> SHA-256 and size in bytes."""
    return {name: {"sha256": hashlib.sha256(content).hexdigest(), "size": len(content)}
            for name, content in files.items()}


def verify_model_files(files: dict[str, bytes], manifest: dict, path_diff: pathlib.Path) -> None:
    """The diff's config, tokenizer and chat template files must be exactly those the manifest lists: none
    changed, none missing, none added. A version-1 manifest lists none: the files are copied unchecked."""
    listed = manifest.get("files")
    if listed is None:
        print(f"recover: {MANIFEST_NAME} is of version 1, which predates checksums of the config and tokenizer "
              "files; they are copied unchecked.")
        return
    for name in sorted(set(files) | set(listed)):
        if name not in listed:
            raise errors.DataError(f"{path_diff / name} is not listed in {MANIFEST_NAME}: it was added after the diff "
                                "was made. Remove it, or copy the diff again.")
        if name not in files:
            raise errors.MissingPathError(f"{path_diff / name} is listed in {MANIFEST_NAME} but missing: the diff is "
                                       "incomplete; copy it again.")
        if hashlib.sha256(files[name]).hexdigest() != listed[name]["sha256"]:
            raise errors.DataError(f"{path_diff / name} does not match the SHA-256 recorded in {MANIFEST_NAME} when "
                                "the diff was made: it was changed or damaged; copy the diff again.")


# ----------------------------------------------------------------------------- output directories

def check_output_free(final_dir: pathlib.Path | None) -> None:
    """A new path or an empty directory: a model is never overwritten."""
    if final_dir is None or not present(final_dir):
        return
    if final_dir.is_symlink() or not final_dir.is_dir():
        raise errors.OutputExistsError(f"{final_dir} already exists and is not a directory (or is a link to one); "
                                    "choose another output path.")
    if any(final_dir.iterdir()):
        raise errors.OutputExistsError(f"{final_dir} already exists and is not empty; weight_diff.py never overwrites "
                                    "a model: remove it or choose another output path.")


def make_private_dir(directory: pathlib.Path) -> None:
    """mkdir with mode 0700 whatever the umask (mkdir's mode is masked by it)."""
    directory.mkdir(mode=0o700)
    directory.chmod(0o700)


@contextlib.contextmanager
def staged_output(final_dir: pathlib.Path | None) -> Iterator[pathlib.Path]:
    """Yield a private temporary directory next to final_dir; rename it into place only if the block succeeds
    (onto final_dir itself when that is an empty directory). Otherwise (an error, Ctrl-C, SIGTERM) it is
    removed with the parent directories made for it. With final_dir None it is scratch space, removed anyway."""
    check_output_free(final_dir)
    parent = final_dir.parent if final_dir is not None else None
    created = [] if parent is None else [d for d in (parent, *parent.parents) if not present(d)]
    staging = None
    try:
        for directory in reversed(created):
            make_private_dir(directory)
        staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.partial-" if final_dir else "recover-",
                                                dir=parent))
        staging.chmod(0o700)
        yield staging
        if final_dir is not None:
            move_into_place(staging, final_dir)
    finally:
        if staging is not None and staging.exists():
            shutil.rmtree(staging)
        if final_dir is not None and not present(final_dir):
            for directory in created:  # innermost first: a failure leaves none of them
                with contextlib.suppress(OSError):
                    directory.rmdir()


def move_into_place(staging: pathlib.Path, final_dir: pathlib.Path) -> None:
    """Rename, atomic on one filesystem: no reader ever sees half a model. It replaces an empty directory and
    fails on anything else, so that a file written into final_dir meanwhile is not lost."""
    try:
        staging.rename(final_dir)
    except OSError as error:
        if error.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            raise
        raise errors.OutputExistsError(f"{final_dir} was filled or created by something else while this ran; "
                                    "nothing was written to it. Choose another output path.") from None


# ----------------------------------------------------------------------------- the streamed-shard writer

def write_checkpoint(out_dir: pathlib.Path, outputs: list[tuple[str, str, tuple[int, ...]]], max_shard_bytes: int,
                     metadata: dict[str, str], tensor_blocks: Callable[[str], Iterable[np.ndarray]],
                     description: str, sum_floats: bool = False) -> float:
    """Write `outputs` (name, safetensors dtype, shape) as a safetensors checkpoint in out_dir, sharded like
    save_pretrained, each tensor as the flattened blocks `tensor_blocks(name)` yields, in row order: never a
    whole tensor in memory. Returns the float64 sum of every floating-point value written when `sum_floats`
    (the original's naive integrity check), else 0.0."""
    shards = plan_shards(outputs, max_shard_bytes)
    file_names = shard_file_names(len(shards))
    dtypes = {name: dtype for name, dtype, _ in outputs}
    total = 0.0
    with tqdm_bytes(outputs, description) as progress:
        for shard, file_name in zip(shards, file_names, strict=True):
            with open(out_dir / file_name, "wb") as handle:
                write_header(handle, shard, metadata)
                for name, _, _ in shard:
                    for block in tensor_blocks(name):
                        handle.write(block)
                        progress.update(block.nbytes)
                        if sum_floats and dtypes[name] in FLOATS:
                            with np.errstate(invalid="ignore", over="ignore"):  # inf - inf: the sum is NaN
                                total += float(to_float32(block, dtypes[name]).sum(dtype=np.float64))
    write_index(out_dir, shards, file_names)
    return total


def new_digests() -> dict:
    return {key: hashlib.sha256() for key in ("sha256", "diff_sha256", "raw_sha256")}


# ----------------------------------------------------------------------------- make_diff

def make_diff(path_raw: str, path_tuned: str, path_diff: str, device: str = "cpu",
              max_shard_size: int | str = "2GB") -> pathlib.Path:
    """Write the diff that turns the raw model into the tuned one, with a manifest of SHA-256 checksums.

    The diff directory also carries the tuned config, tokenizer and chat template, as they are. Every tuned
    tensor `t` (any shape, float32/bfloat16/float16 or other) is stored as the XOR of its bits with the raw
    operand `r` (the raw tensor resized as training resized the vocabulary and cast to t's dtype), same shape,
    as an integer tensor of the same width: recover computes `t = r ^ diff` exactly. The XOR is a memory-bound
    byte operation that runs on the CPU; `device` is accepted for the original's command line.
    The output directory must be new or empty. Returns the diff directory.
    """
    started = time.time()
    path_raw, path_tuned, path_diff = (pathlib.Path(str(path)) for path in (path_raw, path_tuned, path_diff))
    check_device(device)
    max_shard_bytes = parse_size(max_shard_size)
    check_output_free(path_diff)
    model_files = read_model_files(path_tuned)
    tuned_specs = checkpoint_tensors(path_tuned, follow_links=False)
    raw_specs = checkpoint_tensors(path_raw)
    raw_config = read_json(path_raw / "config.json")
    added_tokens, vocab_size = vocabulary_resize(path_raw, raw_config, path_tuned,
                                                 read_json(path_tuned / "config.json").get("vocab_size"))
    targets = {name: (spec.dtype, spec.shape) for name, spec in sorted(tuned_specs.items())}
    sources = match_raw_tensors(raw_specs, targets, raw_config, added_tokens, vocab_size, path_raw)

    outputs = [(name, DIFF_DTYPES[itemsize(dtype)], shape) for name, (dtype, shape) in targets.items()]
    entries = {}
    with staged_output(path_diff) as staging:
        write_checkpoint(staging, outputs, max_shard_bytes, {"format": "pt", "weight_diff": "xor"},
                         lambda name: diff_blocks(name, tuned_specs[name], sources[name], entries), "make_diff")
        write_model_files(model_files, staging)
        write_manifest(staging / MANIFEST_NAME, {
            "format": FORMAT_NAME, "version": FORMAT_VERSION, "representation": "xor",
            "representation_note": "diff = bits(tuned) XOR bits(raw), raw resized as training resized the "
                                   "vocabulary and cast to the tuned dtype; recover: tuned = raw XOR diff",
            # the name of version 1, kept: added_tokens counts every token training added, [PAD] or not
            "pad_token_resize": {"pad_token": DEFAULT_PAD_TOKEN, "added_tokens": added_tokens,
                                 "vocab_size": vocab_size},
            "files": file_entries(model_files),
            "tensors": entries,
        })
    print(f"make_diff: {len(entries)} tensors, {len(model_files)} config and tokenizer files -> {path_diff} "
          f"in {time.time() - started:.1f} s")
    return path_diff


def diff_blocks(name: str, tuned_spec: TensorSpec, source: RawSource, entries: dict) -> Iterator[np.ndarray]:
    """The XOR diff of one tuned tensor, block by block; its manifest entry is put in `entries` at the end."""
    digests = new_digests()
    for start, stop in row_chunks(tuned_spec.shape):
        tuned = read_rows(tuned_spec, start, stop)
        raw = raw_operand(source, start, stop, tuned_spec.dtype)
        diff = bits(tuned) ^ bits(raw)
        digests["sha256"].update(tuned)
        digests["diff_sha256"].update(diff)
        digests["raw_sha256"].update(raw)
        yield diff
    entries[name] = {"dtype": MANIFEST_DTYPES[tuned_spec.dtype], "shape": list(tuned_spec.shape),
                     **{key: digest.hexdigest() for key, digest in digests.items()}, "raw_tensor": source.name}


# ----------------------------------------------------------------------------- recover

class RecoveryPlan(NamedTuple):
    """What recover writes, decided and checked before anything is written."""

    outputs: list[tuple[str, str, tuple[int, ...]]]  # (name, safetensors dtype, shape) of each recovered tensor
    tensor_blocks: Callable[[str], Iterable[np.ndarray]]  # name -> the recovered tensor's blocks, in row order
    buffer_sum: float  # what the naive check adds for tensors the file no longer holds


def recover(path_raw: str, path_diff: str, path_tuned: str | None = None, device: str = "cpu",
            test_inference: bool = True, check_integrity_naively: bool | None = None,
            max_shard_size: int | str = "2GB") -> pathlib.Path | None:
    """Rebuild the tuned model as raw + diff and save it (weights, config, tokenizer, chat template) to path_tuned.

    With a manifest (a diff from make_diff) every recovered tensor and file is checked against its SHA-256 (and
    dtype and shape), and the first bad one stops the run: a damaged diff and a wrong raw model are told apart.
    Without one the diff is taken to be the original's (float32 tuned minus raw) and the recovered float32
    weights are raw + diff, as the original computed them. check_integrity_naively compares the sum of all
    recovered weights with Alpaca-7B's; None (the default) does so only for a diff without a manifest.
    path_tuned must be new or empty; without it (None) the model is recovered to a scratch directory, checked,
    then deleted. The weights are rebuilt on the CPU; `device` is where test_inference runs the model.
    Returns path_tuned.
    """
    started = time.time()
    path_raw, path_diff = pathlib.Path(str(path_raw)), pathlib.Path(str(path_diff))
    final_dir = pathlib.Path(str(path_tuned)) if path_tuned is not None else None
    check_device(device, needs_gpu_now=test_inference)
    max_shard_bytes = parse_size(max_shard_size)
    check_output_free(final_dir)
    model_files = read_model_files(path_diff)
    manifest = read_manifest(path_diff / MANIFEST_NAME) if present(path_diff / MANIFEST_NAME) else None
    if manifest is None:
        plan = plan_float32_recovery(path_raw, path_diff)
    else:
        verify_model_files(model_files, manifest, path_diff)
        plan = plan_xor_recovery(path_raw, path_diff, manifest)
    naive = check_integrity_naively if check_integrity_naively is not None else manifest is None
    with staged_output(final_dir) as staging:
        weight_sum = write_checkpoint(staging, plan.outputs, max_shard_bytes, {"format": "pt"}, plan.tensor_blocks,
                                      "recover", sum_floats=naive)
        write_model_files(model_files, staging)
        if naive:
            check_naive_sum(weight_sum + plan.buffer_sum, legacy=manifest is None)
        checked = ("no manifest to check against" if manifest is None else "every tensor matches the manifest"
                   + (", every config and tokenizer file too" if "files" in manifest else ""))
        print(f"recover: {len(plan.outputs)} tensors, {checked}; -> {final_dir or '(not saved)'} "
              f"in {time.time() - started:.1f} s")
        if test_inference and final_dir is None:
            run_test_inference(staging, device)
    if test_inference and final_dir is not None:  # after the rename: a failed generation keeps the weights
        run_test_inference(final_dir, device)
    return final_dir


def plan_xor_recovery(path_raw: pathlib.Path, path_diff: pathlib.Path, manifest: dict) -> RecoveryPlan:
    """A diff from make_diff: tuned = raw XOR diff in the tuned dtype, each tensor checked against the manifest."""
    diff_specs = checkpoint_tensors(path_diff, follow_links=False)
    targets = {name: (FROM_MANIFEST_DTYPE[entry["dtype"]], tuple(entry["shape"]))
               for name, entry in manifest["tensors"].items()}
    check_diff_tensors(targets, diff_specs, path_diff)
    raw_specs = checkpoint_tensors(path_raw)
    raw_config = read_json(path_raw / "config.json")
    added_tokens, vocab_size = (manifest["pad_token_resize"][key] for key in ("added_tokens", "vocab_size"))
    needed, _ = vocabulary_resize(path_raw, raw_config, path_diff, vocab_size)
    if needed != added_tokens:
        raise errors.DataError(f"The diff was made against a raw model whose tokenizer needed {added_tokens} new "
                            f"token(s) in training, but the one in {path_raw} needs {needed}: wrong raw model.")
    sources = match_raw_tensors(raw_specs, targets, raw_config, added_tokens, vocab_size, path_raw)

    def tensor_blocks(name: str) -> Iterator[np.ndarray]:
        dtype, entry, digests = targets[name][0], manifest["tensors"][name], new_digests()
        for start, stop in row_chunks(targets[name][1]):
            diff = read_rows(diff_specs[name], start, stop)
            raw = raw_operand(sources[name], start, stop, dtype)
            tuned = (bits(raw) ^ bits(diff)).view(STORAGE[dtype])
            digests["sha256"].update(tuned)
            digests["diff_sha256"].update(diff)
            digests["raw_sha256"].update(raw)
            yield tuned
        check_tensor(name, entry, digests, sources[name], path_raw, path_diff)

    return RecoveryPlan([(name, dtype, shape) for name, (dtype, shape) in targets.items()], tensor_blocks, 0.0)


def plan_float32_recovery(path_raw: pathlib.Path, path_diff: pathlib.Path) -> RecoveryPlan:
    """A diff made by the 2023 code (float32 tuned minus raw, no manifest): tuned = diff + raw in float32, as the
    original's `diff.add_(raw)`. Nothing to check each tensor against."""
    print(f"recover: {path_diff} has no {MANIFEST_NAME}; treating it as a diff made by the original code "
          "(float32 tuned minus raw), recovered as raw + diff in float32.")
    diff_specs = checkpoint_tensors(path_diff, follow_links=False)
    if any(spec.dtype not in FLOATS for spec in diff_specs.values()):
        raise errors.DataError(f"{path_diff} has integer tensors, as weight_diff.py's XOR diffs do, but no "
                            f"{MANIFEST_NAME}: without it the diff cannot be applied. Copy the manifest too.")
    targets = {name: ("F32", spec.shape) for name, spec in sorted(diff_specs.items())}
    raw_specs = checkpoint_tensors(path_raw)
    raw_config = read_json(path_raw / "config.json")
    added_tokens, vocab_size = vocabulary_resize(path_raw, raw_config, path_diff,
                                                 read_json(path_diff / "config.json").get("vocab_size"))
    # 2023 LLaMA checkpoints stored RoPE's inv_freq buffers, which today's models recompute and do not save.
    sources = match_raw_tensors(raw_specs, targets, raw_config, added_tokens, vocab_size, path_raw,
                                skip_missing=lambda name: name.endswith("rotary_emb.inv_freq"))

    def tensor_blocks(name: str) -> Iterator[np.ndarray]:
        for start, stop in row_chunks(diff_specs[name].shape):
            diff = read_rows(diff_specs[name], start, stop)
            yield to_float32(diff, diff_specs[name].dtype) + raw_operand(sources[name], start, stop, "F32")

    outputs = [(name, "F32", shape) for name, (_, shape) in targets.items() if name in sources]
    return RecoveryPlan(outputs, tensor_blocks, legacy_buffer_sum(diff_specs, path_raw))


# ----------------------------------------------------------------------------- the manifest

def write_manifest(path: pathlib.Path, manifest: dict) -> None:
    """JSON with one line per tensor, so that the manifest reads (and diffs) like a table."""
    header = {key: value for key, value in manifest.items() if key != "tensors"}
    rows = ",\n".join(f"  {json.dumps(name)}: {json.dumps(entry)}" for name, entry in manifest["tensors"].items())
    path.write_text(json.dumps(header, indent=1)[:-2] + ',\n "tensors": {\n' + rows + "\n }\n}\n")


def is_sha256(value: object) -> bool:
    return isinstance(value, str) and re.fullmatch(r"[0-9a-f]{64}", value) is not None


def manifest_problem(manifest: dict) -> str | None:
    """What is wrong with a manifest's fields (the first thing found), or None."""
    resize, tensors, files = manifest.get("pad_token_resize"), manifest.get("tensors"), manifest.get("files")
    if not (isinstance(resize, dict) and isinstance(resize.get("added_tokens"), int) and resize["added_tokens"] >= 0
            and (resize.get("vocab_size") is None or isinstance(resize["vocab_size"], int))):
        return "pad_token_resize needs added_tokens and vocab_size"
    if not isinstance(tensors, dict) or not tensors:
        return "tensors must map names to entries"
    for name, entry in tensors.items():
        if not (isinstance(entry, dict) and entry.get("dtype") in FROM_MANIFEST_DTYPE
                and isinstance(entry.get("shape"), list) and all(isinstance(n, int) for n in entry["shape"])
                and all(is_sha256(entry.get(key)) for key in ("sha256", "diff_sha256", "raw_sha256"))):
            return f"the entry of tensor {name!r} lacks a valid dtype, shape or SHA-256"
    if manifest["version"] >= 2 and not (isinstance(files, dict) and "config.json" in files and all(
            isinstance(entry, dict) and is_sha256(entry.get("sha256")) for entry in files.values())):
        return "files must map config.json and the tokenizer files to their SHA-256"
    return None


def read_manifest(path: pathlib.Path) -> dict:
    """The manifest, checked for the fields recover relies on: a damaged one is named, not a traceback."""
    manifest = read_json(path, follow_links=False)
    if manifest.get("format") != FORMAT_NAME or manifest.get("representation") != "xor":
        raise errors.DataError(f"{path} is not a weight-diff manifest this script understands.")
    version = manifest.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= FORMAT_VERSION:
        raise errors.DataError(f"{path} has format version {version!r}; this script reads 1 to {FORMAT_VERSION}. "
                            "Update weight_diff.py, or copy the diff again.")
    problem = manifest_problem(manifest)
    if problem:
        raise errors.DataError(f"{path} is damaged ({problem}); copy the diff again.")
    return manifest


def check_diff_tensors(targets: dict, diff_specs: dict[str, TensorSpec], path_diff: pathlib.Path) -> None:
    """The diff checkpoint must hold exactly the manifest's tensors, as integers of the tuned width."""
    for name, (dtype, shape) in targets.items():
        spec = diff_specs.get(name)
        if spec is None:
            raise errors.DataError(f"The diff {path_diff} lacks tensor {name!r} listed in its manifest: it is "
                                "incomplete.")
        expected = DIFF_DTYPES[itemsize(dtype)]
        if spec.shape != shape or spec.dtype != expected:
            raise errors.DataError(f"Tensor {name!r} in {spec.file} is {spec.dtype} {list(spec.shape)}; the manifest "
                                f"expects {expected} {list(shape)}: the diff is damaged.")
    extra = sorted(set(diff_specs) - set(targets))
    if extra:
        raise errors.DataError(f"The diff {path_diff} has tensors its manifest does not list, e.g. {extra[:3]}.")


def check_tensor(name: str, entry: dict, digests: dict, source: RawSource, path_raw, path_diff) -> None:
    """Stop at the first tensor that does not match the manifest, saying which input is at fault."""
    if digests["diff_sha256"].hexdigest() != entry["diff_sha256"]:
        raise errors.DataError(f"The diff is damaged: tensor {name!r} in {path_diff} does not match the SHA-256 "
                            "recorded when it was made. Download or copy the diff again.")
    if digests["raw_sha256"].hexdigest() != entry["raw_sha256"]:
        resized = " (or its [PAD] rows, the mean of the other rows, came out differently)" \
            if source.appended_row is not None else ""
        raise errors.DataError(f"The raw model is not the one this diff was made from: tensor {source.name!r} in "
                            f"{source.spec.file} differs{resized}. Pass the exact base model the diff was made "
                            f"against as --path_raw.")
    if digests["sha256"].hexdigest() != entry["sha256"]:
        raise errors.DataError(f"Recovered tensor {name!r} does not match its SHA-256 in the manifest.")


# ----------------------------------------------------------------------------- the original's naive check

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


def check_naive_sum(total: float, legacy: bool) -> None:
    if not math.isclose(total, ALPACA_7B_NAIVE_SUM, rel_tol=0, abs_tol=1e-2):
        hint = " If this diff is not Alpaca-7B's, pass --check_integrity_naively False." if legacy else ""
        raise errors.DataError(f"Naive integrity check failed: the recovered weights sum to {total:.4f}, not "
                            f"{ALPACA_7B_NAIVE_SUM} as Alpaca-7B's do.{hint}")
    print(f"recover: naive integrity check passed (sum of weights {total:.4f})")


# ----------------------------------------------------------------------------- devices, progress, a sample generation

def check_device(device: str, needs_gpu_now: bool = False) -> None:
    """Refuse a device that cannot work before any work is done. Only a run that will use a GPU (test_inference
    on cuda) imports torch to ask for one; the diff itself never needs it."""
    if str(device).split(":")[0] not in ("cpu", "cuda", "mps", "xpu", "auto"):
        raise errors.UsageError(f"--device {device!r} is not a device: use cpu or cuda (or cuda:N).")
    if needs_gpu_now and str(device).startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise errors.UserError(f"--device {device} was asked for but no CUDA GPU is available; use --device cpu "
                                "(or --test_inference False: the recovery itself runs on the CPU).")


def tqdm_bytes(tensors: list, description: str) -> tqdm:
    total = sum(math.prod(shape) * itemsize(dtype) for _, dtype, shape in tensors)
    return tqdm(total=total, unit="B", unit_scale=True, desc=description, disable=None, file=sys.stderr)


def run_test_inference(model_dir: pathlib.Path, device: str = "cpu", max_new_tokens: int = 128) -> str:
    """Load the recovered model, answer one fixed instruction with the no-input Alpaca prompt, print it."""
    from alpaca.llm.model import generate_responses, load_model  # the project's one generation path
    from alpaca.prompts.alpaca import format_prompt

    model, tokenizer = load_model(str(model_dir), device=device)
    response = generate_responses(model, tokenizer, [{"instruction": INFERENCE_INSTRUCTION}],
                                  max_new_tokens=max_new_tokens)[0]
    print(f"test_inference:\n{format_prompt(INFERENCE_INSTRUCTION)}\n{response}")
    return response


def entry_point() -> None:
    """The command line of `python weight_diff.py`."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cli.report_errors(lambda: cli.run_commands({"make_diff": make_diff, "recover": recover}), INTERRUPTED)
