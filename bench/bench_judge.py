"""Judging concurrency: one request at a time vs --max_concurrency 16, against a judge that answers after 200 ms.

    python bench/bench_judge.py [--num_pairs 300] [--latency 0.2] [--max_concurrency 16] [--judge_mode swap]
    python bench/bench_judge.py --mode fleet [--num_pairs 200] [--fleet_sizes 1,2,4,8] [--server_batch 4]

Both runs judge the same 300 pairs (swap mode: 600 judgments) through the real openai client and a loopback
OpenAI-compatible server (alpaca/testing/openai_server.py) that plays a judge with a fixed, hidden preference per
pair and
answers each request after `latency` seconds. Each run starts from an empty output directory, so every judgment
goes over HTTP. Prints both wall times (the whole command, and the part spent asking the judge), their ratios, and
whether the two results.json files are identical (they must be: the results depend on the verdicts, not on the
order in which they arrive). The rest of the command (loading, the bootstrap refits of the length-controlled win
rate, writing) is the same in both runs.

--mode fleet: judges of fixed capacity (each answers at most --server_batch requests at once, --latency seconds
each; later ones wait), each in its own process (bench/loopback_servers.py). The same pairs are judged through N = 1,
2, 4, 8 of them given as one --api_base URL list, at --max_concurrency N x batch. Prints each speed-up against N,
whether every results.json is identical, and beside them the client's ceiling against an instant judge at
--max_concurrency 64: the client alone and the judge's asking (journal included), over plain HTTP and over the
openai client it replaced.
"""

import argparse
import contextlib
import hashlib
import io
import json
import os
import pathlib
import re
import sys
import tempfile
import time

import loopback_servers  # bench/, beside this script

from alpaca.evaluate import judge
from alpaca.llm import client as llm_client
from alpaca.testing.openai_server import OpenAIServer

REPO = pathlib.Path(__file__).resolve().parent.parent

CATEGORIES = ("writing rewriting brainstorming open_qa closed_qa classification extraction summarization math "
              "coding").split()


def write_answers(directory: pathlib.Path, num_pairs: int) -> tuple[str, str]:
    """A model and a reference answers file on the same made-up instructions (lengths vary, a third have an input)."""
    model, reference = [], []
    for i in range(num_pairs):
        record = {"instruction": f"Benchmark instruction number {i}: explain topic {i % 37}.",
                  "input": f"Context for {i}." if i % 3 == 0 else "", "category": CATEGORIES[i % len(CATEGORIES)]}
        model.append({**record, "output": f"Model answer {i}. " + "More detail. " * (i % 23), "generator": "model"})
        reference.append({**record, "output": f"Reference answer {i}. " + "Detail. " * (i % 17),
                          "generator": "reference"})
    paths = directory / "model.json", directory / "reference.json"
    for path, records in zip(paths, (model, reference), strict=True):
        path.write_text(json.dumps(records))
    return str(paths[0]), str(paths[1])


def hidden_preference_judge(path: str, prompt: str, body: dict) -> tuple[str, str]:
    """Prefers the answer with the larger hash of its text (a stand-in for quality), with a word of reasoning."""
    a, b = re.search(r"<answer_a>\n(.*?)\n</answer_a>\n\n<answer_b>\n(.*?)\n</answer_b>", prompt, re.S).groups()
    score_a, score_b = (hashlib.sha256(text.encode()).hexdigest() for text in (a, b))
    return f"Having compared both answers: {'[[A]]' if score_a > score_b else '[[B]]'}", "stop"


def timed_run(server: OpenAIServer | str, model: str, reference: str, output_dir: str, max_concurrency: int,
              judge_mode: str) -> tuple[float, float]:
    """(seconds for the whole command, seconds of it spent asking the judge); `server` a server or base URL(s)."""
    api_base = server if isinstance(server, str) else server.url
    ask_judge, asking = judge.ask_judge, []

    def timed_ask_judge(*args, **kwargs):
        start = time.perf_counter()
        try:
            return ask_judge(*args, **kwargs)
        finally:
            asking.append(time.perf_counter() - start)

    judge.ask_judge = timed_ask_judge
    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            judge.evaluate(model_outputs=model, reference_outputs=reference, output_dir=output_dir,
                           judge_model="bench-judge", api_base=api_base, judge_mode=judge_mode,
                           max_concurrency=max_concurrency, plot=False)
    finally:
        judge.ask_judge = ask_judge
    return time.perf_counter() - start, sum(asking)


