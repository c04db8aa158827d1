"""Publish a fine-tune as a weight diff (tuned - raw) and recover it (raw + diff).

    python weight_diff.py make_diff --path_raw RAW --path_tuned TUNED --path_diff DIFF
    python weight_diff.py recover --path_raw RAW --path_diff DIFF --path_tuned OUT [--test_inference True]

The code lives in alpaca/weights/; docs/weight_diff.md explains the format.
"""

from alpaca.weights.diff import (  # noqa: F401  (the 2023 names, importable from here)
    entry_point,
    make_diff,
    recover,
)

if __name__ == "__main__":
    entry_point()
