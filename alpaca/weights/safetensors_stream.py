"""Safetensors checkpoints read and written a block of rows at a time, with numpy and nothing heavier.

A safetensors file is an 8-byte little-endian header length, a JSON header (name -> dtype, shape, byte
range) and the raw little-endian tensor bytes. Reading those byte ranges with plain file reads, and
writing a header first and then the bytes tensor by tensor, lets weight_diff.py process a model of any
size in a few MiB of working memory, without importing torch or transformers (~350 MiB by themselves).

Every file is checked before it is opened (a regular file: a FIFO would block forever, a device never end;
no symbolic link where links are not followed; shards next to their index), and every header as the format
defines it (size, field types, byte ranges that tile the data exactly), so that a damaged or hostile file
ends in one sentence naming it, before any work.
"""

import json
import math
import os
import pathlib
import stat
from typing import NamedTuple

import numpy as np

from alpaca.errors import DataError, MissingPathError, UsageError

ELEMENTS_PER_BLOCK = 1 << 20  # 1M elements (4 MB in float32) per piece of work bounds memory
MAX_HEADER_BYTES = 100_000_000  # the reference implementation's limit on a header's size (100 MB)
INDEX_NAME = "model.safetensors.index.json"

# Tensors are handled by their safetensors dtype name ("F32", "BF16", ...) and held in numpy as the
# little-endian type below; numpy has no bfloat16, so bfloat16 tensors are held as their 16-bit patterns.
STORAGE = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2",
    "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?",
}
FLOATS = ("F64", "F32", "F16", "BF16")
BITS = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def itemsize(dtype: str) -> int:
    return np.dtype(STORAGE[dtype]).itemsize


class TensorSpec(NamedTuple):
    """Where a tensor's bytes lie in a safetensors file and what they are, from the file's header."""

    file: pathlib.Path
    dtype: str  # safetensors name: "F32", "BF16", ...
    shape: tuple[int, ...]
    offset: int  # of the first byte, from the start of the file


# ----------------------------------------------------------------------------- files a checkpoint is made of

def present(path: pathlib.Path) -> bool:
    """Whether anything is at `path`, a dangling symbolic link included (`exists()` says False for one)."""
    return path.is_symlink() or path.exists()


