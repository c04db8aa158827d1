"""The LLM client of the project: any OpenAI-compatible endpoint, or a local Hugging Face model.

Requests go to OpenAI, vLLM, Ollama or llama.cpp's server through the `openai` package (>=1; the client's
own retries are off, ours are below), or to a causal LM generating in-process (`api_type="local"`, local_llm.py).
`LLMEndpoint` keeps `max_concurrency` requests in flight with asyncio, stays under optional requests- and
tokens-per-minute limits, retries 429s, 5xx, timeouts and dropped connections with exponential backoff and
jitter honouring Retry-After (capped at 60 s), shrinks `max_tokens` by 20% when the context is exceeded (as the
original did), stops at once with one clear sentence on a bad key or an unknown model, and stores every raw
response with its request in the cache directory's SQLite store (`ResponseCache`) once it has been checked (a
malformed 200 gets two quick retries and is never cached). A completions server that refuses a list of prompts in
one request (llama.cpp's server answers 500, `transformers serve` 400) is detected on the first request and sent
one prompt per request from then on. `request_timeout` bounds a whole request, a body trickling in included.
`api_base` may name several servers of one model (comma-separated, or `@FILE`): each request goes to the least
busy one (`Fleet`), each within its share of `max_concurrency`, and a failing one is backed off while the others
continue. `complete_in_order` runs batches concurrently and hands results back strictly in request order.
`utils.openai_completion` is the original's synchronous interface on top of it.
"""

import asyncio
import base64
import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import re
import sqlite3
import ssl
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Callable, Sequence
from email.utils import parsedate_to_datetime

import httpx2
import openai

from alpaca import errors

logger = logging.getLogger(__name__)

OPENAI_API_BASE = "https://api.openai.com/v1"
# Current OpenAI models per endpoint: text-davinci-003, the original's default, was retired in January 2024;
# gpt-3.5-turbo-instruct is the model OpenAI still serves on the completions endpoint.
DEFAULT_MODEL_NAMES = {"completions": "gpt-3.5-turbo-instruct", "chat": "gpt-4o-mini"}
API_TYPES = ("completions", "chat", "local")
# The longest wait a server's Retry-After may impose: a larger value (or `inf`) would stall the run for nothing.
RETRY_AFTER_CAP = 60.0
# Retries of a malformed HTTP 200 (an empty `choices`, a string `message`): a server that answers so once usually
# answers so every time, so two quick retries are enough to rule out a glitch before the run stops.
MALFORMED_RETRIES = 2
MALFORMED_RETRY_DELAY = 0.5  # seconds before the first of them (doubled for the second)
# The largest reply body read: a hostile or broken server must not fill memory and the journals. A completion of
# a few thousand tokens with logprobs is well under 1 MB.
DEFAULT_MAX_RESPONSE_BYTES = 16 * 2**20
# Usage counts above this are not token counts (a server bug or a hostile reply): refused like a malformed reply.
MAX_TOKEN_COUNT = 2**53

# -- requests and responses -------------------------------------------------------------------------


@dataclasses.dataclass
class OpenAIDecodingArguments:
    """Decoding settings sent with every request. Settings left at their defaults marked "only if set" are
    not sent at all, so servers that lack them (llama.cpp, Ollama) still accept the request."""

    max_tokens: int = 1800  # tokens to generate per prompt; shrunk by 20% per context-length error
    temperature: float = 0.2
    top_p: float = 1.0
    n: int = 1  # completions per prompt
    stream: bool = False  # streaming is not supported; kept for the original's interface
    stop: Sequence[str] | None = None
    presence_penalty: float = 0.0  # only if set
    frequency_penalty: float = 0.0  # only if set
    suffix: str | None = None  # completions endpoint only; only if set
    logprobs: int | None = None  # only if set; on the chat endpoint it becomes top_logprobs
    echo: bool = False  # completions endpoint only; only if set


LLMError = errors.LLMError  # defined with the other user errors, so local.py need not import the client


class SettingError(LLMError, errors.UsageError):
    """An endpoint setting that cannot work (a negative rate, a malformed base URL): a command-line mistake, exit 2."""


class MalformedResponse(Exception):
    """An HTTP 200 whose body is not a usable response (not JSON, `choices` not a list, `text` not a string, ...).
    Retried like a 5xx; never cached. The message says what was wrong, for the log and the final error."""


class PromptListRejected(Exception):
    """The server refused a completions request carrying a list of prompts (llama.cpp: 500, `transformers serve`:
    400 "prompt must be a string"); `LLMEndpoint.complete` then tries one prompt per request."""

    def __init__(self, error: Exception):
        super().__init__(redact_api_key(error))


def build_request(api_type: str, model_name: str, prompts: Sequence[str], decoding_args: OpenAIDecodingArguments,
                  **decoding_kwargs) -> dict:
    """The JSON body of one request: all `prompts` in one completions request, or the single prompt as a
    chat user message. `decoding_kwargs` (e.g. logit_bias) are added as they are."""
    args = decoding_args
    if args.stream:
        raise ValueError("stream=True is not supported: the generator needs whole responses.")
    request: dict = {"model": model_name}
    if api_type == "chat":
        if len(prompts) != 1:
            raise ValueError(f"A chat request carries one prompt, got {len(prompts)}.")
        if args.suffix is not None or args.echo:
            raise ValueError("suffix and echo exist only on the completions endpoint; use --api_type completions.")
        request["messages"] = [{"role": "user", "content": prompts[0]}]
    else:
        request["prompt"] = list(prompts)
    request.update(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p, n=args.n)
    if args.stop:
        request["stop"] = list(args.stop)
    if args.presence_penalty:
        request["presence_penalty"] = args.presence_penalty
    if args.frequency_penalty:
        request["frequency_penalty"] = args.frequency_penalty
    if args.suffix is not None:
        request["suffix"] = args.suffix
    if args.echo:
        request["echo"] = True
    if args.logprobs is not None:
        request.update({"logprobs": True, "top_logprobs": args.logprobs} if api_type == "chat"
                       else {"logprobs": args.logprobs})
    request.update({k: v for k, v in decoding_kwargs.items() if v is not None})
    return request


def choices_of(response: dict) -> list[dict]:
    """The choices of a raw completions or chat response, in index order, each a dict with `text`,
    `finish_reason` ("stop" or "length"), `index` and `logprobs` (the endpoint's own, or None)."""
    choices = []
    for choice in sorted(response["choices"], key=lambda c: c.get("index", 0)):
        text = choice["message"].get("content") if "message" in choice else choice.get("text")
        choices.append({"text": text or "", "finish_reason": choice.get("finish_reason"), "index": choice.get("index"),
                        "logprobs": choice.get("logprobs")})
    return choices


