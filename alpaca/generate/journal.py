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
import fcntl
import json
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Iterator

from alpaca import cli, files

JOURNAL_NAME = "regen_journal.jsonl"
LOCK_NAME = ".generate_instruction.lock"


class OutputDirError(cli.UserError):
    """--output_dir cannot be used: a file, in use by another run, or holding a damaged journal or regen.json."""


@contextlib.contextmanager
def claimed_output_dir(output_dir: str) -> Iterator[None]:
    """Create output_dir if needed and hold its lock file for the run: a second generator on the same directory
    refuses at once, naming this one (it would pay every request twice and write each into the journal twice).
    The lock is an flock, which the OS drops when its process dies, so a killed run never leaves it stuck.
    A directory this run created and left empty (e.g. the server was unreachable) is removed again."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise OutputDirError(f"--output_dir {output_dir} is a file, not a directory; pass a directory (it is "
                             "created when missing).")
    created = not os.path.exists(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    lock_path = os.path.join(output_dir, LOCK_NAME)
    try:
        with open(lock_path, "a+", encoding="utf-8") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.seek(0)
                holder = lock.read().strip() or "a process that has not written its name yet"
                raise OutputDirError(f"{output_dir} is in use by another generator ({holder}); wait for it to "
                                     "finish or stop it, or pass another --output_dir.") from None
            lock.seek(0)
            lock.truncate()
            lock.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
            lock.flush()
            yield
    finally:
        if created and os.listdir(output_dir) == [LOCK_NAME]:
            shutil.rmtree(output_dir)


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


def journal_line_problem(line: bytes) -> str | None:
    """Why a journal line is not one this generator writes, or None when it is."""
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return "not valid JSON"
    if not isinstance(record, dict) or not isinstance(record.get("request_index"), int) \
            or not isinstance(record.get("kept"), list) \
            or not all(isinstance(e, dict) and (isinstance(e.get("instruction"), str)  # or a --num_turns conversation
                                                or isinstance(e.get("messages"), list)) for e in record["kept"]):
        return f"not a record of this generator ({line[:60].decode('utf-8', 'replace').strip()!r})"
    return None


def read_journal(journal_path: str) -> tuple[list[dict], int]:
    """(kept instructions, next request index) from the journal. A last line without its newline is what a kill
    mid-write leaves: it is cut off (that request is sent again). Any other damaged or foreign line is refused
    with its line number: a run never writes one, and cutting there would silently drop every later request."""
    with open(journal_path, "rb") as f:
        lines = f.readlines()
    entries, next_request, good_bytes = [], 0, 0
    for line_number, line in enumerate(lines, start=1):
        if line_number == len(lines) and not line.endswith(b"\n"):
            break
        problem = journal_line_problem(line)
        if problem:
            raise OutputDirError(f"{journal_path}, line {line_number} of {len(lines)}: {problem}. The run resumes "
                                 "from this journal and never writes such a line; fix or delete the line, or move "
                                 "the journal aside to resume from regen.json.")
        record = json.loads(line)
        entries += record["kept"]
        next_request = max(next_request, record["request_index"] + 1)
        good_bytes += len(line)
    if good_bytes < os.path.getsize(journal_path):
        with open(journal_path, "r+b") as f:
            f.truncate(good_bytes)
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


# Seconds between forcing the journal to disk. Every line is written to the OS at once, so a killed or crashed process
# loses nothing; only a power cut or an OS crash may lose the last second's lines, whose requests the next run asks
# again. An fsync per line cost the generator a third of its time against a fast server (bench/bench_generate.py).
JOURNAL_FSYNC_SECONDS = 1.0
_last_fsync: dict[str, float] = {}


def append_journal(journal_path: str, record: dict) -> None:
    """Append one line and hand it to the OS (a kill right after still finds it); force the file to disk when the
    last time is JOURNAL_FSYNC_SECONDS ago, and always the first time."""
    with open(journal_path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        now = time.monotonic()
        if now - _last_fsync.get(journal_path, -JOURNAL_FSYNC_SECONDS) >= JOURNAL_FSYNC_SECONDS:
            os.fsync(f.fileno())
            _last_fsync[journal_path] = now


def sync_journal(journal_path: str) -> None:
    """Force the journal to disk (at the end of a run: the lines since the last fsync)."""
    with contextlib.suppress(FileNotFoundError), open(journal_path, "rb") as f:
        os.fsync(f.fileno())
    _last_fsync.pop(journal_path, None)


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
    """regen.json in the original's format, replaced atomically; written once per run (the journal holds every
    request's entries as they come)."""
    files.jdump(entries, regen_path + ".tmp")
    os.replace(regen_path + ".tmp", regen_path)
