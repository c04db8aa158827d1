"""Files, one home for each rule: records (JSON and JSONL data files), atomic writes, journals and the lock of an
output directory.

- `load_records` / `load_alpaca_records`: the data files every stage reads, with errors naming file and record.
- `write_atomically` / `write_json`: the one way an output file is replaced (unique temporary name, no symlink
  followed, never a device or an input of the same run, nothing left behind on an error).
- `append_journal` / `read_journal`: the one rule of every append-only journal a run resumes from.
- `claimed_directory`: the lock that keeps a second run off an output directory in use.
"""

import contextlib
import fcntl
import hashlib
import io
import json
import logging
import os
import pathlib
import shutil
import socket
import stat
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence

from alpaca.errors import BusyError, DataError, JournalError, MissingPathError, OutputPathError
from alpaca.prompts.conversation import check_messages

logger = logging.getLogger(__name__)

# -- JSON files -------------------------------------------------------------------------------------


def _make_w_io_base(f, mode: str):
    if not isinstance(f, io.IOBase):
        directory = os.path.dirname(f)
        if directory:
            os.makedirs(directory, exist_ok=True)
        f = open(f, mode=mode, encoding="utf-8")
    return f


def _make_r_io_base(f, mode: str):
    if not isinstance(f, io.IOBase):
        f = open(f, mode=mode, encoding="utf-8")
    return f


def check_local_weights(path: str, cache_dir: str | None = None) -> None:
    """Fail early, with a sentence, on a model we cannot load: a local directory holding only pickled weights, or a
    path that is no local directory and cannot come from the Hub either (offline, or unreachable: checked within
    seconds, instead of the ~30-60 s of retries from_pretrained spends before its 100-line error)."""
    local = pathlib.Path(path).expanduser()
    if not local.is_dir():
        _check_hub_model(path, cache_dir)
        return
    if not list(local.glob("*.safetensors")):
        found = sorted(p.name for p in local.glob("*.bin")) or sorted(p.name for p in local.iterdir())[:10]
        raise MissingPathError(
            f"No *.safetensors weights in '{path}' (found: {', '.join(found) or 'nothing'}). We load "
            "safetensors only, since pickled .bin files can run code when loaded; re-save the model with "
            "`model.save_pretrained(dir, safe_serialization=True)`, or point --model_name_or_path elsewhere."
        )


def _check_hub_model(name: str, cache_dir: str | None) -> None:
    """For a model path that is not a local directory: return if the Hub may serve it (or its cache holds it),
    else raise MissingPathError saying why it cannot."""
    from huggingface_hub import constants, try_to_load_from_cache
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if os.path.exists(os.path.expanduser(name)):
        raise MissingPathError(f"Model path '{name}' is a file; give the directory that holds config.json and the "
                               "weights, or a Hugging Face Hub id.")
    try:
        validate_repo_id(name)
    except HFValidationError:
        return  # no Hub id either: from_pretrained fails at once, without the network, and the caller explains
    no_such_dir = f"There is no local model directory '{name}'"
    if isinstance(try_to_load_from_cache(name, "config.json", cache_dir=cache_dir), str):
        return  # downloaded before: from_pretrained loads it from the cache, online or not
    # Name the variable that switched the Hub off: one that is set but empty switches nothing off.
    offline = [v for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
               if os.environ.get(v, "").strip().upper() in {"1", "ON", "YES", "TRUE"}]
    if offline:
        raise MissingPathError(f"{no_such_dir}, and the Hugging Face Hub is switched off ({offline[0]} is set) and "
                               "its cache does not hold it: pass the directory of a local checkpoint.")
    if not hub_reachable(constants.ENDPOINT):
        raise MissingPathError(f"{no_such_dir}, and the Hugging Face Hub ({constants.ENDPOINT}) could not be reached "
                               "to fetch it as a Hub id: pass the directory of a local checkpoint, or check the "
                               "network.")


