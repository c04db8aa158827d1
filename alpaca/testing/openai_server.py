"""A real OpenAI-compatible HTTP server on 127.0.0.1 for tests and benchmarks.

The `openai` client (3.5x) speaks httpx2, which mocking libraries do not intercept, so the tests talk to
this server over a real loopback socket instead. It serves `POST /v1/completions` and
`POST /v1/chat/completions` (and `GET /v1/models`), records every request, and answers either from a
queue of scripted replies (errors, delays, malformed bodies) or, when the queue is empty, from a
responder function of the request. The default responder continues the Self-Instruct list with
deterministic made-up tasks, so that the same request always gets the same answer. A responder may also return
a third value, the top log-probabilities of the first token ({token: logprob}); they are sent, in the endpoint's
format, only to requests that ask for logprobs (a responder returning None plays a server that has none).

    with OpenAIServer() as server:
        server.push(rate_limited(retry_after=0.05), server_error())
        client = openai.OpenAI(base_url=server.url, api_key="sk-test")
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import re
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# Plain lower-case words without any of the generator's blacklisted ones, for made-up tasks.
WORDS = (
    "river stone lantern harbor meadow copper violin orchard glacier pepper candle ribbon anchor basket "
    "thunder saddle marble pillow tunnel feather window garden rocket castle pencil mirror silver forest "
    "blanket ladder compass bottle wallet hammer cactus pirate dragon needle summer winter autumn spring "
    "planet comet desert island valley canyon jungle ocean bridge tower village market kitchen library "
    "teacher doctor farmer sailor painter baker tailor miner pilot judge poet singer dancer runner "
    "apple banana cherry lemon mango onion potato carrot tomato garlic walnut almond pumpkin olive "
    "bicycle engine wagon carriage helmet jacket sandal scarf glove button zipper pocket collar sleeve "
    "budget invoice ledger contract survey report memo agenda schedule roster quota tariff pension"
).split()
VERBS = (
    "Describe Explain Summarize Classify Rewrite List Suggest Compare Translate Estimate Outline Identify "
    "Recommend Evaluate Propose Define Predict Convert Rank Name Generate Paraphrase Analyze Create"
).split()


@dataclasses.dataclass
class Reply:
    """One scripted answer. `texts` (one per prompt) become a normal 200 completion; `body` is sent as
    JSON as it is; `raw` is sent as the literal body (malformed replies). `delay` is seconds before answering."""

    status: int = 200
    texts: list[str] | None = None
    finish_reason: str = "stop"
    finish_reasons: list[str] | None = None  # one per text, overriding finish_reason
    body: Any = None
    raw: str | None = None
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    delay: float = 0.0
    trickle: float = 0.0  # seconds between the body's bytes: a server that streams its answer very slowly
    use_responder: bool = False  # answer as the server would without a script (after `delay`)
    chunked: bool = False  # send the body with Transfer-Encoding: chunked (in 100-byte chunks) instead of a length
    close_after: bool = False  # close the connection after answering without saying so (an idle keep-alive timeout)
    logprobs: list[dict[str, float] | None] | None = None  # per text: top log-probabilities of its first token


def answer(delay: float = 0.0) -> Reply:
    """The responder's normal answer, in its place in the queue (e.g. a success before an error)."""
    return Reply(use_responder=True, delay=delay)


def ok(*texts: str, finish_reason: str = "stop", delay: float = 0.0) -> Reply:
    return Reply(texts=list(texts), finish_reason=finish_reason, delay=delay)


def error_reply(status: int, message: str, type_: str, code: Any = None, headers: dict | None = None) -> Reply:
    return Reply(status=status, body={"error": {"message": message, "type": type_, "param": None, "code": code}},
                 headers=headers or {})


def rate_limited(retry_after: float | None = 0.05) -> Reply:
    headers = {} if retry_after is None else {"Retry-After": f"{retry_after}"}
    return error_reply(429, "Rate limit reached for requests per min (RPM): Limit 3, Used 3, Requested 1.",
                       "requests", "rate_limit_exceeded", headers)


def server_error() -> Reply:
    return error_reply(500, "The server had an error while processing your request. Sorry about that!", "server_error")


def auth_error() -> Reply:
    return error_reply(401, "Incorrect API key provided: sk-te*****123. You can find your API key at "
                       "https://platform.openai.com/account/api-keys.", "invalid_request_error", "invalid_api_key")


def model_not_found(model: str) -> Reply:
    return error_reply(404, f"The model `{model}` does not exist or you do not have access to it.",
                       "invalid_request_error", "model_not_found")