def usage_of(response: dict) -> dict:
    """Token counts of a raw response (zeros where the server reports none)."""
    usage = response.get("usage") or {}
    counts = {k: int(usage.get(k) or 0) for k in ("prompt_tokens", "completion_tokens")}
    counts["total_tokens"] = int(usage.get("total_tokens") or sum(counts.values()))
    return counts


def response_problem(response: object, api_type: str, expected_choices: int) -> str | None:
    """What makes a parsed 200 body unusable, in a few words, or None when it is a well-formed completions (or
    chat) response with `expected_choices` choices (prompts x n) whose texts are strings and usage counts numbers."""
    if not isinstance(response, dict):
        return f"a JSON {type(response).__name__} instead of an object"
    choices = response.get("choices")
    if not isinstance(choices, list):
        return f"'choices' is {'missing' if choices is None else 'a ' + type(choices).__name__}, not a list"
    if len(choices) != expected_choices:
        return f"{len(choices) or 'no'} choices for {expected_choices} expected"
    for choice in choices:
        if not isinstance(choice, dict):
            return f"a choice that is a {type(choice).__name__}, not an object"
        if "message" in choice:
            message = choice["message"]
            if not isinstance(message, dict):
                return f"a choice whose message is {'null' if message is None else repr(message)[:40]}, not an object"
            text = message.get("content")
        else:
            text = choice.get("text")
        if text is not None and not isinstance(text, str):
            return f"a choice whose text is {text!r:.40}, not a string"
        index = choice.get("index")
        if index is not None and (not isinstance(index, int) or isinstance(index, bool)):
            return f"a choice whose index is {index!r}"
        problem = logprobs_problem(choice.get("logprobs"))
        if problem:
            return problem
    usage = response.get("usage")
    if usage is not None and not isinstance(usage, dict):
        return f"'usage' is a {type(usage).__name__}, not an object"
    for name, count in (usage or {}).items():
        if name in ("prompt_tokens", "completion_tokens", "total_tokens") and count is not None:
            if not is_number(count):
                return f"usage.{name} is {count!r:.40}, not a number"
            if not 0 <= count <= MAX_TOKEN_COUNT:  # NaN fails both comparisons; 1e400 is read as inf
                return f"usage.{name} is {count!r}, not a token count"
    return None


def is_number(value: object) -> bool:
    """An int or a float, not a bool (JSON true is no count)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def logprobs_problem(logprobs: object) -> str | None:
    """What makes a choice's `logprobs` unreadable, or None: absent, or the completions shape (`tokens`,
    `token_logprobs`, `top_logprobs` lists, the latter of {token: logprob} or null) or the chat shape (`content`: a
    list of {token, logprob, top_logprobs: [{token, logprob}]}). Only shapes and types are checked here: whether a
    log-probability's value makes sense (finite, at most 0) is for the reader of it to judge."""
    if logprobs is None:
        return None
    if not isinstance(logprobs, dict):
        return f"'logprobs' is {logprobs!r:.40}, not an object"
    if "content" in logprobs:  # chat
        content = logprobs["content"]
        if content is None:
            return None
        if not isinstance(content, list):
            return f"logprobs.content is {content!r:.40}, not a list"
        for item in content:
            problem = token_logprob_problem(item, "logprobs.content")
            if problem:
                return problem
            tops = item.get("top_logprobs")
            if tops is not None and not isinstance(tops, list):
                return f"logprobs.content[].top_logprobs is {tops!r:.40}, not a list"
            for top in tops or []:
                problem = token_logprob_problem(top, "logprobs.content[].top_logprobs")
                if problem:
                    return problem
        return None
    tokens, values, tops = (logprobs.get(k) for k in ("tokens", "token_logprobs", "top_logprobs"))
    if tokens is not None and (not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens)):
        return f"logprobs.tokens is {tokens!r:.40}, not a list of strings"
    if values is not None and (not isinstance(values, list)
                               or not all(v is None or is_number(v) for v in values)):
        return f"logprobs.token_logprobs is {values!r:.40}, not a list of numbers"
    if tops is not None and not isinstance(tops, list):
        return f"logprobs.top_logprobs is {tops!r:.40}, not a list"
    for top in tops or []:
        if top is not None and (not isinstance(top, dict) or not all(isinstance(t, str) and is_number(v)
                                                                       for t, v in top.items())):
            return f"logprobs.top_logprobs holds {top!r:.40}, not a {{token: logprob}} object"
    return None


def token_logprob_problem(item: object, where: str) -> str | None:
    """What is wrong with one chat {token, logprob} entry, or None."""
    if not isinstance(item, dict):
        return f"{where} holds {item!r:.40}, not an object"
    if not isinstance(item.get("token"), str):
        return f"{where} holds a token {item.get('token')!r:.40}, not a string"
    if not is_number(item.get("logprob")):
        return f"{where} holds a logprob {item.get('logprob')!r:.40}, not a number"
    return None


def prompts_of(request: dict) -> list[str]:
    """The completions prompts of a request body (`prompt` is a list, or one string); [] for chat."""
    prompt = request.get("prompt", [])
    return [prompt] if isinstance(prompt, str) else list(prompt)


def expected_choices(request: dict) -> int:
    """Choices a well-formed response to `request` holds: n per prompt (chat: one prompt)."""
    return max(1, len(prompts_of(request))) * int(request.get("n") or 1)


# -- retries ----------------------------------------------------------------------------------------

CONTEXT_LENGTH_MARKERS = ("maximum context length", "context_length_exceeded", "reduce your prompt",
                          "reduce the length", "exceeds the available context size", "context window")


def is_context_length_error(error: Exception) -> bool:
    """True for the 400 that OpenAI, vLLM or llama.cpp return when prompt + max_tokens exceed the context."""
    text = f"{error} {getattr(error, 'body', '')} {getattr(error, 'code', '')}".lower()
    return isinstance(error, openai.BadRequestError) and any(m in text for m in CONTEXT_LENGTH_MARKERS)


def retry_after_seconds(error: Exception) -> float | None:
    """The wait a 429/503 asks for in its retry-after-ms or Retry-After header (seconds or an HTTP date), as the
    server sent it: it may be huge or `inf`; `backoff_seconds` caps it at RETRY_AFTER_CAP. None when absent,
    unreadable, negative or NaN."""
    response = getattr(error, "response", None)
    if response is None:
        return None
    headers = response.headers
    try:
        if headers.get("retry-after-ms"):
            seconds = float(headers["retry-after-ms"]) / 1000
        else:
            value = headers.get("retry-after")
            if not value:
                return None
            try:
                seconds = float(value)
            except ValueError:
                seconds = max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, OverflowError):
        return None
    return seconds if seconds >= 0 else None  # NaN and negative waits mean nothing


def backoff_seconds(attempt: int, base: float, cap: float, retry_after: float | None = None) -> float:
    """Exponential backoff with jitter: base * 2**attempt capped at `cap`, scaled by a random factor in
    [0.5, 1) so that parallel requests do not retry in lockstep; never shorter than the server's Retry-After, which is
    honoured up to RETRY_AFTER_CAP seconds."""
    delay = min(cap, base * 2**attempt) * (0.5 + random.random() / 2)
    return max(delay, min(retry_after or 0.0, RETRY_AFTER_CAP))


