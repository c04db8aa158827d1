"""The raw operand of a weight diff: the base model's tensors as fine-tuning started from them.

train.py, like the 2023 original's smart_tokenizer_and_embedding_resize, adds [PAD] (and each of </s>, <s>,
<unk> the raw tokenizer lacks) and resizes the input and output embeddings to len(tokenizer): the rows of the
added tokens hold the mean of the old rows, spare rows are dropped. A diff is taken against that resized raw
model, so make_diff and recover must rebuild it bit for bit, and without loading the model. This module does
that: it reads which tokens training added from the tokenizer files (no transformers, no torch), pairs every
tuned tensor with its raw tensor, computes the mean row in PyTorch's order of summation, and streams the
resized raw tensor a block of rows at a time. weight_diff.py holds the commands, the manifest and the checks.
"""

import math
import pathlib
import re
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np

from alpaca.errors import DataError, MissingPathError
from alpaca.weights.safetensors_stream import (
    FLOATS,
    TensorSpec,
    from_float32,
    present,
    read_json,
    read_rows,
    row_chunks,
    to_float32,
)

SPECIAL_TOKEN_ROLES = ("pad_token", "eos_token", "bos_token", "unk_token")  # those train.py adds when missing
# Input and output embeddings (LLaMA, GPT-NeoX, GPT-2, BLOOM, ...): the tensors a vocabulary resize changes.
EMBEDDING_NAME = re.compile(r"(^|\.)(embed_tokens|embed_in|embed_out|wte|word_embeddings|lm_head|output)\.weight$")
# The tokenizer files a model directory may hold (weight_diff.py copies them into a diff and its output).
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "merges.txt", "vocab.txt", "chat_template.jinja", "chat_template.json",
)

# The names the manifest uses (PyTorch's), as in `str(torch.bfloat16)` without "torch."; messages here use them too.
MANIFEST_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
}


class RawSource(NamedTuple):
    """How to build the raw operand of one output tensor: rows [0, kept_rows) of `spec`, then copies of
    `appended_row` (the mean of the kept rows, float32) for the tokens the vocabulary resize added."""

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

def declared_special_tokens(model_dir: pathlib.Path) -> dict[str, str | None]:
    """The pad, eos, bos and unk tokens as a tokenizer's saved files declare them (tokenizer_config.json, then
    special_tokens_map.json); None where neither sets one, or sets the empty string (which train.py also counts
    as missing). Read from the files rather than by loading the tokenizer, which would import transformers and
    torch: more memory than the whole diff needs."""
    declared = [model_dir / name for name in ("tokenizer_config.json", "special_tokens_map.json")]
    if not any(present(path) for path in declared) and not any(present(model_dir / n) for n in TOKENIZER_FILES):
        raise MissingPathError(f"{model_dir} has no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...); "
                                   "the model directory must hold its tokenizer.")
    tokens = dict.fromkeys(SPECIAL_TOKEN_ROLES)
    for path in reversed(declared):  # tokenizer_config.json wins
        for role, token in (read_json(path) if present(path) else {}).items():
            token = token.get("content") if isinstance(token, dict) else token
            if role in tokens and isinstance(token, str) and token:
                tokens[role] = token
    return tokens


def added_token_ids(model_dir: pathlib.Path) -> dict[str, int]:
    """Content -> id of the tokens a tokenizer's files list as added to its base vocabulary (tokenizer.json's
    added_tokens, tokenizer_config.json's added_tokens_decoder, added_tokens.json)."""
    ids = {}
    is_id = lambda value: isinstance(value, int) and not isinstance(value, bool) and value >= 0  # noqa: E731
    path = model_dir / "tokenizer.json"
    if present(path):
        tokens = read_json(path).get("added_tokens", [])
        if not isinstance(tokens, list) or not all(
                isinstance(t, dict) and isinstance(t.get("content"), str) and is_id(t.get("id")) for t in tokens):
            raise DataError(f"{path}: added_tokens is not a list of {{id, content}} objects; the file is damaged.")
        ids.update({t["content"]: t["id"] for t in tokens})
    path = model_dir / "tokenizer_config.json"
    if present(path):
        decoder = read_json(path).get("added_tokens_decoder", {})
        if not isinstance(decoder, dict) or not all(str(i).isdigit() for i in decoder):
            raise DataError(f"{path}: added_tokens_decoder does not map token ids to tokens; the file is damaged.")
        ids.update({t["content"]: int(i) for i, t in decoder.items() if isinstance(t, dict) and "content" in t})
    path = model_dir / "added_tokens.json"
    if present(path):
        added = read_json(path)
        if not all(is_id(i) for i in added.values()):
            raise DataError(f"{path} does not map tokens to ids; the file is damaged.")
        ids.update(added)
    return ids


def vocabulary_resize(path_raw: pathlib.Path, raw_config: dict, tuned_dir: pathlib.Path,
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
    its file: its input embedding serves. Raises DataError naming the first tensor that does not match."""
    raw_rows = raw_config.get("vocab_size")
    resizing = isinstance(vocab_size, int) and (added_tokens > 0 or vocab_size != raw_rows)
    kept_rows = vocab_size - added_tokens if resizing else raw_rows
    if resizing and (raw_rows is None or kept_rows > raw_rows):
        raise DataError(f"{path_raw}: the raw embeddings have {raw_rows} rows, but the tuned model's vocabulary "
                            f"has {vocab_size} tokens, {added_tokens} of them added in training: the tuned model was "
                            "not trained from this raw model.")
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
                raise DataError(f"Tensor {name!r} is in the tuned model but not in the raw model {path_raw}: "
                                    "is it the base model this diff belongs to?")
        spec = raw_specs[raw_name]
        resized = resizing and raw_name in embeddings
        expected = (vocab_size, *spec.shape[1:]) if resized else spec.shape
        if tuple(shape) != tuple(expected):
            raise DataError(f"Tensor {name!r} has shape {list(shape)} in the tuned model but the raw model "
                                f"{path_raw} gives {list(expected)}" + (" after the resize" if resized else "")
                                + ": these are not the same architecture.")
        if (spec.dtype in FLOATS) != (dtype in FLOATS) or (dtype not in FLOATS and spec.dtype != dtype):
            raise DataError(f"Tensor {name!r} is {MANIFEST_DTYPES[dtype]} in the tuned model but "
                                f"{MANIFEST_DTYPES[spec.dtype]} in {path_raw}.")
        if resized and added_tokens and raw_name not in means:
            means[raw_name] = mean_of_rows(spec, kept_rows)
        rows = kept_rows if resized else (shape[0] if shape else 0)
        sources[name] = RawSource(spec, raw_name, rows, means.get(raw_name) if resized else None)
        used.add(raw_name)
    unused = sorted(set(raw_specs) - used - set(embeddings))
    if unused:
        raise DataError(f"The raw model {path_raw} has tensors the tuned model lacks, e.g. {unused[:3]}: "
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
