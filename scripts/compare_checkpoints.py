"""Check that two safetensors checkpoints hold bit-identical tensors.

    python scripts/compare_checkpoints.py DIR_A DIR_B

Reads one tensor at a time (single-file or sharded checkpoints), so it needs little memory.
Exits 1 naming the first tensor that differs in name, dtype, shape or any bit.
"""

import json
import pathlib
import sys

import torch
from safetensors import safe_open


def tensor_files(model_dir: pathlib.Path) -> dict[str, pathlib.Path]:
    """Map each tensor name to the safetensors file that holds it."""
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: model_dir / shard for name, shard in weight_map.items()}
    single = model_dir / "model.safetensors"
    if not single.exists():
        sys.exit(f"{model_dir}: no model.safetensors or model.safetensors.index.json")
    with safe_open(str(single), "pt") as f:
        return {name: single for name in f.keys()}


def first_difference(dir_a: str, dir_b: str) -> str | None:
    """None when the checkpoints are bit-identical, else a sentence naming the first difference."""
    files_a, files_b = tensor_files(pathlib.Path(dir_a)), tensor_files(pathlib.Path(dir_b))
    if set(files_a) != set(files_b):
        return f"tensor names differ: only in A {sorted(set(files_a) - set(files_b))[:5]}, " \
               f"only in B {sorted(set(files_b) - set(files_a))[:5]}"
    for name in sorted(files_a):
        with safe_open(str(files_a[name]), "pt") as fa, safe_open(str(files_b[name]), "pt") as fb:
            a, b = fa.get_tensor(name), fb.get_tensor(name)
        if a.dtype != b.dtype or a.shape != b.shape:
            return f"{name}: {a.dtype} {tuple(a.shape)} vs {b.dtype} {tuple(b.shape)}"
        if not torch.equal(bits(a), bits(b)):
            return f"{name}: values differ"
    return None


def bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bit patterns as integers, so that NaN payloads and -0.0 compare exactly."""
    as_int = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    return t.contiguous().view(as_int)


def main() -> None:
    if len(sys.argv) == 2 and sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        return
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)  # a command-line mistake
    difference = first_difference(sys.argv[1], sys.argv[2])
    if difference:
        sys.exit(f"NOT identical: {difference}")
    print(f"bit-exact: every tensor of {sys.argv[2]} equals {sys.argv[1]}")


if __name__ == "__main__":
    main()