def redact_api_key(error: Exception) -> str:
    """The error's text for a log line or a message (with the server's answer when the client left it out, as for
    a body without an "error" field), with the API key masked: some servers and proxies echo the key they were
    sent, and it must never reach a terminal log or a file."""
    text = str(error).rstrip(".")
    response = getattr(error, "response", None) if isinstance(error, openai.APIStatusError) else None
    body = " ".join(response.text.split())[:200] if response is not None else ""
    if body and body not in text and text.endswith(f"Error code: {error.status_code}"):
        text = f"{text} - {body}"
    key = os.environ.get("OPENAI_API_KEY", "")
    text = redact_credentials(text)
    return text.replace(key, "<OPENAI_API_KEY>") if len(key) >= 4 else text


_URL_CREDENTIALS = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@]*@")


def redact_credentials(text: str) -> str:
    """`text` with the user and password of every URL in it masked (`http://***@host/v1`): a base URL may carry
    them, and they must reach no log, message or file."""
    return _URL_CREDENTIALS.sub(r"\1***@", text)


def strip_credentials(url: str) -> str:
    """The URL without user and password: the server's identity, as the response cache keys it."""
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=host))


def fatal_error_message(error: Exception, api_base: str, model_name: str) -> str | None:
    """One sentence for an error that retrying will not fix, or None when the request is worth retrying."""
    reason = redact_api_key(error)
    if isinstance(error, (openai.AuthenticationError, openai.PermissionDeniedError)):
        return (f"The endpoint {api_base} refused the API key ({reason}); set OPENAI_API_KEY to a valid key "
                f"for this endpoint.")
    if isinstance(error, openai.NotFoundError):
        return (f"The endpoint {api_base} does not know the model '{model_name}' ({reason}); check --model_name "
                f"(for vLLM the name given to `vllm serve`, for Ollama a pulled tag) and that --api_base ends in /v1.")
    if isinstance(error, openai.RateLimitError) and getattr(error, "code", None) == "insufficient_quota":
        return f"The account behind the API key has no quota left at {api_base} ({reason}); add credit and re-run."
    transient = (408, 409, 429)
    if isinstance(error, openai.APIStatusError) and error.status_code < 500 and error.status_code not in transient:
        return f"The endpoint {api_base} rejected the request ({reason}); check the flags for model '{model_name}'."
    return None


# -- rate limits and the response cache -------------------------------------------------------------


class RateLimiter:
    """A token bucket holding at most `per_minute` units that refill evenly over a minute. `acquire(n)`
    waits until n units are there and takes them; `adjust(n)` gives back (or, negative, charges) units
    once the real cost of a request is known."""

    def __init__(self, per_minute: float):
        self.per_minute = float(per_minute)
        self.level = self.per_minute
        self.updated = time.monotonic()
        self.lock = asyncio.Lock()

    def _refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.per_minute, self.level + (now - self.updated) * self.per_minute / 60)
        self.updated = now

    async def acquire(self, amount: float) -> None:
        amount = min(amount, self.per_minute)  # a request bigger than the whole budget still goes, alone
        async with self.lock:
            self._refill()
            while self.level < amount:
                await asyncio.sleep((amount - self.level) * 60 / self.per_minute)
                self._refill()
            self.level -= amount

    def adjust(self, amount: float) -> None:
        self._refill()
        self.level = min(self.per_minute, self.level + amount)