def hub_reachable(endpoint: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to `endpoint` (a URL) opens within `timeout` seconds, name lookup included.

    Behind a proxy (HTTPS_PROXY, ALL_PROXY) a direct connection says nothing, so the answer is True: from_pretrained
    then tries through the proxy.
    """
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urllib.parse.urlsplit(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    opened = []

    def connect() -> None:
        try:
            socket.create_connection((url.hostname, port), timeout=timeout).close()
            opened.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=connect, daemon=True)  # a thread, because name lookup ignores the timeout
    thread.start()
    thread.join(timeout)
    return bool(opened)


class DuplicateKeyError(ValueError):
    """A JSON object that names one key twice (json.loads would silently keep the last value)."""


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise DuplicateKeyError(key)
        seen[key] = value
    return seen


def parse_json(text: str, where: str) -> object:
    """json.loads for data files: an object naming a key twice, or nesting too deep for Python's parser (a line of
    100,000 '['), is a DataError naming `where` instead of a silent choice or a RecursionError."""
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except DuplicateKeyError as error:
        raise DataError(f"{where}: a record names the field {str(error)!r} twice; keep one of the two.") from None
    except RecursionError:
        raise DataError(f"{where}: JSON nested too deeply to read; a record is a flat object of fields.") from None


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, object]]:
    """(line number, JSON value) for every non-blank line of a JSONL file; a bad line is a DataError naming the
    file and the line. A BOM at the start is skipped."""
    # One line's bytes are let go before it is parsed, and blank lines are found without a stripped copy: a record
    # of hundreds of MB then costs its text and its parsed value, not two more copies. (Not enumerate(): it keeps
    # its last item alive.)
    line_number = 0
    with open(path, "rb") as f:
        for raw_line in f:
            line_number += 1
            try:
                line = raw_line.decode("utf-8-sig" if line_number == 1 else "utf-8")
            except UnicodeDecodeError as error:
                raise DataError(f"{path}, line {line_number}: not UTF-8 text ({error.reason}); save the file as "
                                "UTF-8.") from None
            del raw_line
            if not line or line.isspace():
                continue
            try:
                yield line_number, parse_json(line, f"{path}, line {line_number}")
            except json.JSONDecodeError as error:
                raise DataError(f"{path}, line {line_number}: not valid JSON ({error.msg}, column {error.colno}). A "
                                "JSONL file needs one JSON object per line; a JSON list must start with '['.") from None


def load_records(path: str | os.PathLike) -> list:
    """The records of a JSON list or a JSONL file (one JSON value per line; blank lines skipped).

    Errors are DataError / MissingPathError sentences naming the file and the line: a missing file, text that is
    not UTF-8, malformed JSON, or a JSON value that is not a list. The fields of each record are for the caller
    (see `load_alpaca_records`).
    """
    file = pathlib.Path(path)
    if not file.is_file():
        raise MissingPathError(f"Data file '{path}' does not exist or is not a file.")
    if file.suffix == ".jsonl" or not _starts_with(file, b"["):
        if file.suffix != ".jsonl" and _starts_with(file, b"{"):
            try:  # a whole file that is one JSON object is a common mistake: say so rather than "bad line 2"
                value = json.loads(file.read_text(encoding="utf-8-sig"))
            except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
                value = None
            if isinstance(value, dict) and (file.suffix == ".json" or "\n" in file.read_text("utf-8-sig").strip()):
                raise DataError(f"{path} holds a single JSON object (keys: {', '.join(list(value)[:5])}); expected a "
                                "JSON list of records, or one JSON object per line (JSONL).")
        return [value for _, value in read_jsonl(file)]
    try:
        text = file.read_text(encoding="utf-8-sig")  # a BOM from Windows editors is not data
    except UnicodeDecodeError as error:
        raise DataError(f"{path} is not UTF-8 text ({error.reason} at byte {error.start}); save it as UTF-8.") from None
    try:
        records = parse_json(text, str(path))
    except json.JSONDecodeError as error:
        raise DataError(f"{path} is not valid JSON (line {error.lineno}, column {error.colno}: {error.msg}). "
                        "Give a JSON list of records, or one JSON object per line (JSONL).") from None
    if not isinstance(records, list):
        raise DataError(f"{path} must hold a JSON list of records, not a {type(records).__name__}.")
    return records


def _starts_with(file: pathlib.Path, prefix: bytes) -> bool:
    """Whether the file's first non-blank bytes (after a BOM) are `prefix`."""
    with open(file, "rb") as f:
        head = f.read(4096).removeprefix(b"\xef\xbb\xbf").lstrip()
    return head.startswith(prefix)