def context_length_error(max_context: int = 4096, prompt_tokens: int = 1500, requested: int = 3072,
                         style: str = "openai") -> Reply:
    """The 400 an OpenAI completions model (style "openai") or vLLM (style "vllm") returns when
    prompt + max_tokens do not fit the context."""
    total = prompt_tokens + requested
    if style == "vllm":
        message = (f"This model's maximum context length is {max_context} tokens. However, you requested {total} "
                   f"tokens ({prompt_tokens} in the messages, {requested} in the completion). Please reduce the "
                   f"length of the messages or completion.")
        return Reply(status=400, body={"object": "error", "message": message, "type": "BadRequestError",
                                       "param": None, "code": 400})
    message = (f"This model's maximum context length is {max_context} tokens, however you requested {total} tokens "
               f"({prompt_tokens} in your prompt; {requested} for the completion). Please reduce your prompt; or "
               f"completion length.")
    return error_reply(400, message, "invalid_request_error", "context_length_exceeded")


def prompt_list_refusal(server: str) -> Reply:
    """What llama.cpp's server ("llama.cpp", HTTP 500) or `transformers serve` ("transformers", HTTP 400) answer to
    a completions request carrying a list of prompts."""
    if server == "transformers":
        return Reply(status=400, body={"detail": "prompt must be a string"})
    return error_reply(500, "Invalid prompt: expected a single string", "server_error")


def malformed() -> Reply:
    return Reply(status=200, raw='{"id": "cmpl-broken", "choices": [')


def next_task_number(prompt: str) -> int:
    """The number the prompt asks the model to continue with (`###\\n4. Instruction:` -> 4)."""
    found = re.findall(r"(\d+)\. Instruction:", prompt)
    return int(found[-1]) if found else 1


def fake_tasks(prompt: str, last: int = 19, salt: str = "") -> str:
    """A deterministic continuation of a Self-Instruct prompt: tasks numbered up to `last`, as a model
    would write them, stopping where the API's stop sequence "\\n20" would cut. Same prompt, same text."""
    rng = random.Random(hashlib.sha256((salt + prompt).encode()).hexdigest())
    first = next_task_number(prompt)
    pieces = []
    for number in range(first, last + 1):
        instruction = " ".join([rng.choice(VERBS)] + rng.sample(WORDS, 8)) + "."
        task_input = "<noinput>" if rng.random() < 0.6 else " ".join(rng.sample(WORDS, 12))
        output = " ".join(rng.sample(WORDS, 10)).capitalize() + "."
        head = f" {instruction}" if number == first else f"\n{number}. Instruction: {instruction}"
        pieces.append(f"{head}\n{number}. Input:\n{task_input}\n{number}. Output:\n{output}\n###")
    return "".join(pieces)


def default_responder(endpoint: str, prompt: str, body: dict) -> tuple[str, str]:
    """(text, finish_reason) for one prompt: the fake tasks, ended as if stopped at "\\n20". A responder may
    return (text, finish_reason, top_logprobs) instead, top_logprobs being {token: logprob} or None."""
    return fake_tasks(prompt), "stop"


def count_tokens(text: str) -> int:
    return len(text.split())


class QuietHTTPServer(ThreadingHTTPServer):
    request_queue_size = 256  # listen backlog: socketserver's 5 resets connections when 64 clients connect at once
    def handle_error(self, request, client_address):
        # A client that gave up (a timeout test, a killed generator) resets its connection: not an error here.
        if not isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            super().handle_error(request, client_address)


