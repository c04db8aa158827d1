"""Safetensors checkpoints read and written a block of rows at a time, with numpy and nothing heavier.

A safetensors file is an 8-byte little-endian header length, a JSON header (name -> dtype, shape, byte
range) and the raw little-endian tensor bytes. Reading those byte ranges with plain file reads, and
writing a header first and then the bytes tensor by tensor, lets weight_diff.py process a model of any
size in a few MiB of working memory, without importing torch or transformers (~350 MiB by themselves).
"""

import json
import math
import pathlib
from typing import NamedTuple

import numpy as np

ROWS_PER_CHUNK_ELEMENTS = 1 << 20  # 1M elements (4 MB in float32) per piece of work bounds memory

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


# ----------------------------------------------------------------------------- reading checkpoints

def read_safetensors_header(file: pathlib.Path) -> dict[str, TensorSpec]:
    """The tensors of one safetensors file: an 8-byte little-endian header length, a JSON header, the data."""
    size = file.stat().st_size
    with open(file, "rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        if not 2 <= length <= size - 8:
            raise ValueError(f"{file} is not a safetensors file (or is truncated): header length {length}.")
        try:
            header = json.loads(handle.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{file} has a damaged safetensors header ({error}).") from error
    specs = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if entry["dtype"] not in STORAGE:
            raise ValueError(f"{file}: tensor {name!r} has dtype {entry['dtype']}, which is not supported.")
        begin, end = entry["data_offsets"]
        shape = tuple(entry["shape"])
        if end - begin != math.prod(shape) * itemsize(entry["dtype"]) or 8 + length + end > size:
            raise ValueError(f"{file}: tensor {name!r} does not fit in the file: it is damaged or truncated.")
        specs[name] = TensorSpec(file, entry["dtype"], shape, 8 + length + begin)
    return specs


def checkpoint_tensors(model_dir: pathlib.Path) -> dict[str, TensorSpec]:
    """Map every tensor name of a safetensors checkpoint (single file or sharded) to its spec."""
    if not model_dir.is_dir():
        raise FileNotFoundError(f"{model_dir} does not exist or is not a directory.")
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = sorted({model_dir / shard for shard in weight_map.values()})
    elif (model_dir / "model.safetensors").exists():
        files = [model_dir / "model.safetensors"]
    elif list(model_dir.glob("*.bin")):
        raise FileNotFoundError(
            f"{model_dir} holds PyTorch pickle weights (*.bin) but no safetensors; only safetensors are read, as "
            f"pickles can run code when loaded. If you trust the files, convert them once, tokenizer included: "
            f"`python -c \"from transformers import AutoModelForCausalLM as M, AutoTokenizer as T; d = '{model_dir}'; "
            f"M.from_pretrained(d, dtype='auto').save_pretrained(d + '-safetensors'); "
            f"T.from_pretrained(d).save_pretrained(d + '-safetensors')\"`, and pass the new directory.")
    else:
        raise FileNotFoundError(f"{model_dir} has no model.safetensors or model.safetensors.index.json.")
    specs = {}
    for file in files:
        if not file.exists():
            raise FileNotFoundError(f"{file} is listed in {index} but missing: the checkpoint is incomplete.")
        specs.update(read_safetensors_header(file))
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
        raise ValueError(f"{spec.file} ended before the data of a tensor did: the file is truncated.")
    return data


def row_chunks(shape: tuple[int, ...]) -> list[tuple[int | None, int | None]]:
    """Split a tensor along its first dimension into blocks of about ROWS_PER_CHUNK_ELEMENTS elements."""
    if not shape or shape[0] == 0:
        return [(None, None)]
    rows_per_chunk = max(1, ROWS_PER_CHUNK_ELEMENTS // max(1, math.prod(shape[1:])))
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
        raise ValueError(f"--max_shard_size {size!r}: give a size such as 2GB, 500MB, 4GiB or a number of bytes.") \
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