def check_regular_file(path: pathlib.Path, follow_links: bool = True) -> None:
    """Refuse what is not a plain file, before it is opened: a FIFO would block forever, a device (/dev/zero)
    never ends, and where links are not followed (a directory whose files are copied into a model: a diff, a
    tuned model) a link could bring a file from elsewhere (a key, /etc/passwd) into a model that gets shared."""
    if path.is_symlink() and not follow_links:
        raise DataError(f"{path} is a symbolic link (to {os.readlink(path)}); only regular files are read from "
                            f"{path.parent}, so that no file from elsewhere ends up in a model. If you trust its "
                            "target, replace the link with a copy of the file.")
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        dangling = " (a symbolic link to nowhere)" if path.is_symlink() else ""
        raise MissingPathError(f"{path} does not exist{dangling}.") from None
    if not stat.S_ISREG(mode):
        kind = ("a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode)
                else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket or other special file")
        raise DataError(f"{path} is {kind}, not a regular file; a model directory holds regular files only.")


def read_json(path: pathlib.Path, follow_links: bool = True) -> dict:
    """A JSON object from a regular file; a missing, damaged or non-UTF-8 file is a sentence naming it."""
    check_regular_file(path, follow_links)
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as error:
        raise DataError(f"{path} is not UTF-8 text (byte {error.start} cannot be decoded): the file is damaged; "
                            "get it again.") from None
    except json.JSONDecodeError as error:
        raise DataError(f"{path} is not valid JSON ({error.msg} at line {error.lineno}, column {error.colno}): "
                            "the file is damaged; get it again.") from None
    if not isinstance(value, dict):
        raise DataError(f"{path} holds a JSON {type(value).__name__}, where a JSON object was expected: the file "
                            "is damaged or not what its name says.")
    return value


# ----------------------------------------------------------------------------- reading checkpoints

def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def header_entry(file: pathlib.Path, name: str, entry: object) -> tuple[str, tuple[int, ...], int, int]:
    """(dtype, shape, begin, end) of one header entry, its fields checked as the format defines them."""
    def damaged(what: str) -> DataError:
        return DataError(f"{file} has a damaged safetensors header: tensor {name!r} {what}.")

    if not isinstance(entry, dict):
        raise damaged(f"is described by a JSON {type(entry).__name__}, not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str):
        raise damaged(f"has dtype {dtype!r}, not a name such as \"F32\"")
    if dtype not in STORAGE:
        raise DataError(f"{file}: tensor {name!r} has dtype {dtype}, which is not supported "
                            f"(supported: {', '.join(STORAGE)}).")
    if not isinstance(shape, list) or not all(_is_count(n) for n in shape):
        raise damaged(f"has shape {shape!r}, not a list of sizes (whole numbers, 0 or more)")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(n) for n in offsets) \
            or offsets[0] > offsets[1]:
        raise damaged(f"has data_offsets {offsets!r}, not [begin, end] with 0 <= begin <= end")
    if offsets[1] - offsets[0] != math.prod(shape) * itemsize(dtype):
        raise damaged(f"has data_offsets {offsets} ({offsets[1] - offsets[0]} bytes), but a {dtype} tensor of "
                      f"shape {shape} takes {math.prod(shape) * itemsize(dtype)} bytes")
    return dtype, tuple(shape), offsets[0], offsets[1]


def check_byte_ranges(file: pathlib.Path, ranges: list[tuple[int, int, str]], data_size: int) -> None:
    """The tensors' byte ranges must tile the data exactly, as the format requires: no overlap (two tensors
    sharing bytes), no gap, nothing past the end of the file and nothing after the last tensor."""
    expected, previous = 0, None
    for begin, end, name in sorted(ranges):
        if begin < expected:
            raise DataError(f"{file} has a damaged safetensors header: the bytes of tensor {name!r} "
                                f"[{begin}, {end}) overlap those of tensor {previous!r}.")
        if begin > expected:
            raise DataError(f"{file} has a damaged safetensors header: bytes [{expected}, {begin}) before "
                                f"tensor {name!r} belong to no tensor.")
        expected, previous = end, name
    if expected > data_size:
        raise DataError(f"{file}: tensor {previous!r} does not fit in the file ({expected} bytes of data "
                            f"declared, {data_size} present): it is damaged or truncated.")
    if expected < data_size:
        raise DataError(f"{file} has {data_size - expected} bytes after its last tensor that its header does "
                            "not account for: it is damaged or not a safetensors file.")


def read_safetensors_header(file: pathlib.Path, follow_links: bool = True) -> dict[str, TensorSpec]:
    """The tensors of one safetensors file: an 8-byte little-endian header length, a JSON header, the data.
    The header is checked as the reference implementation checks it (at most 100 MB, every field of the
    right type, byte ranges that tile the data) before anything else is read."""
    check_regular_file(file, follow_links)
    size = file.stat().st_size
    with open(file, "rb") as handle:
        prefix = handle.read(8)
        length = int.from_bytes(prefix, "little")
        if len(prefix) == 8 and length > MAX_HEADER_BYTES:
            raise DataError(f"{file} declares a safetensors header of {length} bytes, over the format's limit of "
                                f"{MAX_HEADER_BYTES // 10**6} MB: it is damaged or not a safetensors file.")
        if len(prefix) < 8 or not 2 <= length <= size - 8:
            raise DataError(f"{file} is not a safetensors file (or is truncated): header length {length}, "
                                f"file size {size} bytes.")
        text = handle.read(length)
    try:
        header = json.loads(text.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{file} has a damaged safetensors header ({error}).") from None
    if not isinstance(header, dict):
        raise DataError(f"{file} has a damaged safetensors header: a JSON {type(header).__name__}, not an object.")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise DataError(f"{file} has a damaged safetensors header: __metadata__ must map names to strings.")
    specs, ranges = {}, []
    for name, entry in header.items():
        dtype, shape, begin, end = header_entry(file, name, entry)
        specs[name] = TensorSpec(file, dtype, shape, 8 + length + begin)
        ranges.append((begin, end, name))
    check_byte_ranges(file, ranges, size - 8 - length)
    return specs


def shard_files(index: pathlib.Path) -> dict[str, pathlib.Path]:
    """Tensor name -> shard file, from a sharded checkpoint's index. A shard must be a file next to the index: a
    name with a directory in it (`../../etc/passwd`, an absolute path) is refused before anything is opened."""
    weight_map = read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise DataError(f"{index} has no weight_map from tensor names to shard files: the index is damaged.")
    for shard in sorted(set(weight_map.values())):
        if pathlib.PurePath(shard).name != shard or shard in (".", "..") or "\\" in shard:
            raise DataError(f"{index} names the shard {shard!r}, which is not a file in {index.parent}; a "
                                "checkpoint's shards lie next to its index. The index is damaged or hostile: get "
                                "the checkpoint again.")
    return {name: index.parent / shard for name, shard in weight_map.items()}


def checkpoint_tensors(model_dir: pathlib.Path, follow_links: bool = True) -> dict[str, TensorSpec]:
    """Map every tensor name of a safetensors checkpoint (single file or sharded) to its spec.

    follow_links=False refuses symbolic links among the files (see `check_regular_file`)."""
    if not model_dir.is_dir():
        raise MissingPathError(f"{model_dir} does not exist or is not a directory.")
    index = model_dir / INDEX_NAME
    if present(index):
        check_regular_file(index, follow_links)
        listed = shard_files(index)
        files = sorted(set(listed.values()))
    elif present(model_dir / "model.safetensors"):
        listed, files = {}, [model_dir / "model.safetensors"]
    elif list(model_dir.glob("*.bin")):
        raise MissingPathError(
            f"{model_dir} holds PyTorch pickle weights (*.bin) but no safetensors; only safetensors are read, as "
            f"pickles can run code when loaded. If you trust the files, convert them once, tokenizer included: "
            f"`python -c \"from transformers import AutoModelForCausalLM as M, AutoTokenizer as T; d = '{model_dir}'; "
            f"M.from_pretrained(d, dtype='auto').save_pretrained(d + '-safetensors'); "
            f"T.from_pretrained(d).save_pretrained(d + '-safetensors')\"`, and pass the new directory.")
    else:
        raise MissingPathError(f"{model_dir} has no model.safetensors or {INDEX_NAME}.")
    specs = {}
    for file in files:
        if not present(file):
            raise MissingPathError(f"{file} is listed in {index} but missing: the checkpoint is incomplete.")
        for name, spec in read_safetensors_header(file, follow_links).items():
            if name in specs:
                raise DataError(f"Tensor {name!r} is in both {specs[name].file} and {file}: the checkpoint is "
                                    "damaged.")
            specs[name] = spec
    for name, file in listed.items():
        if name not in specs or specs[name].file != file:
            raise DataError(f"{index} puts tensor {name!r} in {file.name}, which does not hold it: the "
                                "checkpoint is damaged or incomplete.")
    return specs


def read_rows(spec: TensorSpec, start: int | None = None, stop: int | None = None) -> np.ndarray:
    """Rows [start, stop) of a tensor (all of it when start is None), flattened, in its storage type.
    Read with plain file reads, not a memory map, so that no page of the file stays resident."""
    row_elements = math.prod(spec.shape[1:])
    first, count = (0, math.prod(spec.shape)) if start is None else (start, (stop - start) * row_elements)
    with open(spec.file, "rb") as handle:
        handle.seek(spec.offset + first * row_elements * itemsize(spec.dtype))
        data = np.fromfile(handle, dtype=STORAGE[spec.dtype], count=count)
    if data.size != count:
        raise DataError(f"{spec.file} ended before the data of a tensor did: the file is truncated.")
    return data


def row_chunks(shape: tuple[int, ...]) -> list[tuple[int | None, int | None]]:
    """Split a tensor along its first dimension into blocks of about ELEMENTS_PER_BLOCK elements."""
    if not shape or shape[0] == 0:
        return [(None, None)]
    rows_per_chunk = max(1, ELEMENTS_PER_BLOCK // max(1, math.prod(shape[1:])))
    return [(start, min(start + rows_per_chunk, shape[0])) for start in range(0, shape[0], rows_per_chunk)]


def bits(array: np.ndarray) -> np.ndarray:
    """The array's bit patterns as unsigned integers of the same width (a view, no copy)."""
    return array.view(BITS[array.itemsize])


# ----------------------------------------------------------------------------- float conversions

def to_float32(array: np.ndarray, dtype: str) -> np.ndarray:
    """Exact for float16 and bfloat16 (a bfloat16 is the top half of a float32); float64 rounds to nearest even."""
    if dtype == "BF16":
        return (array.astype(np.uint32) << 16).view(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        return array.astype(np.float32)


def from_float32(array: np.ndarray, dtype: str) -> np.ndarray:
    """float32 -> dtype with round-to-nearest-even, as PyTorch casts numbers (a NaN becomes the quiet NaN 0x7FC0)."""
    if dtype != "BF16":
        with np.errstate(over="ignore", invalid="ignore"):
            return array.astype(STORAGE[dtype])
    patterns = array.view(np.uint32)
    rounded = ((patterns + (((patterns >> 16) & 1) + 0x7FFF)) >> 16).astype(np.uint16)
    return np.where(np.isnan(array), np.uint16(0x7FC0), rounded)


# ----------------------------------------------------------------------------- writing checkpoints

def parse_size(size: int | str) -> int:
    """'2GB', '500MB', '4GiB' or a number of bytes -> bytes."""
    if isinstance(size, int):
        return size
    text = size.strip().upper()
    units = {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "KB": 10**3, "MB": 10**6, "GB": 10**9, "B": 1}
    try:
        for unit, factor in units.items():
            if text.endswith(unit):
                return int(float(text[: -len(unit)]) * factor)
        return int(text)
    except ValueError:
        raise UsageError(f"--max_shard_size {size!r}: give a size such as 2GB, 500MB, 4GiB or a number of bytes.") \
            from None


def plan_shards(tensors: list[tuple[str, str, tuple[int, ...]]], max_shard_bytes: int) -> list[list]:
    """Group (name, dtype, shape) tensors, in order, into shards of at most max_shard_bytes (a bigger tensor
    gets a shard alone)."""
    shards, current, current_bytes = [], [], 0
    for name, dtype, shape in tensors:
        size = math.prod(shape) * itemsize(dtype)
        if current and current_bytes + size > max_shard_bytes:
            shards.append(current)
            current, current_bytes = [], 0
        current.append((name, dtype, shape))
        current_bytes += size
    return shards + [current] if current else shards


def write_header(handle, tensors: list[tuple[str, str, tuple[int, ...]]], metadata: dict[str, str]) -> None:
    """Write a safetensors header for tensors whose bytes will follow in this order, so that a shard can be
    written one tensor at a time instead of being assembled in memory first."""
    header, offset = {"__metadata__": metadata}, 0
    for name, dtype, shape in tensors:
        size = math.prod(shape) * itemsize(dtype)
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
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
    total = sum(math.prod(shape) * itemsize(dtype) for shard in shards for _, dtype, shape in shard)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