class OpenAIServer:
    """A loopback OpenAI-compatible server in a background thread. `url` is the base URL ending in /v1.

    `push(*replies)` queues scripted replies (used first, in order, by any endpoint); `responder(endpoint,
    prompt, body) -> (text, finish_reason)` answers everything else; `delay` (seconds) slows every default
    answer; `max_context`, when set, answers a context-length error to any request whose prompt words plus
    `max_tokens` exceed it; `reject_prompt_lists` ("llama.cpp" or "transformers"), when set, refuses a completions
    request whose `prompt` is a list, even of one, as those servers do (HTTP 500 / HTTP 400 "prompt must be a
    string"). `n` choices are answered per prompt, each from the responder, as OpenAI and vLLM do; `reject_n`,
    when set, refuses a request with n > 1 as `transformers serve` does on completions (HTTP 400); `ignore_n`
    answers one choice whatever n asks, as `transformers serve` does on chat. `requests` holds every request
    received: dicts with path, headers (lower-case names), json and time (monotonic seconds). `in_flight` counts the
    POSTs being answered now and `max_in_flight` the most at once.
    """

    def __init__(self, responder: Callable[[str, str, dict], tuple[str, str]] = default_responder,
                 delay: float = 0.0, max_context: int | None = None, context_style: str = "openai",
                 reject_prompt_lists: str | None = None, reject_n: bool = False,
                 ignore_n: bool = False, port: int = 0):
        self.responder = responder
        self.reject_n, self.ignore_n = reject_n, ignore_n
        self.reject_prompt_lists = reject_prompt_lists
        self.delay = delay
        self.max_context = max_context
        self.context_style = context_style
        self.requests: list[dict] = []
        self.in_flight = self.max_in_flight = 0
        self._queue: list[Reply] = []
        self._lock = threading.Lock()
        self._httpd = QuietHTTPServer(("127.0.0.1", port), self._handler_class())  # port 0: any free one
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def push(self, *replies: Reply) -> None:
        with self._lock:
            self._queue.extend(replies)

    def bodies(self, path_suffix: str = "") -> list[dict]:
        """The JSON bodies of the requests received so far, optionally only those to a path ending so."""
        with self._lock:
            return [r["json"] for r in self.requests if r["path"].endswith(path_suffix)]

    def start(self) -> OpenAIServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> OpenAIServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- answering -------------------------------------------------------------------------------

    def _reply_for(self, path: str, body: dict) -> Reply:
        with self._lock:
            scripted = self._queue.pop(0) if self._queue else None
        if scripted is not None and not scripted.use_responder:
            return scripted
        prompts = prompts_of(path, body)
        if self.reject_prompt_lists and isinstance(body.get("prompt"), list):  # even a list of one
            return prompt_list_refusal(self.reject_prompt_lists)
        if self.max_context is not None:
            prompt_tokens = max(count_tokens(p) for p in prompts)
            requested = int(body.get("max_tokens") or 0)
            if prompt_tokens + requested > self.max_context:
                return context_length_error(self.max_context, prompt_tokens, requested, self.context_style)
        n = 1 if self.ignore_n else int(body.get("n") or 1)
        if self.reject_n and n > 1:
            return Reply(status=400, body={"detail": f"n={n} is not supported; send one request per completion"})
        answers = [self.responder(path, p, body) for p in prompts for _ in range(n)]
        delay = scripted.delay if scripted is not None else self.delay
        return Reply(texts=[a[0] for a in answers], finish_reasons=[a[1] for a in answers], delay=delay,
                     logprobs=[a[2] if len(a) > 2 else None for a in answers])

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall

            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                if self.path.rstrip("/").endswith("/models"):
                    self._send(200, json.dumps({"object": "list", "data": [{"id": "test-model", "object": "model"}]}))
                else:
                    self._send(404, json.dumps({"error": {"message": "Not found", "type": "not_found"}}))

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length).decode("utf-8")
                try:
                    body = json.loads(raw)
                except json.JSONDecodeError:
                    body = {"_unparsable": raw}
                with server._lock:
                    headers = {name.lower(): value for name, value in self.headers.items()}
                    server.requests.append({"path": self.path, "headers": headers, "json": body,
                                            "time": time.monotonic()})
                if not (self.path.endswith("/completions")):
                    self._send(404, json.dumps({"error": {"message": f"Unknown path {self.path}", "type": "x"}}))
                    return
                with server._lock:
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    reply = server._reply_for(self.path, body)
                    if reply.delay:
                        time.sleep(reply.delay)
                finally:
                    with server._lock:
                        server.in_flight -= 1
                if reply.raw is not None:
                    payload = reply.raw
                elif reply.texts is not None:
                    reasons = reply.finish_reasons or [reply.finish_reason] * len(reply.texts)
                    payload = json.dumps(success_body(self.path, body, reply.texts, reasons, reply.logprobs))
                else:
                    payload = json.dumps(reply.body)
                try:
                    if reply.chunked:
                        self._send_chunked(reply.status, payload)
                    else:
                        self._send(reply.status, payload, reply.headers, reply.trickle)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test)
                    pass
                if reply.close_after:
                    self.close_connection = True

            def _send_chunked(self, status: int, payload: str):
                data = payload.encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for i in range(0, len(data), 100):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data[i:i + 100]), data[i:i + 100]))
                self.wfile.write(b"0\r\n\r\n")

            def _send(self, status: int, payload: str, headers: dict | None = None, trickle: float = 0.0):
                data = payload.encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                if not trickle:
                    self.wfile.write(data)
                    return
                for i in range(len(data)):  # one byte at a time: each read of the client gets something
                    self.wfile.write(data[i:i + 1])
                    self.wfile.flush()
                    time.sleep(trickle)

        return Handler


def prompts_of(path: str, body: dict) -> list[str]:
    """The prompts of a request: the completions `prompt` (a string or a list) or the chat messages' text."""
    if path.endswith("/chat/completions"):
        return ["\n".join(m.get("content") or "" for m in body.get("messages", []))]
    prompt = body.get("prompt", "")
    return [prompt] if isinstance(prompt, str) else list(prompt)


