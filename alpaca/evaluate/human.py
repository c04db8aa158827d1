r"""Blind pairwise human evaluation in the browser, and how far the LLM judge agrees with people.

    # each colleague starts a page on the same output directory (one after another, or at the same time)
    python judge.py human --model_outputs outputs/alpaca.json --reference_outputs outputs/reference.json \
        --output_dir judged --annotator alice
    # -> Annotate at http://127.0.0.1:PORT/ ; close the page or stop the server any time, run again to resume

    # win rates from the human verdicts, and agreement with the LLM judge's verdicts in the same directory
    python judge.py human_results --output_dir judged

The pairs are judge.py's: the two files matched on (instruction, input); files with conversation records are
refused (the page shows single-turn instructions only). The page shows one instruction (and input) at a time and the
two answers side by side as "A" and "B", in an order drawn per (annotator, instruction) from `--seed`; no generator
name, file name or path reaches the browser. Identical answers are a tie without being shown, as for the LLM judge.
Every verdict is appended to `output_dir/human_annotations.jsonl` as it is given (flushed and fsynced, under a file
lock shared by every server on that directory); an undo appends an undo record. The file is the only state: a
restarted server resumes at the first pair its annotator has not judged.

`human_results` writes `human_results.json` (judge.py's results.json fields, pooled over annotators and per
annotator; agreement as share agreeing and Cohen's kappa with the number of shared pairs, each annotator against
the LLM judge's `annotations.jsonl` and against each other), prints a summary and draws `human_win_rates.png` and
`human_agreement.png`.

Listening on an address other than loopback (`--host 0.0.0.0`, for a team) needs a token: it is generated at start,
carried in the printed address, and every request without it is refused (403).
"""

import base64
import contextlib
import datetime
import fcntl
import hashlib
import itertools
import json
import os
import random
import re
import secrets
import socket
import unicodedata
import urllib.parse

import numpy as np

from alpaca import REPO_ROOT, errors, files
from alpaca.evaluate import judge, win_rates

ANNOTATIONS_NAME = "human_annotations.jsonl"
PAIRS_NAME = "human_pairs.json"  # the pair set being annotated, written by the first `human` run on a directory
RESULTS_NAME = "human_results.json"
PAGE = REPO_ROOT / "static" / "annotate.html"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
CHOICES = ("A", "B", "tie", "skip")  # what the page sends
PREFERENCE_OF_VERDICT = {"model": 1.0, "reference": 0.0, "tie": 0.5, "skip": None}
LLM_JUDGE = "LLM judge"  # the name of the judge's column in the agreement picture


# -- the pairs ---------------------------------------------------------------------------------------