def load_alpaca_records(path: str | os.PathLike, require_output: bool = True,
                        conversations: bool = False) -> list[dict]:
    """Alpaca examples (`instruction`, `input`, `output`) from a JSON list or JSONL file, checked, in file order.

    The one contract every script reads data with: `instruction` must be a non-empty string; `input` may be
    missing or null, which both mean no input (""), else a string; `output` must be a string when
    `require_output` (training, judging, data tools), else it may be missing. Other fields are kept. A file with
    no records is refused. Errors are DataError sentences naming the file and the record (0-based index).
    With `conversations`, a record with `messages` is a conversation (alpaca/prompts/conversation.py), kept as it
    is once checked; it must end with an assistant turn when `require_output`.
    """
    records = load_records(path)
    if not records:
        raise DataError(f"{path} holds no examples.")
    examples = []
    for index, record in enumerate(records):
        where = f"{path}, record {index}"
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected an object with instruction/input/output, got {type(record).__name__}.")
        if conversations and "messages" in record:
            check_messages(record["messages"], where, last="assistant" if require_output else None)
            examples.append(record)
            continue
        if "instruction" not in record:
            raise DataError(f"{where}: field 'instruction' is missing.")
        for key in ("instruction", "input", "output"):
            value = record.get(key)
            if value is not None and not isinstance(value, str):
                raise DataError(f"{where}: field '{key}' must be a string, got {type(value).__name__}.")
        if not record["instruction"] or not record["instruction"].strip():
            raise DataError(f"{where}: field 'instruction' is empty; every example needs an instruction.")
        if require_output and record.get("output") is None:
            raise DataError(f"{where}: field 'output' is missing.")
        examples.append({**record, "input": record.get("input") or ""})
    return examples


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes (hex), read 1 MiB at a time: what a run records of each input it read, so that
    a result names the exact files behind it."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def jdump(obj, f, mode: str = "w", indent: int = 4, default=str) -> None:
    """Write a dict or list as JSON (a str is written as it is) to a path or an open file.

    A path's parent directory is created when missing; `default` turns unknown objects into strings.
    """
    f = _make_w_io_base(f, mode)
    try:
        if isinstance(obj, (dict, list)):
            json.dump(obj, f, indent=indent, default=default)
        elif isinstance(obj, str):
            f.write(obj)
        else:
            raise ValueError(f"jdump writes a dict, a list or a str, not {type(obj).__name__}.")
    finally:
        f.close()


def jload(f, mode: str = "r"):
    """Load a .json file (a path or an open file) into a dict or list."""
    f = _make_r_io_base(f, mode)
    try:
        return json.load(f)
    finally:
        f.close()


# -- writing a file all at once -------------------------------------------------------------------------


