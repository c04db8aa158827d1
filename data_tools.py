"""Inspect and clean instruction data: stats, clean, rate, contamination, convert.

    python data_tools.py stats regen.json
    python data_tools.py clean regen.json --output clean.json

The code lives in alpaca/data/; docs/data_tools.md explains each command.
"""

from alpaca.data.tools import (  # noqa: F401  (the 2023 names, importable from here)
    cache,
    clean,
    contamination,
    convert,
    entry_point,
    rate,
    stats,
)

if __name__ == "__main__":
    entry_point()
