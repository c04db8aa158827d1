"""Loopback OpenAI-compatible servers of fixed capacity, each in its own process, for the fleet benchmarks.

    python bench/loopback_servers.py --kind tasks --latency 0.2 --batch 4     # prints its base URL, serves until killed

A server answers at most `--batch` requests at once, `--latency` seconds each (later ones wait, as in a
continuous-batching server that is full), with the deterministic answers of alpaca/testing/openai_server.py:
Self-Instruct continuations (`--kind tasks`) or a judge's verdicts (`--kind judge`, bench_judge.py's hidden
preference). `--latency 0` and `--batch 0` make an instant server without a limit: the client's ceiling. Each server
runs in a process of its own, so that its threads do not compete with the client for the interpreter lock.
"""

import argparse
import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator


def serve(kind: str, latency: float, batch: int) -> None:
    from alpaca.testing.openai_server import OpenAIServer, default_responder

    if kind == "judge":
        from bench_judge import hidden_preference_judge as answer
    else:
        answer = default_responder
    slots = threading.BoundedSemaphore(batch) if batch else None

    def respond(endpoint: str, prompt: str, body: dict):
        if slots is not None:
            with slots:
                time.sleep(latency)
        elif latency:
            time.sleep(latency)
        return answer(endpoint, prompt, body)

    with OpenAIServer(responder=respond) as server:
        print(server.url, flush=True)
        threading.Event().wait()


@contextlib.contextmanager
def started(count: int, kind: str, latency: float, batch: int) -> Iterator[list[str]]:
    """Base URLs of `count` such servers, each in its own process, stopped on leaving."""
    processes = [subprocess.Popen([sys.executable, __file__, "--kind", kind, "--latency", str(latency), "--batch",
                                   str(batch)], stdout=subprocess.PIPE, text=True) for _ in range(count)]
    try:
        yield [process.stdout.readline().strip() for process in processes]
    finally:
        for process in processes:
            process.kill()
            process.wait()


def client_rate(url: str, num_requests: int, max_concurrency: int, use_openai_client: bool = False,
                cache_dir: str | None = None) -> float:
    """Requests/s of the client alone (LLMEndpoint through complete_in_order, one prompt per request) against `url`:
    over plain HTTP, or over the `openai` client it replaced (`use_openai_client`), with or without a cache."""
    import utils
    from alpaca.llm import client as llm_client

    llm_client.USE_OPENAI_CLIENT = use_openai_client
    prompts = [f"{i}. Instruction:" for i in range(num_requests)]
    start = time.perf_counter()
    try:
        utils.openai_completion(prompts, utils.OpenAIDecodingArguments(max_tokens=16), model_name="bench",
                                batch_size=1, api_base=url, max_concurrency=max_concurrency, cache_dir=cache_dir)
    finally:
        llm_client.USE_OPENAI_CLIENT = False
    return num_requests / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=["tasks", "judge"], default="tasks", help="what the server answers")
    parser.add_argument("--latency", type=float, default=0.2, help="seconds per request")
    parser.add_argument("--batch", type=int, default=4, help="requests answered at once (0: no limit)")
    args = parser.parse_args()
    serve(args.kind, args.latency, args.batch)


if __name__ == "__main__":
    main()