def cache_key(api_type: str, request: dict, tag: str, api_base: str | None = None) -> str:
    """sha256 of the canonical JSON of everything that defines a request: endpoint kind, body (model,
    prompts, decoding settings), its place in the run (`tag`, e.g. "request 12, prompt 3"), so that two
    equal prompts at different places keep their own responses, and the server (`api_base`, credentials stripped:
    a model retrained and served under the same name elsewhere must not replay the old one's answers). Never
    contains the API key."""
    identity = {"api_type": api_type, "request": request, "tag": tag}
    if api_base is not None:
        identity["api_base"] = strip_credentials(api_base)
    canonical = json.dumps(identity, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8", errors="surrogatepass")).hexdigest()


CACHE_FILE = "responses.sqlite3"


class ResponseCache:
    """The response cache of one run's directory: one SQLite file, `DIR/responses.sqlite3`, with a row (key, record
    JSON) per checked response. WAL mode and a 60 s busy timeout make it safe for two processes at once (a second
    run, `data_tools.py cache`); every store is its own committed transaction, so a killed run loses at most the
    response in hand (WAL with synchronous=NORMAL survives a killed process; only a power cut may drop the
    latest commits, which are then asked again). Records are written with ASCII escapes, as checked JSON.

    The per-file cache of earlier versions (`DIR/<sha256>.json`) did not record the server, so its entries cannot be
    told apart by endpoint: it is not read, and the first open says so in one line. Nothing is created on disk until
    the first response is stored, so a run that never got an answer leaves no cache behind."""

    def __init__(self, cache_dir: str):
        self.cache_dir = cache_dir
        self.path = os.path.join(cache_dir, CACHE_FILE)
        self._db: sqlite3.Connection | None = None
        old = [name for name in os.listdir(cache_dir) if re.fullmatch(r"[0-9a-f]{64}\.json", name)] \
            if os.path.isdir(cache_dir) else []
        if old:
            megabytes = sum(os.path.getsize(os.path.join(cache_dir, name)) for name in old) / 1e6
            logger.warning("%s holds %d responses in the one-file-per-response cache of earlier versions, which did "
                           "not record the server that answered; they are not used (delete %s/*.json to free "
                           "%.1f MB).", cache_dir, len(old), cache_dir, megabytes)

    @property
    def db(self) -> sqlite3.Connection:
        """The open store, created (with its directory) on first use."""
        if self._db is None:
            os.makedirs(self.cache_dir, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, record TEXT NOT NULL)")
        return self._db

    def exists(self) -> bool:
        return self._db is not None or os.path.exists(self.path)

    def load(self, key: str) -> dict | None:
        if not self.exists():
            return None
        row = self.db.execute("SELECT record FROM responses WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        try:
            return json.loads(row[0])
        except ValueError:  # not written by us: ask again
            return None

    def store(self, key: str, record: dict) -> None:
        self.db.execute("INSERT OR REPLACE INTO responses (key, record) VALUES (?, ?)", (key, json.dumps(record)))

    def records(self) -> list[str]:
        """Every stored record, as its JSON text (to inspect what a cache holds)."""
        return [row[0] for row in self.db.execute("SELECT record FROM responses ORDER BY rowid")]

    def size(self) -> tuple[int, int]:
        """(responses stored, bytes on disk: the database with its write-ahead log)."""
        (count,) = self.db.execute("SELECT COUNT(*) FROM responses").fetchone()
        files = [self.path, self.path + "-wal"]
        return count, sum(os.path.getsize(f) for f in files if os.path.exists(f))

    def size_line(self) -> str:
        count, size = self.size()
        return (f"response cache {self.path}: {count:,} responses, {size / 1e6:.1f} MB (clear it with `python "
                f"data_tools.py cache {os.path.dirname(self.path)} --clear`)")

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


def clear_cache(cache_dir: str) -> int:
    """Delete the response cache in `cache_dir` (the store, its log, and old per-file entries); returns the files
    deleted. Leaves the directory and anything else in it."""
    names = [CACHE_FILE, CACHE_FILE + "-wal", CACHE_FILE + "-shm"]
    names += [name for name in os.listdir(cache_dir) if re.fullmatch(r"[0-9a-f]{64}\.json(\.tmp)?", name)]
    deleted = 0
    for name in names:
        try:
            os.remove(os.path.join(cache_dir, name))
            deleted += 1
        except FileNotFoundError:
            pass
    return deleted


# -- plain HTTP/1.1 --------------------------------------------------------------------------------
#
# Measured at --max_concurrency 64 against an instant loopback server (bench/bench_generate.py --mode fleet): the
# `openai` client spends most of each request in its HTTP stack (httpx2 and httpcore2 poll every pooled connection
# for every request, and each body goes through its type transforms); these few lines of asyncio streams do the
# same JSON POST at several times the rate. The `openai` client still serves servers reached through a proxy
# (HTTP(S)_PROXY: httpx honours them) and provides the error classes.


class HTTPPool:
    """Keep-alive HTTP/1.1 connections to one server for JSON POSTs: `post(path, body)` -> (status, headers, body).

    http and https (the system's certificates); a reply body longer than `max_bytes` raises MalformedResponse as
    soon as it is known to be; connection failures raise openai.APIConnectionError. A pooled connection that the
    server closed while idle is retried once on a fresh one (nothing was read from it, so nothing is lost). A request
    cancelled midway (the whole-request timeout) closes its connection instead of returning it to the pool."""

    def __init__(self, url: str, headers: dict[str, str], max_bytes: int):
        parts = urllib.parse.urlsplit(url)
        self.host, self.tls = parts.hostname, parts.scheme == "https"
        self.port = parts.port or (443 if self.tls else 80)
        self.base_path = parts.path.rstrip("/")
        self.url = redact_credentials(url)
        host_header = parts.netloc.rpartition("@")[2]
        if parts.username is not None:  # credentials in the URL: HTTP basic auth, as httpx sends them
            userinfo = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
            headers = {**headers, "Authorization": "Basic " + base64.b64encode(userinfo.encode()).decode()}
        self.head = "".join(f"{name}: {value}\r\n" for name, value in {"Host": host_header, **headers}.items())
        self.max_bytes = max_bytes
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.ssl = ssl.create_default_context() if self.tls else None

    async def post(self, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        request = (f"POST {self.base_path}{path} HTTP/1.1\r\n{self.head}Content-Length: {len(body)}\r\n\r\n"
                   .encode("latin-1") + body)
        while self.idle:
            connection = self.idle.pop()
            if connection[0].at_eof():
                connection[1].close()
                continue
            try:
                return await self._exchange(connection, request, path)
            except _StaleConnection:
                continue  # closed by the server while idle: try the next, or a new connection
        try:
            connection = await asyncio.open_connection(self.host, self.port, ssl=self.ssl,
                                                       server_hostname=self.host if self.tls else None,
                                                       limit=2**20)
        except (OSError, ssl.SSLError) as error:
            raise self._connection_error(path, error) from None
        try:
            return await self._exchange(connection, request, path)
        except _StaleConnection as error:
            raise self._connection_error(path, error.__cause__) from None

    async def _exchange(self, connection, request: bytes, path: str) -> tuple[int, dict[str, str], bytes]:
        reader, writer = connection
        done = False
        try:
            try:
                writer.write(request)
                await writer.drain()
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as error:
                if error.partial:  # the server said something, then hung up: not a stale connection
                    raise self._connection_error(path, error) from None
                raise _StaleConnection() from ConnectionResetError("the server closed the connection")
            except (OSError, ssl.SSLError) as error:
                raise _StaleConnection() from error
            try:
                status, headers = _parse_head(head)
                body = await self._read_body(reader, headers)
            except (OSError, ssl.SSLError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) \
                    as error:
                raise self._connection_error(path, error) from None
            done = headers.get("connection", "").lower() != "close" and head.startswith(b"HTTP/1.1")
            return status, headers, body
        finally:
            if done:
                self.idle.append(connection)
            else:
                writer.close()

    async def _read_body(self, reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
        too_large = MalformedResponse(f"the server's reply is longer than --max_response_bytes {self.max_bytes:,}")
        if "chunked" in headers.get("transfer-encoding", "").lower():
            chunks, size = [], 0
            while True:
                length = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
                if length == 0:
                    await _skip_trailers(reader)
                    return b"".join(chunks)
                size += length
                if size > self.max_bytes:
                    raise too_large
                chunks.append(await reader.readexactly(length))
                await reader.readexactly(2)
        declared = headers.get("content-length")
        if declared is not None:
            if int(declared) > self.max_bytes:
                raise too_large
            return await reader.readexactly(int(declared))
        body = await reader.read(self.max_bytes + 1)  # no length given: the body ends with the connection
        while len(body) <= self.max_bytes:
            more = await reader.read(self.max_bytes + 1 - len(body))
            if not more:
                return body
            body += more
        raise too_large

    def _connection_error(self, path: str, error: BaseException | None) -> openai.APIConnectionError:
        reason = f"{type(error).__name__}: {error}" if error is not None and str(error) else type(error).__name__
        return openai.APIConnectionError(message=f"Connection error ({reason}).",
                                         request=httpx2.Request("POST", f"{self.url}{path}"))

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()


class _StaleConnection(Exception):
    """A pooled connection failed before a byte of the reply arrived (the server closed it while idle)."""


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    """(status code, {lower-case header name: value}) of a reply's status line and headers; ValueError when it is
    not HTTP."""
    status_line, _, header_block = head.decode("latin-1").partition("\r\n")
    parts = status_line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ValueError(f"not an HTTP reply: {status_line[:40]!r}")
    headers = {}
    for line in header_block.split("\r\n"):
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


async def _skip_trailers(reader: asyncio.StreamReader) -> None:
    while (await reader.readline()) not in (b"\r\n", b"\n", b""):
        pass


def status_error(client: openai.AsyncOpenAI, url: str, status: int, headers: dict[str, str],
                 body: bytes) -> openai.APIStatusError:
    """The `openai` exception (RateLimitError, NotFoundError, ...) the `openai` client raises for this reply, with
    the same message and attributes, so that the retry rules above read both transports alike. (The client's
    `_make_status_error_from_response` is private API; openai is pinned in requirements.txt.)"""
    response = httpx2.Response(status, headers=headers, content=body, request=httpx2.Request("POST", url))
    return client._make_status_error_from_response(response)


def behind_proxy(url: str) -> bool:
    """Whether the environment routes `url` through a proxy (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY, minus NO_PROXY)."""
    parts = urllib.parse.urlsplit(url)
    proxies = urllib.request.getproxies_environment()
    if not (proxies.get(parts.scheme) or proxies.get("all")):
        return False
    return not urllib.request.proxy_bypass_environment(parts.hostname or "", proxies)


# -- the endpoint -----------------------------------------------------------------------------------


def resolve_api_base(api_base: str | None) -> str:
    return (api_base or os.environ.get("OPENAI_BASE_URL") or OPENAI_API_BASE).rstrip("/")


def check_base_url(url: str, flag: str = "--api_base") -> str:
    """`url` without a trailing slash, or SettingError saying, in one sentence, why it is no base URL (the
    credentials in it masked)."""
    shown = redact_credentials(url)
    example = "e.g. http://localhost:8000/v1"
    if not url or any(c.isspace() for c in url):
        return _bad_url(flag, shown, f"it is empty or holds a space ({example})")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        return _bad_url(flag, shown, f"it must start with http:// or https:// ({example})")
    try:
        port = parts.port
    except ValueError:
        return _bad_url(flag, shown, "its port is not a number from 0 to 65535")
    if not parts.hostname or (port is None and parts.netloc.rpartition("@")[2].endswith(":")):
        return _bad_url(flag, shown, f"it names no host ({example})")
    if parts.query or parts.fragment:
        return _bad_url(flag, shown, "a base URL carries no query (?...) or fragment (#...)")
    return url.rstrip("/")


def _bad_url(flag: str, shown: str, why: str):
    raise SettingError(f"{flag} {shown!r} is not a base URL: {why}.")


def check_number_settings(**settings: float | None) -> None:
    """SettingError, naming the flag, for a numeric endpoint or decoding setting that cannot work: a rate limit,
    timeout or size that is not above 0 (a negative rate busy-loops, a zero timeout fails every request), a
    negative temperature, a top_p outside [0, 1], fewer than one request in flight. None means "not set"."""
    above_zero = ("requests_per_minute", "tokens_per_minute", "request_timeout", "max_response_bytes")
    at_least = {"max_concurrency": 1, "max_retries": 0, "retry_base_delay": 0, "retry_max_delay": 0,
                "temperature": 0}
    for name, value in settings.items():
        if value is None:
            continue
        if not is_number(value) or math.isnan(value):
            raise SettingError(f"--{name} takes a number, not {value!r}.")
        if name in above_zero and not value > 0:
            raise SettingError(f"--{name} must be above 0, not {value:g}.")
        if name in at_least and value < at_least[name]:
            raise SettingError(f"--{name} must be at least {at_least[name]}, not {value:g}.")
        if name in ("max_concurrency", "max_retries") and not math.isfinite(value):
            raise SettingError(f"--{name} must be a whole number, not {value:g}.")
        if name == "top_p" and not 0 <= value <= 1:
            raise SettingError(f"--top_p must be between 0 and 1, not {value:g}.")


def resolve_api_key(api_base: str) -> str:
    """OPENAI_API_KEY; a placeholder for self-hosted servers (vLLM, Ollama, llama.cpp) that need none."""
    key = os.environ.get("OPENAI_API_KEY")
    if key:
        return key
    if "api.openai.com" in api_base:
        raise LLMError("OPENAI_API_KEY is not set: export your OpenAI API key, or pass --api_base to use a "
                       "self-hosted OpenAI-compatible server (vLLM, Ollama, llama.cpp) instead.")
    return "EMPTY"


def check_settings(api_type: str, model_name: str | None, api_base: str | None, **settings: float | None) -> None:
    """Raise LLMError for settings that cannot work (unknown api_type, a local model that is not a directory, no
    API key for OpenAI itself, a malformed base URL; `settings` such as requests_per_minute=-1 or top_p=2 by
    `check_number_settings`), so that a run fails in one sentence before it creates or touches any file."""
    if api_type not in API_TYPES:
        raise errors.UsageError(f"--api_type must be one of {', '.join(API_TYPES)}, not '{api_type}'.")
    check_number_settings(**settings)
    if api_type == "local":
        if not model_name or not os.path.isdir(model_name):
            raise errors.MissingPathError(
                "--api_type local needs a local Hugging Face model directory as the model (the generator's "
                f"--model_name, the judge's and the rater's --judge_model); {model_name!r} is not a directory.")
        return
    for url in parse_api_bases(api_base):
        resolve_api_key(url)


def parse_api_bases(api_base: str | None) -> list[str]:
    """The base URLs `api_base` names (default OPENAI_BASE_URL, else OpenAI's), each checked by `check_base_url`:
    one URL, several separated by commas, or `@FILE`, a file of URLs (one per line or comma-separated; blank lines
    and lines starting with # are skipped). SettingError for a bad URL, a URL given twice, or an unreadable file."""
    value = resolve_api_base(api_base)
    source = "--api_base"
    if value.startswith("@"):
        source = f"the URL file {value[1:]}"
        try:
            with open(os.path.expanduser(value[1:]), encoding="utf-8") as f:
                lines = [line for line in f if not line.lstrip().startswith("#")]
        except (OSError, UnicodeDecodeError) as error:
            raise SettingError(f"--api_base {value!r}: cannot read the URL file ({error.strerror or error}).") \
                from None
        value = ",".join(line.strip() for line in lines)
    items = [item.strip() for item in value.split(",") if item.strip()]
    if not items:
        raise SettingError(f"{source} names no base URL; give one, e.g. http://localhost:8000/v1.")
    urls = [check_base_url(item) for item in items]
    identities = [strip_credentials(url) for url in urls]
    twice = next((url for url, identity in zip(urls, identities, strict=True) if identities.count(identity) > 1), None)
    if twice is not None:
        raise SettingError(f"{source} names the server {redact_credentials(twice)} twice; give each server once "
                           "(its share of --max_concurrency follows from the number of servers).")
    return urls


# The `openai` client for every server instead of HTTPPool: for comparing the two (bench/), or as a way out.
USE_OPENAI_CLIENT = False


@dataclasses.dataclass
class Server:
    """One model server behind an endpoint: its URL (credentials and all: requests go there), the URL as shown
    (credentials masked), its share of max_concurrency, the requests it has in flight, and when its backoff ends."""

    url: str
    shown: str
    capacity: int
    in_flight: int = 0
    healthy_after: float = 0.0  # monotonic seconds; before this it gets no new request (backed off)
    failures: int = 0  # failures in a row, for its backoff
    client: object = None  # the `openai` client, for a server behind a proxy
    pool: "HTTPPool | None" = None  # plain HTTP, for every other server


class Fleet:
    """The servers behind one LLMEndpoint and the choice of a server for each request: the one with the fewest
    requests in flight among those under their share of `max_concurrency` and not backed off (ties: the first
    given). A server that fails is backed off (`failed`) while the others take the requests; one that answers is
    healthy again. `clock` is monotonic seconds (tests pass their own)."""

    def __init__(self, urls: Sequence[str], max_concurrency: int, clock: Callable[[], float] = time.monotonic):
        share, extra = divmod(max_concurrency, len(urls))
        self.servers = [Server(url, redact_credentials(url), max(1, share + (i < extra))) for i, url in enumerate(urls)]
        self.clock = clock
        self.waiting: list[asyncio.Future] = []  # requests waiting for a server with room

    def pick(self, now: float) -> Server | None:
        """The server the next request goes to at time `now`, or None when every one is full or backed off."""
        ready = [s for s in self.servers if s.in_flight < s.capacity and s.healthy_after <= now]
        return min(ready, key=lambda s: s.in_flight, default=None)

    def wait_seconds(self, now: float) -> float | None:
        """How long until a backed-off server with room is ready again (None: only a finishing request frees one)."""
        waits = [s.healthy_after - now for s in self.servers if s.in_flight < s.capacity and s.healthy_after > now]
        return max(0.0, min(waits)) if waits else None

    async def acquire(self) -> Server:
        """A server for one request, counted in flight until `release`; waits while none has room."""
        while True:
            server = self.pick(self.clock())
            if server is not None:
                server.in_flight += 1
                return server
            woken = asyncio.get_running_loop().create_future()
            self.waiting.append(woken)
            try:
                await asyncio.wait_for(woken, self.wait_seconds(self.clock()))
            except TimeoutError:
                pass  # a backed-off server's time is up
            finally:
                if woken in self.waiting:
                    self.waiting.remove(woken)

    def release(self, server: Server) -> None:
        """The request on `server` is over; wakes the waiting ones. Synchronous, so a cancelled request releases too."""
        server.in_flight -= 1
        for woken in self.waiting:
            if not woken.done():
                woken.set_result(None)
        self.waiting.clear()

    def failed(self, server: Server, backoff: float) -> None:
        """Back `server` off for `backoff` seconds (longer if it already was), so new requests go elsewhere."""
        server.failures += 1
        server.healthy_after = max(server.healthy_after, self.clock() + backoff)

    def answered(self, server: Server) -> None:
        server.failures = 0

    def any_other_ready(self, server: Server) -> bool:
        """Whether a request that just failed on `server` can go to another server now."""
        now = self.clock()
        return any(s is not server and s.healthy_after <= now for s in self.servers)


class LLMEndpoint:
    """An OpenAI-compatible endpoint (api_type "completions" or "chat") or a local Hugging Face model
    (api_type "local", model_name a directory), with concurrency, rate limits, retries and the cache.

    Use inside a running event loop: `async with LLMEndpoint(api_type=..., ...) as endpoint:
    await endpoint.complete(...)`. Every argument is keyword-only.
    """

    def __init__(self, *, api_type: str = "completions", model_name: str | None = None, api_base: str | None = None,
                 max_concurrency: int = 1, requests_per_minute: float | None = None,
                 tokens_per_minute: float | None = None, max_retries: int = 8, retry_base_delay: float = 1.0,
                 retry_max_delay: float = 60.0, request_timeout: float = 600.0, cache_dir: str | None = None,
                 max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES):
        check_settings(api_type, model_name, api_base, max_concurrency=max_concurrency,
                       requests_per_minute=requests_per_minute, tokens_per_minute=tokens_per_minute,
                       max_retries=max_retries, retry_base_delay=retry_base_delay, retry_max_delay=retry_max_delay,
                       request_timeout=request_timeout, max_response_bytes=max_response_bytes)
        self.api_type = api_type
        self.model_name = model_name or DEFAULT_MODEL_NAMES[api_type]
        self.max_concurrency = max(1, int(max_concurrency))
        self.semaphore = asyncio.Semaphore(self.max_concurrency)
        self.request_limiter = RateLimiter(requests_per_minute) if requests_per_minute else None
        self.token_limiter = RateLimiter(tokens_per_minute) if tokens_per_minute else None
        self.max_retries, self.retry_base_delay, self.retry_max_delay = max_retries, retry_base_delay, retry_max_delay
        self.request_timeout = request_timeout
        self.max_response_bytes = int(max_response_bytes)
        self.cache_dir = cache_dir
        self.cache: ResponseCache | None = None  # opened on entering, so that a failed start touches no file
        self.succeeded = False
        self.sleep = asyncio.sleep  # how a retry waits; tests put a recorder here instead of waiting
        # Whether the server takes a list of prompts in one completions request: None until the first such
        # request tells; False switches to one prompt per request (llama.cpp's server, `transformers serve`).
        self.prompt_lists_accepted: bool | None = None
        self.prompt_list_refusal_logged = False
        if api_type == "local":
            self.api_base = "local"
            from alpaca.llm.local import LocalCausalLM  # torch and transformers: only for a local model

            self.local_model = LocalCausalLM(self.model_name)
            self.local_lock = asyncio.Lock()
            return
        urls = parse_api_bases(api_base)
        self.fleet = Fleet(urls, self.max_concurrency)
        self.api_base = ", ".join(s.shown for s in self.fleet.servers)  # for messages: never a password in a URL
        # max_retries=0: the client must not retry on its own; we do, with backoff, Retry-After and logging.
        # Its timeout bounds each read; ours (asyncio.wait_for in _send) bounds the whole request.
        self.client = openai.AsyncOpenAI(api_key=resolve_api_key(urls[0]), base_url=urls[0],
                                         organization=os.environ.get("OPENAI_ORG") or None,
                                         timeout=request_timeout, max_retries=0)
        headers = {"Authorization": f"Bearer {resolve_api_key(urls[0])}", "Content-Type": "application/json",
                   "Accept": "application/json", "User-Agent": "alpaca-llm-client"}
        if os.environ.get("OPENAI_ORG"):
            headers["OpenAI-Organization"] = os.environ["OPENAI_ORG"]
        for server in self.fleet.servers:
            if USE_OPENAI_CLIENT or behind_proxy(server.url):  # with_options shares the client's connection pool
                server.client = self.client.with_options(base_url=server.url)
            else:
                server.pool = HTTPPool(server.url, headers, self.max_response_bytes)

    async def __aenter__(self) -> "LLMEndpoint":
        if self.cache_dir:
            self.cache = ResponseCache(self.cache_dir)
        return self

    async def __aexit__(self, *exc) -> None:
        if self.cache is not None:
            if self.cache.exists():
                print(self.cache.size_line(), file=sys.stderr)
            self.cache.close()
            self.cache = None
        if self.api_type != "local":
            for server in self.fleet.servers:
                if server.pool is not None:
                    server.pool.close()
            await self.client.close()

    def calls_per_batch(self, num_prompts: int) -> int:
        """Requests one batch of prompts takes: one on the completions endpoint, one per prompt on chat."""
        return num_prompts if self.api_type == "chat" else 1

    async def complete(self, prompts: Sequence[str], decoding_args: OpenAIDecodingArguments, tag: str = "",
                       **decoding_kwargs) -> dict:
        """Complete a batch of prompts. Returns {"choices": [...] (choices_of, prompt-major), "usage":
        token counts, "cached": bool, "seconds": wall time}. `tag` names the batch's place in the run."""
        start = time.monotonic()
        results = None
        one_request = self.api_type == "local" or (self.api_type == "completions" and (
            len(prompts) == 1 or self.prompt_lists_accepted is not False))
        if one_request:
            request = build_request(self.api_type, self.model_name, prompts, decoding_args, **decoding_kwargs)
            probe = self.api_type == "completions" and len(prompts) > 1 and self.prompt_lists_accepted is None
            try:
                results = [await self._call(request, f"{tag}/0", probe_prompt_list=probe)]
                if probe:
                    self.prompt_lists_accepted = True
            except PromptListRejected as refusal:
                if not self.prompt_list_refusal_logged:
                    self.prompt_list_refusal_logged = True
                    logger.warning("%s refused a list of %d prompts in one completions request (%s); trying one "
                                   "prompt per request", self.api_base, len(prompts), refusal)
        if results is None:  # chat, or a server that takes one prompt per completions request
            requests = [build_request(self.api_type, self.model_name, [p], decoding_args, **decoding_kwargs)
                        for p in prompts]
            if self.api_type == "completions":  # as a string: such servers refuse even a list of one
                requests = [{**r, "prompt": r["prompt"][0]} for r in requests]
            results = await asyncio.gather(*(self._call(r, f"{tag}/{j}") for j, r in enumerate(requests)))
            if self.api_type == "completions" and self.prompt_lists_accepted is None:
                self.prompt_lists_accepted = False
                logger.warning("%s takes one prompt per completions request: sending one prompt per request from "
                               "now on (still up to %d in flight; the output is the same).", self.api_base,
                               self.max_concurrency)
        usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        for response, _ in results:
            usage = {k: usage[k] + v for k, v in usage_of(response).items()}
        return {"choices": [c for response, _ in results for c in choices_of(response)], "usage": usage,
                "cached": all(cached for _, cached in results), "seconds": time.monotonic() - start}

    async def _call(self, request: dict, tag: str, probe_prompt_list: bool = False) -> tuple[dict, bool]:
        """One request: from the cache when it holds it, else sent, checked and stored before it is returned."""
        # A response cached from any server of the fleet is one of this fleet's: servers given as one list serve
        # the same model. One from a server not in the list is not (see cache_key).
        servers = self.fleet.servers if self.api_type != "local" else [None]
        keys = {id(server): cache_key(self.api_type, request, tag, server.url if server else None)
                for server in servers}
        for server in servers:
            record = self.cache.load(keys[id(server)]) if self.cache else None
            if isinstance(record, dict) and response_problem(record.get("response"), self.api_type,
                                                             expected_choices(request)) is None:
                return record["response"], True
        async with self.semaphore:
            response, sent, server = await self._send(request, keys[id(servers[0])], probe_prompt_list)
        if self.cache:
            self.cache.store(keys[id(server)], {"api_type": self.api_type, "tag": tag, "request": request,
                                                "sent_max_tokens": sent.get("max_tokens"), "response": response})
        return response, False

    async def _send(self, request: dict, key: str, probe_prompt_list: bool = False) -> tuple[dict, dict, Server]:
        """Send until it works: backoff on transient errors, 20% less max_tokens on context-length errors.
        With `probe_prompt_list`, a 400/422/500 to a list of prompts raises PromptListRejected at once. Each attempt
        goes to the fleet's least busy server; one that fails is backed off and the retry goes to another when one
        is ready (one server: the retry waits its backoff, as always). Returns (response, what was sent, server)."""
        attempt = malformed = 0
        max_tokens = request.get("max_tokens")
        while True:
            sent = {**request, "max_tokens": max_tokens} if max_tokens is not None else dict(request)
            # Tokens the request may use, as OpenAI counts them against the quota: ~4 characters per prompt
            # token plus max_tokens for every completion; settled with the real usage once it is known.
            prompt_chars = sum(map(len, prompts_of(sent)))
            prompt_chars += sum(len(m["content"]) for m in sent.get("messages", []))
            estimate = prompt_chars / 4 + (max_tokens or 0) * expected_choices(sent)
            if self.request_limiter:
                await self.request_limiter.acquire(1)
            if self.token_limiter:
                await self.token_limiter.acquire(estimate)
            server = await self.fleet.acquire() if self.api_type != "local" else None
            shown = server.shown if server else self.api_base
            try:
                response = await self._post(sent, key, server)
            except Exception as error:  # noqa: BLE001 - sorted into shrink / retry / fatal below
                if self.token_limiter:
                    self.token_limiter.adjust(estimate)  # a failed request used no tokens
                if is_context_length_error(error):
                    max_tokens = int(max_tokens * 0.8) if max_tokens else 0
                    if max_tokens < 1:
                        raise LLMError(f"The prompt alone exceeds the context of model '{self.model_name}' at "
                                       f"{shown}; lower --num_prompt_instructions.") from error
                    logger.warning("%s: context length exceeded; retrying with max_tokens=%d",
                                   shown, max_tokens)
                    continue
                if probe_prompt_list and isinstance(error, openai.APIStatusError) \
                        and error.status_code in (400, 422, 500):
                    raise PromptListRejected(error) from error
                if isinstance(error, MalformedResponse):
                    malformed += 1
                    if malformed > MALFORMED_RETRIES:  # the same fault three times: it is the server, not chance
                        raise LLMError(f"Gave up after {attempt + 1} attempts at {shown}: {error}; check "
                                       f"that --api_base points at an OpenAI-compatible server.") from error
                self._raise_if_fatal(error, attempt, shown)
                retry_after = retry_after_seconds(error)
                if isinstance(error, MalformedResponse):  # quick: a glitch clears at once, a broken server never
                    delay = backoff_seconds(malformed - 1, min(self.retry_base_delay, MALFORMED_RETRY_DELAY),
                                            self.retry_max_delay)
                else:
                    delay = backoff_seconds(attempt, self.retry_base_delay, self.retry_max_delay, retry_after)
                attempt += 1
                capped = (f" (the server asked for {retry_after:g} s; waits are capped at {RETRY_AFTER_CAP:g} s)"
                          if retry_after is not None and retry_after > RETRY_AFTER_CAP else "")
                if server and len(self.fleet.servers) > 1:
                    self.fleet.failed(server, delay)
                    if self.fleet.any_other_ready(server):  # the others continue; this one is backed off
                        logger.warning("%s: %s; backed off %.1f s, retry %d of %d on another server%s", shown,
                                       redact_api_key(error), delay, attempt, self.max_retries, capped)
                        continue
                logger.warning("%s: %s; retry %d of %d in %.1f s%s",
                               shown, redact_api_key(error), attempt, self.max_retries, delay, capped)
                await self.sleep(delay)
                continue
            if server:
                self.fleet.answered(server)
            self.succeeded = True
            if self.token_limiter:
                self.token_limiter.adjust(estimate - usage_of(response)["total_tokens"])
            return response, sent, server

    def _raise_if_fatal(self, error: Exception, attempt: int, shown: str) -> None:
        retryable_own = isinstance(error, (MalformedResponse, TimeoutError))
        if not isinstance(error, openai.OpenAIError) and not retryable_own:  # LLMError, a local model's failure
            raise error
        message = fatal_error_message(error, shown, self.model_name)
        if message:
            raise LLMError(message) from error
        unreachable = isinstance(error, openai.APIConnectionError) and not isinstance(error, openai.APITimeoutError)
        if unreachable and not self.succeeded and attempt >= 2:  # never answered: say so now, not after 8 tries
            raise LLMError(f"Could not reach the endpoint {shown} ({redact_api_key(error)}); check that the "
                           "server is running and that --api_base is right (it usually ends in /v1).") from error
        if attempt >= self.max_retries:
            raise LLMError(f"Gave up after {attempt + 1} attempts at {shown}: {redact_api_key(error)}. "
                           "Everything kept so far is saved; re-run the same command to resume.") from error

    async def _post(self, request: dict, key: str, server: Server | None = None) -> dict:
        """One HTTP request (or local generation), its body parsed and checked: MalformedResponse if unusable,
        TimeoutError when the whole exchange takes longer than request_timeout. `server`, acquired from the fleet,
        is released here however the request ends (cancelled included)."""
        try:
            return await self._post_to(request, key, server)
        finally:
            if server is not None:
                self.fleet.release(server)

    async def _post_to(self, request: dict, key: str, server: Server | None) -> dict:
        if self.api_type == "local":
            async with self.local_lock:  # one generate() at a time; the seed makes it reproducible
                response = await asyncio.to_thread(self.local_model.generate, request, int(key[:8], 16))
        else:
            try:
                if server.pool is not None:
                    raw = await asyncio.wait_for(self._post_http(server, request), self.request_timeout)
                else:
                    create = server.client.chat.completions if self.api_type == "chat" else server.client.completions
                    raw = await asyncio.wait_for(self._post_raw(create, request, self.max_response_bytes),
                                                 self.request_timeout)
            except TimeoutError:
                raise TimeoutError(f"no complete response within --request_timeout {self.request_timeout:g} s") \
                    from None
            try:
                response = json.loads(raw)
            except ValueError:
                shown = raw.strip()[:80] or "an empty body"
                raise MalformedResponse(f"the server answered HTTP 200 with a body that is not JSON ({shown!r})") \
                    from None
        problem = response_problem(response, self.api_type, expected_choices(request))
        if problem:
            raise MalformedResponse(f"the server answered HTTP 200 with a malformed response ({problem})")
        return response

    async def _post_http(self, server: Server, request: dict) -> str:
        """The body of one request over plain HTTP as text; the `openai` client's exception for a non-2xx reply."""
        path = "/chat/completions" if self.api_type == "chat" else "/completions"
        status, headers, body = await server.pool.post(path, json.dumps(request).encode("utf-8"))
        if not 200 <= status < 300:
            raise status_error(self.client, f"{server.shown}{path}", status, headers, body)
        return body.decode("utf-8", errors="replace")

    @staticmethod
    async def _post_raw(create, request: dict, max_bytes: int) -> str:
        """The body of one request as text, read to the end (the client raises APIStatusError on non-2xx), or
        MalformedResponse as soon as it is longer than `max_bytes`."""
        too_large = MalformedResponse(f"the server's reply is longer than --max_response_bytes {max_bytes:,}")
        async with create.with_streaming_response.create(**request) as response:
            declared = response.headers.get("content-length") or ""
            if declared.isdigit() and int(declared) > max_bytes:
                raise too_large
            chunks, size = [], 0
            async for chunk in response.iter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise too_large
                chunks.append(chunk)
        return b"".join(chunks).decode("utf-8", errors="replace")


async def complete_in_order(endpoint: LLMEndpoint, make_prompts: Callable[[int], list[str]],
                            decoding_args: OpenAIDecodingArguments, first_index: int = 0,
                            last_index: int | None = None, should_launch: Callable[[int], bool] = lambda pending: True,
                            tag_of: Callable[[int], str] = "request {}".format,
                            **decoding_kwargs) -> AsyncIterator[tuple[int, list[str], dict]]:
    """Yield (index, prompts, result) for batches first_index, first_index+1, ... strictly in index order,
    while up to `endpoint.max_concurrency` requests are in flight. `make_prompts(index)` builds a batch
    (it must not depend on other batches' results); `should_launch(unprocessed)` may hold back new batches
    (e.g. when those already sent will likely reach the goal); `tag_of(index)` names the batch for the cache and a
    local model's seed (by default its place in the run). A fatal error stops new launches; the
    batches before it are still yielded, then it is raised. Use with contextlib.aclosing."""
    tasks: dict[int, tuple[list[str], asyncio.Task]] = {}
    next_launch = next_yield = first_index
    try:
        # Batches in flight at once: enough to fill max_concurrency requests (the semaphore caps the exact count).
        calls = endpoint.calls_per_batch(len(make_prompts(first_index)))
        slots = -(-endpoint.max_concurrency // calls)
        while last_index is None or next_yield <= last_index:
            failed = any(t.done() and not t.cancelled() and t.exception() for _, t in tasks.values())
            while (not failed and (last_index is None or next_launch <= last_index) and len(tasks) < 4 * slots
                   and sum(not t.done() for _, t in tasks.values()) < slots
                   and (not tasks or should_launch(len(tasks)))):
                prompts = make_prompts(next_launch)
                task = asyncio.create_task(endpoint.complete(prompts, decoding_args, tag_of(next_launch),
                                                             **decoding_kwargs))
                tasks[next_launch] = (prompts, task)
                next_launch += 1
            prompts, head = tasks[next_yield]
            if not head.done():
                # Wake when any request finishes (a slot frees up), not only the head; done tasks would not wait.
                running = [t for _, t in tasks.values() if not t.done()]
                await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                continue
            del tasks[next_yield]
            yield next_yield, prompts, head.result()
            next_yield += 1
    finally:
        for _, task in tasks.values():
            task.cancel()
        await asyncio.gather(*(t for _, t in tasks.values()), return_exceptions=True)