def logprobs_body(path: str, text: str, top: dict[str, float] | None) -> dict | None:
    """A choice's `logprobs` in the endpoint's format for a reply whose first token has these top log-probabilities
    (the first token's own log-probability is its entry in `top`, else the best one there)."""
    if not top:
        return None
    token = next((t for t in top if text.startswith(t)), max(top, key=top.get))
    if path.endswith("/chat/completions"):
        return {"content": [{"token": token, "logprob": top.get(token), "bytes": None,
                             "top_logprobs": [{"token": t, "logprob": lp, "bytes": None} for t, lp in top.items()]}],
                "refusal": None}
    return {"tokens": [token], "token_logprobs": [top.get(token)], "top_logprobs": [dict(top)], "text_offset": [0]}


def success_body(path: str, body: dict, texts: list[str], finish_reasons: list[str],
                 logprobs: list[dict[str, float] | None] | None = None) -> dict:
    """A 200 response in the endpoint's format, with usage counted in words; `logprobs` (one per text) only when
    the request asked for them."""
    prompt_tokens = sum(count_tokens(p) for p in prompts_of(path, body))
    completion_tokens = sum(count_tokens(t) for t in texts)
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
             "total_tokens": prompt_tokens + completion_tokens}
    model = body.get("model", "test-model")
    asked = bool(body.get("logprobs"))
    sent = [logprobs_body(path, t, top) if asked else None
            for t, top in zip(texts, logprobs or [None] * len(texts), strict=True)]
    if path.endswith("/chat/completions"):
        choices = [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": r, "logprobs": lp}
                   for i, (t, r, lp) in enumerate(zip(texts, finish_reasons, sent, strict=True))]
        return {"id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": model,
                "choices": choices, "usage": usage}
    choices = [{"index": i, "text": t, "finish_reason": r, "logprobs": lp}
               for i, (t, r, lp) in enumerate(zip(texts, finish_reasons, sent, strict=True))]
    return {"id": "cmpl-test", "object": "text_completion", "created": 0, "model": model,
            "choices": choices, "usage": usage}


def preferring_judge(text: str) -> Callable[[str, str, dict], tuple[str, str]]:
    """A judge with a hidden preference: the answer in which `text` occurs more often wins, [[TIE]] when equal."""
    def responder(path: str, prompt: str, body: dict) -> tuple[str, str]:
        found = re.search(r"<answer_a>\n(.*?)\n</answer_a>\n\n<answer_b>\n(.*?)\n</answer_b>", prompt, flags=re.S)
        if not found:
            return "No two answers to compare.", "stop"
        a, b = (answer.count(text) for answer in found.groups())
        return f"A has {a}, B has {b}. " + ("[[A]]" if a > b else "[[B]]" if b > a else "[[TIE]]"), "stop"
    return responder


FOLLOW_UP_START = "Below is a conversation between a user and an AI assistant."  # generate/conversations.py's


def self_chat_teacher(path: str, prompt: str, body: dict) -> tuple[str, str]:
    """A toy teacher for `generate_instruction.py --num_turns`: Self-Instruct tasks for the generator's prompt, a
    follow-up question for the follow-up prompt, a short answer for a conversation; deterministic in the request."""
    rng = random.Random(hashlib.sha256(prompt.encode()).hexdigest())
    if prompt.startswith(FOLLOW_UP_START):
        return f"User: And what about the {' '.join(rng.sample(WORDS, 3))}?", "stop"
    if path.endswith("/chat/completions") and len(body["messages"]) > 1 or prompt.endswith("\n\nAssistant:"):
        return f" The {' '.join(rng.sample(WORDS, 6))}. ", "stop"
    return fake_tasks(prompt), "stop"


if __name__ == "__main__":  # toys for the docs: python alpaca/testing/openai_server.py --port P --prefer e / --teacher
    import argparse

    parser = argparse.ArgumentParser(description="A loopback judge that prefers answers with more of a string, or a "
                                                 "self-chat teacher.")
    parser.add_argument("--port", type=int, required=True, help="port on 127.0.0.1 to serve /v1 on")
    role = parser.add_mutually_exclusive_group(required=True)
    role.add_argument("--prefer", help="be a judge: the answer with more occurrences of this string wins")
    role.add_argument("--teacher", action="store_true", help="be a teacher for generate_instruction.py --num_turns")
    options = parser.parse_args()
    responder = self_chat_teacher if options.teacher else preferring_judge(options.prefer)
    toy = OpenAIServer(responder=responder, port=options.port).start()
    print(f"toy {'teacher' if options.teacher else 'judge'} at {toy.url}", flush=True)
    toy._thread.join()