def run_fleet(args, tmp: str) -> bool:
    """One judge vs N of them given as a URL list; True when every results.json is identical."""
    sizes = [int(n) for n in args.fleet_sizes.split(",")]
    model, reference = write_answers(pathlib.Path(tmp), args.num_pairs)
    print(f"{args.num_pairs} pairs, swap mode ({2 * args.num_pairs} judgments); each judge answers at most "
          f"{args.server_batch} requests at once, {args.latency * 1000:.0f} ms each; --max_concurrency = judges x "
          f"{args.server_batch}; every judge in its own process")
    outputs, asking = {}, {}
    with loopback_servers.started(max(sizes), "judge", args.latency, args.server_batch) as urls:
        for n in sizes:
            out = os.path.join(tmp, f"fleet{n}")
            whole, asking[n] = timed_run(",".join(urls[:n]), model, reference, out, n * args.server_batch, "swap")
            outputs[n] = pathlib.Path(out, "results.json").read_bytes()
            speedup = asking[sizes[0]] / asking[n] * sizes[0]
            print(f"{n} judge(s) by URL list: {whole:6.2f} s whole command, {asking[n]:6.2f} s asking "
                  f"({2 * args.num_pairs / asking[n]:6.1f} judgments/s), speed-up {speedup:4.2f}x of {n}x ideal")
    same = all(output == outputs[sizes[0]] for output in outputs.values())
    print(f"identical results.json across all runs: {'yes' if same else 'NO'}")
    rates = {}
    with loopback_servers.started(1, "judge", 0.0, 0) as (url,), \
            loopback_servers.started(1, "tasks", 0.0, 0) as (tasks_url,):
        for name, use_openai_client in (("plain HTTP", False), ("openai client (before)", True)):
            rates[f"client alone, {name}"] = loopback_servers.client_rate(tasks_url, args.ceiling_requests, 64,
                                                                          use_openai_client)
            llm_client.USE_OPENAI_CLIENT = use_openai_client
            try:
                _, seconds = timed_run(url, model, reference, os.path.join(tmp, f"ceiling-{len(rates)}"), 64, "swap")
            finally:
                llm_client.USE_OPENAI_CLIENT = False
            rates[f"judge asking, {name}"] = 2 * args.num_pairs / seconds
    print("client ceiling (instant judge in its own process, --max_concurrency 64): "
          + "; ".join(f"{name} {rate:.0f}/s" for name, rate in rates.items())
          + f"; client alone, plain HTTP vs the openai client: "
            f"{rates['client alone, plain HTTP'] / rates['client alone, openai client (before)']:.1f}x")
    return same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_pairs", type=int, default=300, help="instructions judged (swap mode: 2 calls each)")
    parser.add_argument("--latency", type=float, default=0.2, help="seconds the judge takes per request")
    parser.add_argument("--max_concurrency", type=int, default=16, help="requests in flight in the fast run")
    parser.add_argument("--judge_mode", default="swap", choices=judge.JUDGE_MODES, help="swap or logprobs")
    parser.add_argument("--mode", choices=["concurrency", "fleet"], default="concurrency",
                        help="concurrency: one request at a time vs --max_concurrency; fleet: one judge vs several")
    parser.add_argument("--fleet_sizes", default="1,2,4,8", help="fleet mode: numbers of judges to compare")
    parser.add_argument("--server_batch", type=int, default=4, help="fleet mode: requests a judge works on at once")
    parser.add_argument("--ceiling_requests", type=int, default=2000,
                        help="fleet mode: requests of the client-alone ceiling runs")
    args = parser.parse_args()
    os.environ["OPENAI_API_KEY"] = "sk-bench"
    if args.mode == "fleet":
        with tempfile.TemporaryDirectory() as tmp:
            if not run_fleet(args, tmp):
                sys.exit(1)
        return

    def responder(path, prompt, body):
        text, reason = hidden_preference_judge(path, prompt, body)
        return (text[-3:-2], reason, {"A": -0.3, "B": -1.4} if "[[A]]" in text else {"A": -1.4, "B": -0.3}) \
            if args.judge_mode == "logprobs" else (text, reason)

    with tempfile.TemporaryDirectory() as tmp, OpenAIServer(responder=responder, delay=args.latency) as server:
        model, reference = write_answers(pathlib.Path(tmp), args.num_pairs)
        calls = args.num_pairs * (2 if args.judge_mode == "swap" else 1)
        print(f"{args.num_pairs} pairs, {args.judge_mode} mode ({calls} judgments), judge latency "
              f"{args.latency * 1000:.0f} ms, loopback HTTP through openai {__import__('openai').__version__}")
        sequential, sequential_asking = timed_run(server, model, reference, os.path.join(tmp, "one"), 1,
                                                  args.judge_mode)
        print(f"--max_concurrency 1 : {sequential:7.2f} s ({sequential_asking:.2f} s asking the judge)")
        concurrent, concurrent_asking = timed_run(server, model, reference, os.path.join(tmp, "many"),
                                                  args.max_concurrency, args.judge_mode)
        print(f"--max_concurrency {args.max_concurrency:<2}: {concurrent:7.2f} s "
              f"({concurrent_asking:.2f} s asking the judge)")
        outputs = [pathlib.Path(tmp, name, "results.json").read_bytes() for name in ("one", "many")]
        same = outputs[0] == outputs[1]
        sent = len(server.requests)
        results = json.loads(outputs[1])["model"]
        print(f"speed-up: {sequential / concurrent:.1f}x whole command, {sequential_asking / concurrent_asking:.1f}x "
              f"asking the judge; {sent} requests sent; win rate {results['win_rate']} "
              f"(LC {results['lc_win_rate']}); identical results.json: {'yes' if same else 'NO'}")
        if not same or sent != 2 * calls:
            sys.exit(1)


if __name__ == "__main__":
    main()
