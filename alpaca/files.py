"""Shared helpers of the Alpaca scripts: JSON files and the original's `openai_completion`.

The LLM client itself (endpoints, concurrency, retries, rate limits, the response cache, the local model)
lives in llm_client.py; `openai_completion` below keeps the original's synchronous interface on top of it.
"""

import io
import json
import logging
import os
import pathlib
import socket
import threading
import urllib.parse
from collections.abc import Iterator

from alpaca.cli import DataError, MissingPathError
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


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, object]]:
    """(line number, JSON value) for every non-blank line of a JSONL file; a bad line is a DataError naming the
    file and the line. A BOM at the start is skipped."""
    with open(path, "rb") as f:
        for line_number, raw_line in enumerate(f, start=1):
            try:
                line = raw_line.decode("utf-8-sig" if line_number == 1 else "utf-8")
            except UnicodeDecodeError as error:
                raise DataError(f"{path}, line {line_number}: not UTF-8 text ({error.reason}); save the file as "
                                "UTF-8.") from None
            if not line.strip():
                continue
            try:
                yield line_number, json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}, line {line_number}: not valid JSON ({error.msg}, column {error.colno}). A "
                                "JSONL file needs one JSON object per line; a JSON list must start with '['.") from None


def read_complete_lines(path: str | os.PathLike) -> list:
    """The JSON values of an append-only JSONL journal, up to the first line that is not whole (a kill while it
    was written): that line and anything after it are cut off the file, so the next append starts clean.
    A missing file has no values."""
    if not os.path.exists(path):
        return []
    values, good_bytes = [], 0
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break
            try:
                values.append(json.loads(line))
            except json.JSONDecodeError:
                break
            good_bytes += len(line)
    if good_bytes < os.path.getsize(path):
        with open(path, "r+b") as f:
            f.truncate(good_bytes)
    return values


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
            except (json.JSONDecodeError, UnicodeDecodeError):
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
        records = json.loads(text)
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
