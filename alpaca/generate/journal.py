"""The generator's output directory: nothing lost on a crash, one run per directory.

generate_instruction.py appends the instructions each request kept to `regen_journal.jsonl` as soon as the
request is processed (handed to the OS at once; forced to disk when a second has passed since the last time, and
at the end of the run), so a kill, a crash or Ctrl-C loses no kept instruction, and a re-run resumes from the
journal (or from a regen.json such as the original wrote, when there is no journal). `regen.json` is written from
the journal's entries at the end, replaced atomically; one edited by hand is moved aside, not overwritten. One run
at a time per directory: a second generator there would pay every request twice and journal each twice, so a run
holds a lock file (an flock, which the OS releases when the process dies).
"""

import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Iterator

from alpaca import errors, files

JOURNAL_NAME = "regen_journal.jsonl"
LOCK_NAME = ".generate_instruction.lock"


class OutputDirError(errors.UserError):
    """--output_dir cannot be used: a file, in use by another run, or holding a damaged journal or regen.json."""


def claimed_output_dir(output_dir: str) -> contextlib.AbstractContextManager[None]:
    """Hold output_dir's lock for the run (files.claimed_directory): a second generator refuses at once."""
    return files.claimed_directory(output_dir, LOCK_NAME, "generator")


def load_generated(output_dir: str) -> tuple[list[dict], int]:
    """(kept instructions, next request index) of an earlier run: from its journal, which survives kills,
    else from a regen.json such as the original wrote."""
    journal_path = os.path.join(output_dir, JOURNAL_NAME)
    regen_path = os.path.join(output_dir, "regen.json")
    if os.path.exists(journal_path):
        entries, next_request = read_journal(journal_path)
        keep_edited_regen_json(regen_path, entries)
        return entries, next_request
    if os.path.exists(regen_path):
        entries = read_regen_json(regen_path)
        append_journal(journal_path, {"request_index": -1, "kept": entries, "source": "regen.json"})
        return entries, 0
    return [], 0


def journal_record_problem(record: dict) -> str | None:
    """Why a journal record is not one this generator writes, or None when it is."""
    if not isinstance(record.get("request_index"), int) or not isinstance(record.get("kept"), list) \
            or not all(isinstance(e, dict) and (isinstance(e.get("instruction"), str)  # or a --num_turns conversation
                                                or isinstance(e.get("messages"), list)) for e in record["kept"]):
        return f"not a record of this generator ({json.dumps(record)[:60]!r})"
    return None


def read_journal(journal_path: str) -> tuple[list[dict], int]:
    """(kept instructions, next request index) from the journal, read by the one journal rule (files.read_journal):
    a torn last line is cut off (that request is sent again); any other damaged or foreign line is refused with its
    line number, since cutting there would silently drop every later request."""
    entries, next_request = [], 0
    for record in files.read_journal(journal_path, journal_record_problem, writer="The generator"):
        entries += record["kept"]
        next_request = max(next_request, record["request_index"] + 1)
    return entries, next_request


def read_regen_json(regen_path: str) -> list[dict]:
    """The entries of an earlier run's regen.json (no journal beside it: e.g. the original's output)."""
    try:
        entries = files.jload(regen_path)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise OutputDirError(f"{regen_path} is not valid JSON ({error}); this run would resume from it: fix it, "
                             "or move it aside to start afresh.") from None
    if not isinstance(entries, list) or not all(isinstance(e, dict) and (isinstance(e.get("instruction"), str)
                                                                          or isinstance(e.get("messages"), list))
                                                for e in entries):
        raise OutputDirError(f"{regen_path} is not a JSON list of generated instructions (objects with an "
                             "\"instruction\"); this run would resume from it: fix it, or move it aside.")
    return entries


def keep_edited_regen_json(regen_path: str, journal_entries: list[dict]) -> None:
    """The journal is what a run resumes from, and regen.json is rewritten from it at the end. A regen.json
    that is not a copy of the journal's start (one left by a kill is) was edited by hand: move it aside,
    so that the edits are not lost, and say so."""
    if not os.path.exists(regen_path):
        return
    try:
        written = files.jload(regen_path)
    except (ValueError, UnicodeDecodeError):
        written = None
    if isinstance(written, list) and written == journal_entries[:len(written)]:
        return
    backup = f"{regen_path}.edited-{time.strftime('%Y%m%d-%H%M%S')}"
    os.replace(regen_path, backup)
    print(f"warning: {regen_path} differs from the run's journal ({JOURNAL_NAME}), which the run resumes from; "
          f"it was moved to {backup} and regen.json will be written again from the journal.", file=sys.stderr)


append_journal = files.append_journal  # the one journal rule: files.py
sync_journal = files.sync_journal


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block is done, then act on them as usual, so that a request is either in
    both the journal and the entries written to regen.json, or in neither. (Python runs signal handlers in the
    main thread whichever thread received the signal, so swapping the handlers is enough.)"""
    received = []
    previous = {signum: signal.signal(signum, lambda signum, frame: received.append(signum))
                for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if received and callable(previous[received[0]]):
            previous[received[0]](received[0], None)
        elif received and previous[received[0]] != signal.SIG_IGN:
            signal.raise_signal(received[0])  # the default action, now that the default is back


def write_regen_json(regen_path: str, entries: list[dict]) -> None:
    """regen.json in the original's format (files.jdump's: indent 4, ASCII escapes), replaced atomically; written
    once per run (the journal holds every request's entries as they come)."""
    files.write_atomically(regen_path, json.dumps(entries, indent=4, default=str))
