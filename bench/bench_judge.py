"""Judging concurrency: one request at a time vs --max_concurrency 16, against a judge that answers after 200 ms.

    python bench/bench_judge.py [--num_pairs 300] [--latency 0.2] [--max_concurrency 16] [--judge_mode swap]

Both runs judge the same 300 pairs (swap mode: 600 judgments) through the real openai client and a loopback
OpenAI-compatible server (alpaca/testing/openai_server.py) that plays a judge with a fixed, hidden preference per
pair and
answers each request after `latency` seconds. Each run starts from an empty output directory, so every judgment
goes over HTTP. Prints both wall times (the whole command, and the part spent asking the judge), their ratios, and
whether the two results.json files are identical (they must be: the results depend on the verdicts, not on the
order in which they arrive). The rest of the command (loading, the bootstrap refits of the length-controlled win
rate, writing) is the same in both runs.
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

from alpaca.evaluate import judge
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


def timed_run(server: OpenAIServer, model: str, reference: str, output_dir: str, max_concurrency: int,
              judge_mode: str) -> tuple[float, float]:
    """(seconds for the whole command, seconds of it spent asking the judge)."""
    ask_judge, asking = judge.ask_judge, []

    async def timed_ask_judge(*args, **kwargs):
        start = time.perf_counter()
        try:
            return await ask_judge(*args, **kwargs)
        finally:
            asking.append(time.perf_counter() - start)

    judge.ask_judge = timed_ask_judge
    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            judge.evaluate(model_outputs=model, reference_outputs=reference, output_dir=output_dir,
                           judge_model="bench-judge", api_base=server.url, judge_mode=judge_mode,
                           max_concurrency=max_concurrency, plot=False)
    finally:
        judge.ask_judge = ask_judge
    return time.perf_counter() - start, sum(asking)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_pairs", type=int, default=300, help="instructions judged (swap mode: 2 calls each)")
    parser.add_argument("--latency", type=float, default=0.2, help="seconds the judge takes per request")
    parser.add_argument("--max_concurrency", type=int, default=16, help="requests in flight in the fast run")
    parser.add_argument("--judge_mode", default="swap", choices=judge.JUDGE_MODES, help="swap or logprobs")
    args = parser.parse_args()
    os.environ["OPENAI_API_KEY"] = "sk-bench"

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