def _kind_of(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    return "a device, FIFO or socket, not a regular file"


def check_output_file(path: str | os.PathLike, inputs: Sequence[str | os.PathLike] = (), flag: str = "output") -> None:
    """Refuse, before any work, an output path that a run must not replace: one that exists and is not a regular
    file (a directory, a symbolic link, a device), one whose parent is a file, or one that is an input of the same
    run (by any path: a link, `./`, a hard link)."""
    path = os.fspath(path)
    if os.path.lexists(path):
        mode = os.lstat(path).st_mode
        if not stat.S_ISREG(mode):
            raise OutputPathError(f"{flag} {path} is {_kind_of(mode)}; give the path of a regular file to write.")
    parent = next((p for p in pathlib.Path(path).absolute().parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise OutputPathError(f"{flag} {path} cannot be created: {parent} is a file, not a directory.")
    for source in inputs:
        if os.path.exists(path) and os.path.exists(source) and os.path.samefile(path, source):
            raise OutputPathError(f"{flag} {path} is the input file {os.fspath(source)}; write to another file so "
                                  "that the input stays as it is.")


def _encoded(data: str | bytes, path: str) -> bytes:
    if isinstance(data, bytes):
        return data
    try:
        return data.encode("utf-8")
    except UnicodeEncodeError as error:
        raise DataError(f"cannot write {path}: the text holds {data[error.start:error.end]!r} at character "
                        f"{error.start}, a lone UTF-16 surrogate that UTF-8 cannot encode (it came from an input "
                        "written by a tool that splits characters); fix that text in the input.") from None


def write_atomically(path: str | os.PathLike, data: str | bytes, inputs: Sequence[str | os.PathLike] = ()) -> None:
    """Replace `path` with `data` (text is written as UTF-8) all at once: readers see the old file or the new one,
    never a part. The data goes to a temporary file of a unique name in the target's directory, created exclusively
    (so it never writes through a planted symbolic link), forced to disk and renamed over the target; the parent
    directory is created when missing. Refused first, by `check_output_file`: a target that is not a regular file,
    or that is one of `inputs`. On any error nothing is left behind."""
    path = os.fspath(path)
    check_output_file(path, inputs)
    payload = _encoded(data, path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fchmod(f.fileno(), _new_file_mode(path))
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    _fsync_directory(directory)


def _new_file_mode(path: str) -> int:
    """The mode the file would get from a plain open(): the old file's, else 0o666 less the umask (mkstemp's
    temporary files are 0o600)."""
    with contextlib.suppress(FileNotFoundError):
        return stat.S_IMODE(os.stat(path).st_mode)
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: str | os.PathLike, obj: object, inputs: Sequence[str | os.PathLike] = (), indent: int = 4,
               ensure_ascii: bool = True) -> None:
    """`obj` as JSON (indent 4, as the Alpaca data files), written atomically. NaN and infinities are refused (they
    are not JSON): a DataError naming the file."""
    try:
        text = json.dumps(obj, indent=indent, ensure_ascii=ensure_ascii, allow_nan=False, default=str)
    except ValueError as error:
        raise DataError(f"cannot write {os.fspath(path)}: {error}; such a value (NaN or Infinity) is not JSON.") \
            from None
    write_atomically(path, text + ("\n" if indent is not None else ""), inputs)


# -- journals: append-only JSONL files that a run resumes from -------------------------------------------
#
# The one rule, for every journal (the generator's, the judge's, the rater's, the annotations, the preference
# stage's): a record is appended as one line and handed to the OS before the run goes on (forced to disk at most once
# a second, and at the end: see JOURNAL_FSYNC_SECONDS); on reading, a last line
# without its newline is what a kill mid-write leaves and is cut off (its work is done again), blank lines are
# skipped, and any other damage is refused with the file and line number. Nothing else is ever deleted.


def journal_line(record: dict) -> bytes:
    """One journal line: JSON (NaN and infinities refused) and a newline. Text stays readable (no \\u escapes)
    unless it holds a lone surrogate, which only the escaped form can carry."""
    text = json.dumps(record, ensure_ascii=False, allow_nan=False)
    try:
        return (text + "\n").encode("utf-8")
    except UnicodeEncodeError:
        return (json.dumps(record, allow_nan=False) + "\n").encode("ascii")


# Seconds between forcing the journal to disk. Every line is written to the OS at once, so a killed or crashed process
# loses nothing; only a power cut or an OS crash may lose the last second's lines, whose requests the next run asks
# again. An fsync per line cost the generator a third of its time against a fast server (bench/bench_generate.py).
JOURNAL_FSYNC_SECONDS = 1.0
_last_fsync: dict[str, float] = {}


def append_journal(path: str | os.PathLike, record: dict) -> None:
    """Append one record as a line and hand it to the OS before returning, so that a killed run still finds it;
    force the file to disk the first time and then at most every JOURNAL_FSYNC_SECONDS (a machine that loses power
    loses at most that much; `sync_journal` at the end of a run forces the rest). A half-written last line (a kill
    mid-write) is cut off first, so the record starts a line of its own."""
    path = os.fspath(path)
    line = journal_line(record)
    with open(path, "a+b") as f:  # a+: the same handle reads the last byte; every write still goes to the end
        size = f.seek(0, os.SEEK_END)
        if size and _byte_at(f, size - 1) != b"\n":
            f.seek(0)
            f.truncate(f.read().rfind(b"\n") + 1)
        f.write(line)
        f.flush()
        now = time.monotonic()
        if now - _last_fsync.get(path, -JOURNAL_FSYNC_SECONDS) >= JOURNAL_FSYNC_SECONDS:
            os.fsync(f.fileno())
            _last_fsync[path] = now


def _byte_at(f, offset: int) -> bytes:
    f.seek(offset)
    return f.read(1)


def sync_journal(path: str | os.PathLike) -> None:
    """Force a journal to disk (at the end of a run: the lines since the last fsync)."""
    path = os.fspath(path)
    with contextlib.suppress(FileNotFoundError), open(path, "rb") as f:
        os.fsync(f.fileno())
    _last_fsync.pop(path, None)


def read_journal(path: str | os.PathLike, record_problem: Callable[[dict], str | None] | None = None,
                 writer: str = "this run") -> list[dict]:
    """The records of a journal (a missing file has none), by the one rule above. Each line must be a JSON object
    that `record_problem` (when given) finds nothing wrong with; otherwise a JournalError names the file, the line
    and the fault, and nothing is changed. Only a torn last line is cut off the file."""
    path = os.fspath(path)
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        lines = f.readlines()
    records = []
    for line_number, line in enumerate(lines, start=1):
        if line_number == len(lines) and not line.endswith(b"\n"):
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) - len(line))
            break
        if not line.strip():
            continue
        record, problem = _parsed_line(line, record_problem)
        if problem:
            raise JournalError(f"{path}, line {line_number} of {len(lines)}: {problem}. {writer} appends to this "
                               "journal and resumes from it, and never writes such a line: repair or delete that "
                               "line (nothing was removed from the file).")
        records.append(record)
    return records


def _parsed_line(line: bytes, record_problem: Callable[[dict], str | None] | None) -> tuple[dict | None, str | None]:
    """(the record of a journal line, None) or (None, why the line is not a record)."""
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        return None, "not valid JSON"
    if not isinstance(record, dict):
        return None, f"a JSON {type(record).__name__}, not an object"
    problem = record_problem(record) if record_problem else None
    return (None, problem) if problem else (record, None)


# -- the lock of an output directory (or file) -------------------------------------------------------------


@contextlib.contextmanager
def held_lock(lock_path: str | os.PathLike, busy: str) -> Iterator[None]:
    """Hold the flock of `lock_path` (created if missing; it names the holding process) for the block. Another
    process holding it is a BusyError: `busy` with {holder} filled in. The OS drops an flock when its process dies,
    so a killed run never leaves it stuck."""
    with open(lock_path, "a+", encoding="utf-8") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "a process that has not written its name yet"
            raise BusyError(busy.replace("{holder}", holder)) from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        lock.flush()
        yield


@contextlib.contextmanager
def claimed_directory(directory: str | os.PathLike, lock_name: str, what: str, flag: str = "--output_dir") \
        -> Iterator[None]:
    """Create `directory` if needed and hold its lock file `lock_name` for the block: a second run on the same
    directory refuses at once, naming the first (it would pay every request twice and write each into the journal
    twice). The lock is an flock, which the OS drops when its process dies, so a killed run never leaves it stuck.
    A directory this run created and left empty (e.g. the server was unreachable) is removed again. `what` names
    the kind of run in the message ("generator", "judge")."""
    directory = os.fspath(directory)
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise OutputPathError(f"{flag} {directory} is a file, not a directory; pass a directory (it is created when "
                              "missing).")
    created = not os.path.exists(directory)
    os.makedirs(directory, exist_ok=True)
    try:
        with held_lock(os.path.join(directory, lock_name),
                       f"{directory} is in use by another {what} ({{holder}}); wait for it to finish or stop it, or "
                       f"pass another {flag}."):
            yield
    finally:
        if created and os.path.isdir(directory) and os.listdir(directory) == [lock_name]:
            shutil.rmtree(directory)