def pair_key(pair: dict) -> str:
    """sha256 of what an annotator judges: the instruction, the input and both answers."""
    canonical = json.dumps([pair["instruction"], pair["input"], pair["model_output"], pair["reference_output"]],
                           ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def prepare_pairs(model_outputs: str, reference_outputs: str, output_dir: str) -> list[dict]:
    """judge.py's pairs of the two files (with their `key`), recorded in output_dir/human_pairs.json so that
    `human_results` and every other annotator work on the same set. A directory that already holds another set
    (other instructions or answers) is an error: verdicts on old answers would be counted for new ones."""
    pairs = judge.load_pairs(model_outputs, reference_outputs)
    conversations = sum("messages" in pair for pair in pairs)
    if conversations:
        raise errors.DataError(
            f"{reference_outputs} holds {conversations} conversation(s), and the annotation page shows single-turn "
            "instructions only: annotate a file of Alpaca records, and judge conversations with the LLM judge "
            "(python judge.py --model_outputs ... --reference_outputs ...).")
    for pair in pairs:
        pair["key"] = pair_key(pair)
    path = os.path.join(output_dir, PAIRS_NAME)
    if os.path.exists(path):
        stored = load_pair_set(output_dir)
        if [p["key"] for p in stored] != [p["key"] for p in pairs]:
            raise errors.DataError(
                f"{path} records another comparison ({stored[0]['model_generator']} vs "
                f"{stored[0]['reference_generator']}, {len(stored)} pairs) than {model_outputs} vs {reference_outputs}"
                " (other instructions or answers). Annotate these files in a new --output_dir; human verdicts on "
                "other answers cannot count for them.")
        return stored
    os.makedirs(output_dir, exist_ok=True)
    files.write_atomically(path, json.dumps(pairs, indent=1, ensure_ascii=False) + "\n")
    return pairs


def load_pair_set(output_dir: str) -> list[dict]:
    path = os.path.join(output_dir, PAIRS_NAME)
    if not os.path.exists(path):
        raise errors.MissingPathError(f"{path} does not exist: start an annotation with `python judge.py human "
                                   f"--model_outputs ... --reference_outputs ... --output_dir {output_dir} "
                                   "--annotator NAME` first.")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def to_annotate(pairs: list[dict]) -> list[dict]:
    """The pairs a person is shown: all but those with identical answers (a tie without a look, as for the judge)."""
    return [pair for pair in pairs if not judge.identical(pair)]


def model_shown_first(seed: int | str, annotator: str, instruction: str, input: str) -> bool:
    """Whether the model's answer is shown as A to this annotator on this instruction: fixed by the seed, drawn
    anew per annotator so that a position bias spreads evenly over the two generators. `human` passes the seed
    mixed with the output directory's secret (`order_secret`), so the order cannot be worked out from the seed."""
    return random.Random(f"{seed}\0{annotator}\0{instruction}\0{input}").random() < 0.5


ORDER_SECRET_NAME = ".human_order_secret"
MAX_BODY_BYTES = 4096  # the largest request body the annotation server reads


def order_secret(output_dir: str) -> str:
    """A random secret kept in output_dir (created once, readable by its owner only): mixed into the seed that
    orders A and B, so that an annotator who knows --seed (the default is public) and their own name still cannot
    tell which answer is the model's. Every server on the directory reads the same secret, so the order is stable."""
    path = os.path.join(output_dir, ORDER_SECRET_NAME)
    with contextlib.suppress(FileExistsError):
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as f:
            f.write(secrets.token_hex(16) + "\n")
    with open(path, encoding="utf-8") as f:
        return f.read().strip()


def check_annotator(annotator: str) -> str:
    name = str(annotator).strip()
    if not name or len(name) > 64 or any(unicodedata.category(c).startswith("C") for c in name):
        raise errors.UsageError(f"--annotator must be a name of 1 to 64 printable characters, not {annotator!r}.")
    return name


# -- the annotation file (append-only, the only state) ------------------------------------------------


@contextlib.contextmanager
def locked(output_dir: str):
    """Hold an exclusive lock on the directory's annotation file, across threads and processes (flock on a file
    opened anew each time), for a read-check-append that no other server interleaves."""
    with open(os.path.join(output_dir, ANNOTATIONS_NAME + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def annotation_problem(record: dict) -> str | None:
    """Why a line of human_annotations.jsonl is not one this server writes, or None when it is."""
    if not isinstance(record.get("annotator"), str):
        return f"not an annotation (it has no 'annotator'; {json.dumps(record)[:60]!r})"
    return None


def read_annotations(path: str) -> list[dict]:
    """Every record of human_annotations.jsonl, read by the one journal rule (files.read_journal): a torn last line
    (a server killed mid-write) is cut off; any other damaged line is a JournalError naming it."""
    return files.read_journal(path, annotation_problem, writer="The annotation server")


def append_annotation(path: str, record: dict) -> None:
    """Append one record (call under `locked`) and force it to disk at once: a person's verdict is not asked twice."""
    files.append_journal(path, record)
    files.sync_journal(path)


def standing_verdicts(records: list[dict]) -> dict[str, list[dict]]:
    """{annotator: the verdict records still standing, in the order given} after replaying the undo records (each
    takes back that annotator's latest standing verdict)."""
    stacks: dict[str, list[dict]] = {}
    for record in records:
        stack = stacks.setdefault(record["annotator"], [])
        if record.get("undo"):
            if stack:
                stack.pop()
        else:
            stack.append(record)
    return stacks


def verdicts_by_pair(stack: list[dict]) -> dict[str, dict]:
    """{pair key: the annotator's standing verdict record}; a later verdict on the same pair wins."""
    return {record["pair_key"]: record for record in stack}


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")


# -- what the page sees -------------------------------------------------------------------------------


def page_state(pairs: list[dict], annotator: str, seed: int | str, stack: list[dict]) -> dict:
    """The state the page shows: progress, and the first pair this annotator has not judged, as A and B only.
    Nothing here names a generator or a file: this dict is all the browser ever learns about the pairs."""
    shown = to_annotate(pairs)
    judged = verdicts_by_pair(stack)
    done = sum(pair["key"] in judged for pair in shown)
    skipped = sum(judged[pair["key"]]["verdict"] == "skip" for pair in shown if pair["key"] in judged)
    state = {"annotator": annotator, "done": done, "total": len(shown), "skipped": skipped,
             "can_undo": bool(stack), "pair": None}
    index = next((i for i, pair in enumerate(shown) if pair["key"] not in judged), None)
    if index is not None:
        pair = shown[index]
        first = model_shown_first(seed, annotator, pair["instruction"], pair["input"])
        a, b = (pair["model_output"], pair["reference_output"]) if first else \
            (pair["reference_output"], pair["model_output"])
        state["pair"] = {"id": index, "instruction": pair["instruction"], "input": pair["input"],
                         "answer_a": a, "answer_b": b}
    return state


def verdict_record(pair: dict, annotator: str, seed: int | str, choice: str) -> dict:
    """The line a choice ("A", "B", "tie", "skip") appends, with the verdict in terms of model and reference."""
    model_first = model_shown_first(seed, annotator, pair["instruction"], pair["input"])
    verdict = {"A": "model" if model_first else "reference", "B": "reference" if model_first else "model",
               "tie": "tie", "skip": "skip"}[choice]
    return {"annotator": annotator, "instruction": pair["instruction"], "input": pair["input"],
            "category": pair["category"], "model": pair["model_generator"], "reference": pair["reference_generator"],
            "shown_first": pair["model_generator" if model_first else "reference_generator"], "choice": choice,
            "verdict": verdict, "pair_key": pair["key"], "time": now()}


def response_headers(page: str) -> tuple[dict[str, str], dict[str, str]]:
    """(headers of every answer, those of the page): no caching, no sniffing, no referrer; the page's Content
    Security Policy allows its own inline script (by hash) and requests to this server, nothing else."""
    script = re.search(r"<script>(.*?)</script>", page, flags=re.S).group(1)
    script_hash = "sha256-" + base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode()
    headers = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
    return headers, {**headers, "Content-Security-Policy": (
        f"default-src 'none'; script-src '{script_hash}'; style-src 'unsafe-inline'; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")}


def refusal(request, token: str | None) -> tuple[int, str] | None:
    """(HTTP status, sentence) for a request the annotation server refuses, or None: without the token (token
    mode), from another host than this machine's (no token), from another site's page, or a POST whose body does
    not state a length within MAX_BODY_BYTES."""
    if token is not None and not secrets.compare_digest(request.query_params.get("token", "").encode(),
                                                        token.encode()):
        return 403, "Forbidden: open the full address the server printed (it carries the token)."
    # Without a token only this machine is served: a page elsewhere that renames itself 127.0.0.1 (DNS rebinding)
    # or posts to us from its own origin is refused.
    if token is None and request.url.hostname not in LOOPBACK_HOSTS:
        return 403, "Forbidden: this server answers to 127.0.0.1 only; use the address it printed."
    origin = request.headers.get("origin")
    if origin is not None and urllib.parse.urlsplit(origin).netloc != request.headers.get("host"):
        return 403, "Forbidden: requests from other sites are refused."
    if request.method == "POST":  # a verdict is a few dozen bytes: refuse a body before reading it
        length = request.headers.get("content-length", "")
        if not length.isdigit() or int(length) > MAX_BODY_BYTES:
            return 413, f"A request body must state its length and hold at most {MAX_BODY_BYTES} bytes."
    return None


def make_app(pairs: list[dict], output_dir: str, annotator: str, seed: int | str, token: str | None):
    """The FastAPI app: GET / (the page), GET /api/state, POST /api/verdict {"id", "choice"}, POST /api/undo.
    Each request reads the annotation file under the lock, so several servers on one directory stay consistent.
    With a token, every request must carry it (`?token=`), else 403."""
    from fastapi import FastAPI, HTTPException
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
    from pydantic import BaseModel

    path = os.path.join(output_dir, ANNOTATIONS_NAME)
    shown = to_annotate(pairs)
    page = PAGE.read_text(encoding="utf-8")
    headers, page_headers = response_headers(page)
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    class Verdict(BaseModel):
        id: int
        choice: str

    @app.middleware("http")
    async def guard(request, call_next):
        refused = refusal(request, token)
        if refused is not None:
            return PlainTextResponse(refused[1], status_code=refused[0], headers=headers)
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def malformed(request, error) -> PlainTextResponse:
        # FastAPI's own answer echoes the input, and a NaN in it made that answer fail with a 500 and a traceback.
        return PlainTextResponse('A verdict is JSON {"id": <number of the pair>, "choice": "A", "B", "tie" or '
                                 '"skip"}.', status_code=422, headers=headers)

    @app.exception_handler(errors.UserError)
    async def user_error(request, error) -> PlainTextResponse:
        # e.g. a damaged line in the annotation file: the sentence that says which line, not a bare 500.
        return PlainTextResponse(str(error), status_code=500, headers=headers)

    def current_stack() -> list[dict]:
        return standing_verdicts(read_annotations(path)).get(annotator, [])

    def state_response(stack: list[dict], status_code: int = 200, message: str | None = None) -> JSONResponse:
        state = page_state(pairs, annotator, seed, stack)
        if message:
            state["message"] = message
        return JSONResponse(state, status_code=status_code, headers=headers)

    @app.get("/")
    def index() -> HTMLResponse:
        return HTMLResponse(page, headers=page_headers)

    @app.get("/api/state")
    def state() -> JSONResponse:
        return state_response(current_stack())

    @app.post("/api/verdict")
    def verdict(body: Verdict) -> JSONResponse:
        if body.choice not in CHOICES:
            raise HTTPException(422, f"choice must be one of {', '.join(CHOICES)}")
        with locked(output_dir):
            stack = current_stack()
            current = page_state(pairs, annotator, seed, stack)["pair"]
            if current is None or current["id"] != body.id:  # a second tab, a double click, a stale page
                return state_response(stack, 409, "That pair was already judged (in another tab?); here is the "
                                                  "next one.")
            record = verdict_record(shown[body.id], annotator, seed, body.choice)
            append_annotation(path, record)
        return state_response([*stack, record])

    @app.post("/api/undo")
    def undo() -> JSONResponse:
        with locked(output_dir):
            stack = current_stack()
            if not stack:
                return state_response(stack, 409, "Nothing to undo.")
            last = stack[-1]
            append_annotation(path, {"annotator": annotator, "undo": True, "instruction": last["instruction"],
                                     "input": last["input"], "pair_key": last["pair_key"], "time": now()})
        return state_response(stack[:-1])

    return app


# -- the commands -------------------------------------------------------------------------------------


def listening_socket(host: str, port: int) -> socket.socket:
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as error:
        raise errors.UserError(f"cannot listen on {host}:{port} ({error.strerror or error}); choose another --port "
                            "(0 takes any free one) or --host.") from None
    sock.listen(64)
    return sock


def human(model_outputs: str, reference_outputs: str, output_dir: str, annotator: str, host: str = "127.0.0.1",
          port: int = 0, seed: int = 42) -> None:
    """Serve the blind annotation page for one annotator; every verdict goes to output_dir/human_annotations.jsonl.

    Arguments:
        model_outputs: the model's answers file (as for the LLM judge: JSON list or JSONL of instruction/input/
            output records, e.g. from inference.py).
        reference_outputs: the reference model's answers to the same instructions.
        output_dir: where the verdicts go (the LLM judge's output directory, to measure their agreement).
        annotator: your name, as it appears in human_annotations.jsonl and the agreement table.
        host: the address to listen on; anything but 127.0.0.1/localhost/::1 (e.g. 0.0.0.0 for colleagues on
            other machines) requires the token that the printed address carries.
        port: the port (0: any free one; the address is printed).
        seed: fixes which answer is shown as A for each annotator and instruction.
    Stop with Ctrl-C; run the same command again to resume where you left off.
    """
    import uvicorn

    annotator = check_annotator(annotator)
    if not 0 <= port <= 65535:
        raise errors.UsageError(f"--port must be between 0 and 65535, not {port}.")
    pairs = prepare_pairs(model_outputs, reference_outputs, output_dir)
    token = None if host in LOOPBACK_HOSTS else secrets.token_urlsafe(24)
    seed = f"{seed}\0{order_secret(output_dir)}"  # the A/B order: not computable from the public seed alone
    app = make_app(pairs, output_dir, annotator, seed, token)
    sock = listening_socket(host, port)
    bound_port = sock.getsockname()[1]
    shown_host = f"[{host}]" if ":" in host else host
    state = page_state(pairs, annotator, seed, standing_verdicts(
        read_annotations(os.path.join(output_dir, ANNOTATIONS_NAME))).get(annotator, []))
    print(f"{annotator}: {state['done']} of {state['total']} pairs judged so far "
          f"({len(pairs) - state['total']} with identical answers count as ties without a look).")
    print(f"Annotate at http://{shown_host}:{bound_port}/" + (f"?token={token}" if token else ""), flush=True)
    if token and host in ("0.0.0.0", "::"):
        print(f"(colleagues replace {host} with this machine's name or address, e.g. {socket.gethostname()})",
              flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
    print(f"Stopped. Every verdict is in {os.path.join(output_dir, ANNOTATIONS_NAME)}; run the same command to "
          f"resume, `python judge.py human_results --output_dir {output_dir}` for the results.")


def human_preferences(pairs: list[dict], judged: dict[str, dict]) -> list[float | None]:
    """One annotator's preference for the model per pair (1, 0, 0.5; None: skipped or not yet judged)."""
    return [0.5 if judge.identical(pair) else
            PREFERENCE_OF_VERDICT[judged[pair["key"]]["verdict"]] if pair["key"] in judged else None
            for pair in pairs]


def pooled_preferences(per_annotator: list[list[float | None]]) -> list[float | None]:
    """Per pair, the mean preference of the annotators who judged it (None if nobody did): the instruction stays
    the unit that the bootstrap resamples."""
    pooled = []
    for values in zip(*per_annotator, strict=True):
        given = [v for v in values if v is not None]
        pooled.append(float(np.mean(given)) if given else None)
    return pooled


def judge_preferences(output_dir: str, pairs: list[dict]) -> list[float | None] | None:
    """The LLM judge's preference for the model per pair, from output_dir/annotations.jsonl (judge.py's audit
    file), combined over the orders as judge.py combines them; None per pair it has not judged, and None
    altogether when the directory has no judge annotations of these two generators."""
    path = os.path.join(output_dir, "annotations.jsonl")
    if not os.path.exists(path):
        return None
    model, reference = pairs[0]["model_generator"], pairs[0]["reference_generator"]
    orders: dict[tuple[str, str], list] = {}
    for _, line in files.read_jsonl(path):
        if line.get("model") != model or line.get("reference") != reference or "messages" in line:
            continue  # a conversation's lines (judge.py on a file with conversations) match no pair of a person's
        mode = "logprobs" if "p_a" in line else "swap"
        preference = None if line.get("verdict") is None else judge.model_preference(
            line, line["shown_first"] == model, mode)
        orders.setdefault((line["instruction"], line["input"]), []).append(preference)
    if not orders:
        return None
    return [judge.pair_preference(orders.get((p["instruction"], p["input"]), [])) for p in pairs]


def label(preference: float) -> str:
    return "model" if preference > 0.5 else "reference" if preference < 0.5 else "tie"


def agreement(preferences_a: list[float | None], preferences_b: list[float | None], pairs: list[dict]) -> dict:
    """How often two raters give the same verdict (model better / reference better / tie) on the pairs both have
    judged (identical answers left out: nobody looked at them): {"n", "agreement" (share), "kappa" (Cohen's,
    None when undefined: a single label throughout)}."""
    from sklearn.metrics import cohen_kappa_score

    shared = [(label(a), label(b)) for a, b, pair in zip(preferences_a, preferences_b, pairs, strict=True)
              if a is not None and b is not None and not judge.identical(pair)]
    if not shared:
        return {"n": 0, "agreement": None, "kappa": None}
    labels_a, labels_b = zip(*shared, strict=True)
    share = sum(x == y for x, y in shared) / len(shared)
    kappa = None if len(set(labels_a) | set(labels_b)) < 2 else float(cohen_kappa_score(labels_a, labels_b))
    return {"n": len(shared), "agreement": win_rates.rounded(share), "kappa": win_rates.rounded(kappa)}


def human_results(output_dir: str, judge_dir: str | None = None, seed: int = 42, plot: bool = True) -> dict:
    """Win rates from the human verdicts in output_dir, and their agreement with the LLM judge and each other.

    Arguments:
        output_dir: the directory `python judge.py human` wrote to.
        judge_dir: where judge.py judged the same two answer files (its annotations.jsonl and results.json), to
            measure the agreement; default output_dir.
        seed: the bootstrap resamples of the 95% intervals.
        plot: write human_win_rates.png and human_agreement.png.
    Writes human_results.json: "pooled" (every annotator's verdicts, averaged per instruction) and "annotators"
    (one entry each), both with judge.py's results.json fields, and "agreement" ("with_judge": each annotator vs
    the LLM judge; "between_annotators": each pair), each as n shared pairs, share agreeing and Cohen's kappa.
    """
    pairs = load_pair_set(output_dir)
    stacks = standing_verdicts(read_annotations(os.path.join(output_dir, ANNOTATIONS_NAME)))
    annotators = sorted(name for name, stack in stacks.items() if stack)
    if not annotators:
        raise errors.DataError(f"{os.path.join(output_dir, ANNOTATIONS_NAME)} holds no verdicts yet; annotate with "
                            "`python judge.py human ...` first.")
    model_lengths = [len(p["model_output"]) for p in pairs]
    reference_lengths = [len(p["reference_output"]) for p in pairs]
    categories = [p["category"] for p in pairs]

    def results_of(preferences: list[float | None], rater: str) -> dict:
        result = win_rates.compute_results(preferences, model_lengths, reference_lengths, categories, seed)
        result.update(reference=pairs[0]["reference_generator"], judge_model=rater, judge_mode="human")
        return result

    preferences = {name: human_preferences(pairs, verdicts_by_pair(stacks[name])) for name in annotators}
    per_annotator = {}
    for name in annotators:
        per_annotator[name] = results_of(preferences[name], f"human: {name}")
        per_annotator[name]["n_skipped"] = sum(r["verdict"] == "skip" for r in verdicts_by_pair(stacks[name]).values())
    pooled = results_of(pooled_preferences(list(preferences.values())), f"humans: {', '.join(annotators)}")
    pooled["annotators"] = annotators

    judge_dir = judge_dir or output_dir
    judged_by_llm = judge_preferences(judge_dir, pairs)
    judge_model = None
    if judged_by_llm is not None and os.path.exists(os.path.join(judge_dir, "results.json")):
        with open(os.path.join(judge_dir, "results.json"), encoding="utf-8") as f:
            entry = json.load(f).get(pairs[0]["model_generator"], {})
        judge_model = entry.get("judge_model") and f"{entry['judge_model']} ({entry.get('judge_mode')} mode)"
    results = {
        "model": pairs[0]["model_generator"], "reference": pairs[0]["reference_generator"], "pooled": pooled,
        "annotators": per_annotator,
        "agreement": {
            "judge": judge_model,
            "with_judge": None if judged_by_llm is None else
            {name: agreement(preferences[name], judged_by_llm, pairs) for name in annotators},
            "between_annotators": [{"annotators": [a, b], **agreement(preferences[a], preferences[b], pairs)}
                                   for a, b in itertools.combinations(annotators, 2)]}}
    files.write_atomically(os.path.join(output_dir, RESULTS_NAME),
                           json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    table = {f"human: {annotators[0]}": pooled} if len(annotators) == 1 else \
        {f"pooled ({len(annotators)} annotators)": pooled, **{f"human: {name}": per_annotator[name]
                                                              for name in annotators}}
    print(f"Human verdicts on {results['model']} vs {results['reference']} ({len(pairs)} instructions):")
    print(win_rates.format_table(table))
    print(format_agreement(results["agreement"]))
    if plot:
        win_rates.plot_win_rates(table, os.path.join(output_dir, "human_win_rates.png"),
                                 judged_by="the annotators" if len(annotators) > 1 else "the annotator")
        plot_agreement(results["agreement"], annotators, os.path.join(output_dir, "human_agreement.png"))
    pictures = ", human_win_rates.png, human_agreement.png" if plot else ""
    print(f"Wrote {RESULTS_NAME}{pictures} to {output_dir}")
    return results


def describe(entry: dict) -> str:
    if not entry["n"]:
        return "no shared pairs"
    kappa = "undefined (one verdict throughout)" if entry["kappa"] is None else f"{entry['kappa']:.2f}"
    return f"agree on {entry['agreement']:.0%} of {entry['n']} shared pairs, Cohen's kappa {kappa}"


def format_agreement(agreement_results: dict) -> str:
    """The printed agreement summary, one line per comparison."""
    lines = []
    if agreement_results["with_judge"] is None:
        lines.append("No LLM judge annotations of these two answer files found (run judge.py with the same "
                     "--output_dir, or pass its directory as --judge_dir, to measure its agreement with people).")
    else:
        judge_name = f"the LLM judge {agreement_results['judge'] or ''}".strip()
        for name, entry in agreement_results["with_judge"].items():
            lines.append(f"{name} vs {judge_name}: {describe(entry)}")
    for entry in agreement_results["between_annotators"]:
        lines.append(f"{entry['annotators'][0]} vs {entry['annotators'][1]}: {describe(entry)}")
    return "\n".join(lines)


def plot_agreement(agreement_results: dict, annotators: list[str], path: str) -> None:
    """human_agreement.png: Cohen's kappa between every two raters (annotators and the LLM judge), with the share
    agreeing and the number of shared pairs in each cell (matplotlib's Agg canvas, no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    raters = annotators + ([LLM_JUDGE] if agreement_results["with_judge"] is not None else [])
    cells = {}
    for name, entry in (agreement_results["with_judge"] or {}).items():
        cells[(name, LLM_JUDGE)] = cells[(LLM_JUDGE, name)] = entry
    for entry in agreement_results["between_annotators"]:
        a, b = entry["annotators"]
        cells[(a, b)] = cells[(b, a)] = entry
    kappas = np.full((len(raters), len(raters)), np.nan)
    for (a, b), entry in cells.items():
        if entry["kappa"] is not None:
            kappas[raters.index(a), raters.index(b)] = entry["kappa"]
    size = 2.5 + 1.3 * len(raters)
    figure = Figure(figsize=(size + 1.5, size))
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    image = axes.imshow(kappas, vmin=-1, vmax=1, cmap="RdYlGn")
    for (a, b), entry in cells.items():
        text = "no shared\npairs" if not entry["n"] else (
            f"κ {entry['kappa']:.2f}" if entry["kappa"] is not None else "κ -") + \
            f"\n{entry['agreement']:.0%} of {entry['n']}"
        axes.text(raters.index(b), raters.index(a), text, ha="center", va="center", fontsize=9)
    axes.set_xticks(range(len(raters)), raters, rotation=30, ha="right")
    axes.set_yticks(range(len(raters)), raters)
    axes.set_title("agreement: Cohen's kappa, share agreeing of shared pairs")
    figure.colorbar(image, ax=axes, label="Cohen's kappa")
    figure.tight_layout()
    figure.savefig(path, dpi=100)

