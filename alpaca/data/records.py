"""The records the data tools read and write: what counts as an input, the task the generator's filters see, the
JSON/JSONL output of a command (atomic, never over an input). Shared by the commands (tools.py), the statistics
(stats.py) and the rater (rating.py)."""

import json
import re

from alpaca import files
from alpaca.errors import DataError, UsageError

NOINPUT_MARKER = "<noinput>"
# Control characters (Unicode category Cc: C0, DEL, C1) except tab and newline; a stray \r goes too.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
FIELDS = ("instruction", "input", "output")

def load_inputs(paths: list[str], require_output: bool = True, conversations: bool = False) -> list[list[dict]]:
    """The Alpaca records (and, with `conversations`, conversation records) of every path
    (`files.load_alpaca_records`), all read and checked before any work."""
    if not paths:
        raise UsageError("give at least one data file (a JSON list or JSONL of Alpaca records).")
    return [files.load_alpaca_records(path, require_output=require_output, conversations=conversations)
            for path in paths]


def has_input(record: dict) -> bool:
    """Whether the record has an input: not empty, not only spaces, not the generator's "<noinput>" marker."""
    text = record["input"].strip()
    # the length first: lower() would copy a long input just to compare it with a 9-character marker
    return bool(text) and not (len(text) == len(NOINPUT_MARKER) and text.lower() == NOINPUT_MARKER)


def task_of(record: dict) -> dict:
    """{"instruction", "input", "output"} of a record as the generator's filters see it ("<noinput>" -> "")."""
    return {"instruction": record["instruction"], "input": record["input"] if has_input(record) else "",
            "output": record.get("output") or ""}


def records_text(records: list[dict], path: str) -> str:
    """Records as a JSONL file when `path` ends in .jsonl, else as a JSON list (indent 4, as regen.json)."""
    try:
        if path.endswith(".jsonl"):
            return "".join(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n" for record in records)
        return json.dumps(records, indent=4, ensure_ascii=False, allow_nan=False) + "\n"
    except ValueError as error:  # NaN or Infinity in a field: not JSON, and other tools would refuse the file
        raise DataError(f"cannot write {path}: {error} (a NaN or Infinity in a field of the input); such a value "
                        "is not JSON: fix or remove it in the input.") from None


def write_records(path: str, records: list[dict], inputs: list[str] = ()) -> None:
    """Records as JSON or JSONL (by the path's extension), written atomically; never over one of `inputs`."""
    files.write_atomically(path, records_text(records, path), inputs)


def check_output_path(output: str, inputs: list[str], also: tuple[str, ...] = ()) -> None:
    """Refuse, before any work, an --output (and the files written beside it, `also`) that is not a regular file
    or that would replace one of the inputs (files.check_output_file)."""
    if not output:
        raise UsageError("--output needs a file name.")
    for path in (output, *also):
        files.check_output_file(path, inputs, flag="--output" if path == output else "the output")


