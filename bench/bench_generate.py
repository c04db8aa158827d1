"""Self-Instruct generation: one request at a time (the original's way) vs --max_concurrency 16, and one server vs
a fleet of servers behind one endpoint.

    python bench/bench_generate.py [--num_prompts 200] [--latency 0.2] [--max_concurrency 16]
    python bench/bench_generate.py --mode fleet [--fleet_sizes 1,2,4,8] [--server_batch 4] [--num_prompts 400]

Every run sends the same prompts (one per request, --seed fixed) through the real openai client to loopback
OpenAI-compatible servers (alpaca/testing/openai_server.py) that answer each request after `latency` seconds with a
deterministic 16-task continuation. The response cache is off, so every request goes over HTTP. Prints the wall
times, their ratios, and whether the regen.json files are identical (they must be).

--mode fleet: servers of fixed capacity (each answers at most --server_batch requests at once, later ones wait, as
in a continuous-batching server that is full), each in its own process (bench/loopback_servers.py). The same
prompts go to N = 1, 2, 4, 8 of them given as one --api_base URL list, at --max_concurrency N x batch, and to all of
them behind a router-like endpoint (a forwarding proxy written here as test scaffolding, sending each request to the
least busy server, as LiteLLM's proxy with routing_strategy least-busy does). Prints each speed-up against N, whether
every regen.json is identical, and beside them the client's ceiling: requests/s against an instant server at
--max_concurrency 64, through the plain HTTP client, the openai client it replaced, and with the SQLite cache on.
"""

import argparse
import contextlib
import http.client
import io
import json
import os
import pathlib
import sys
import tempfile
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import loopback_servers  # bench/, beside this script

from alpaca.generate import self_instruct as generate_instruction
from alpaca.testing.openai_server import OpenAIServer

REPO = pathlib.Path(__file__).resolve().parent.parent


def write_seed_tasks(path: pathlib.Path, count: int = 20) -> None:
    topics = "volcano sonnet budget recipe chess tax poem python history climate marathon vaccine guitar email " \
             "garden bridge planet violin harbor desert".split()
    with open(path, "w") as f:
        for i in range(count):
            task = {"id": f"seed_task_{i}", "name": f"task_{i}", "is_classification": False,
                    "instruction": f"Tell me something useful about the {topics[i]} topic.",
                    "instances": [{"input": "", "output": f"Answer {i}."}]}
            f.write(json.dumps(task) + "\n")


def timed_run(server, output_dir: str, seeds: str, num_prompts: int, max_concurrency: int,
              cache: bool = False) -> float:
    """Seconds the generator takes for `num_prompts` requests to `server` (a server or a base URL, or a list)."""
    api_base = server if isinstance(server, str) else server.url
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # per-request logs
        generate_instruction.generate_instruction_following_data(
            output_dir=output_dir, seed_tasks_path=seeds, num_instructions_to_generate=10**9,
            request_batch_size=1, max_requests=num_prompts, max_concurrency=max_concurrency, api_base=api_base,
            cache=cache, num_cpus=1)
    return time.perf_counter() - start


class Router:
    """One OpenAI-compatible endpoint in front of several servers: each POST goes to the server with the fewest
    requests in flight. Benchmark scaffolding only; in production use vLLM's --data-parallel-size or LiteLLM."""

    def __init__(self, backends: list[str]):
        self.backends = [urllib.parse.urlsplit(url) for url in backends]
        self.in_flight = [0] * len(backends)
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.httpd.daemon_threads = True

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> "Router":
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def forward(self, path: str, body: bytes, headers: dict) -> tuple[int, bytes, str]:
        with self.lock:
            index = min(range(len(self.backends)), key=self.in_flight.__getitem__)
            self.in_flight[index] += 1
        backend = self.backends[index]
        try:
            connection = http.client.HTTPConnection(backend.hostname, backend.port, timeout=600)
            connection.request("POST", path, body=body, headers=headers)
            response = connection.getresponse()
            return response.status, response.read(), response.getheader("Content-Type", "application/json")
        finally:
            connection.close()
            with self.lock:
                self.in_flight[index] -= 1

    def _handler_class(self):
        router = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {"Content-Type": "application/json", "Authorization": self.headers.get("Authorization", "")}
                status, payload, content_type = router.forward(self.path, body, headers)
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        return Handler


def ceilings(tmp: str, seeds: str, num_requests: int, max_concurrency: int) -> dict[str, float]:
    """Requests/s against an instant server in its own process (no latency, no batch limit), side by side: the client
    alone over plain HTTP (today), over the openai client (before), with the SQLite cache on, and the whole
    generator (parsing, ROUGE-L filtering and journal included)."""
    with loopback_servers.started(1, "tasks", 0.0, 0) as (url,), \
            contextlib.redirect_stderr(io.StringIO()):  # the cache's size line
        rate = loopback_servers.client_rate
        rate(url, 100, max_concurrency)  # warm-up: connections, imports
        return {"client, plain HTTP": rate(url, num_requests, max_concurrency),
                "client, openai client (before)": rate(url, num_requests, max_concurrency, True),
                "client, plain HTTP + SQLite cache": rate(url, num_requests, max_concurrency,
                                                          cache_dir=os.path.join(tmp, "ceiling-cache")),
                "whole generator": num_requests / timed_run(url, os.path.join(tmp, "ceiling"), seeds, num_requests,
                                                            max_concurrency)}


def run_fleet(args, tmp: str, seeds: str) -> bool:
    """One server vs N of them given as a URL list (and behind a router); True when every regen.json is identical."""
    sizes = [int(n) for n in args.fleet_sizes.split(",")]
    print(f"{args.num_prompts} prompts, 1 per request; each server answers at most {args.server_batch} requests at "
          f"once, {args.latency * 1000:.0f} ms each (at most {args.server_batch / args.latency:.0f} requests/s), "
          f"--max_concurrency = servers x {args.server_batch}; every server in its own process")
    outputs, seconds = {}, {}
    with loopback_servers.started(max(sizes), "tasks", args.latency, args.server_batch) as urls:
        timed_run(urls[0], os.path.join(tmp, "warm-up"), seeds, 8, args.server_batch)  # imports, ROUGE-L compile
        for n in sizes:
            out = os.path.join(tmp, f"fleet{n}")
            seconds[n] = timed_run(",".join(urls[:n]), out, seeds, args.num_prompts, n * args.server_batch)
            outputs[n] = pathlib.Path(out, "regen.json").read_bytes()
            speedup = seconds[sizes[0]] / seconds[n] * sizes[0]
            print(f"{n} server(s) by URL list: {seconds[n]:6.2f} s, {args.num_prompts / seconds[n]:6.1f} requests/s, "
                  f"speed-up {speedup:4.2f}x of {n}x ideal ({speedup / n:.0%})")
        with Router(urls) as router:
            out = os.path.join(tmp, "router")
            routed = timed_run(router.url, out, seeds, args.num_prompts, len(urls) * args.server_batch)
            outputs["router"] = pathlib.Path(out, "regen.json").read_bytes()
        print(f"{len(urls)} servers behind one proxy-like router (test scaffolding): {routed:6.2f} s, "
              f"{args.num_prompts / routed:6.1f} requests/s")
    rates = ceilings(tmp, seeds, args.ceiling_prompts, 64)
    same = all(output == outputs[sizes[0]] for output in outputs.values())
    print(f"identical regen.json across all runs: {'yes' if same else 'NO'}")
    plain, before = rates["client, plain HTTP"], rates["client, openai client (before)"]
    print(f"client ceiling (instant server in its own process, --max_concurrency 64, {args.ceiling_prompts} "
          f"requests): " + "; ".join(f"{name} {rate:.0f} requests/s" for name, rate in rates.items())
          + f"; plain HTTP vs the openai client: {plain / before:.1f}x")
    return same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["concurrency", "fleet"], default="concurrency",
                        help="concurrency: one request at a time vs --max_concurrency; fleet: one server vs several")
    parser.add_argument("--num_prompts", type=int, default=200, help="prompts (= requests) per run")
    parser.add_argument("--latency", type=float, default=0.2, help="seconds the server takes per request")
    parser.add_argument("--max_concurrency", type=int, default=16, help="requests in flight in the fast run")
    parser.add_argument("--fleet_sizes", default="1,2,4,8", help="fleet mode: numbers of servers to compare")
    parser.add_argument("--server_batch", type=int, default=4, help="fleet mode: requests a server works on at once")
    parser.add_argument("--ceiling_prompts", type=int, default=2000,
                        help="fleet mode: requests of each client-ceiling run (instant server)")
    args = parser.parse_args()
    os.environ["OPENAI_API_KEY"] = "sk-bench"
    if args.mode == "fleet":
        with tempfile.TemporaryDirectory() as tmp:
            seeds = os.path.join(tmp, "seeds.jsonl")
            write_seed_tasks(pathlib.Path(seeds))
            if not run_fleet(args, tmp, seeds):
                sys.exit(1)
        return
    with tempfile.TemporaryDirectory() as tmp, OpenAIServer(delay=args.latency) as server:
        seeds = os.path.join(tmp, "seeds.jsonl")
        write_seed_tasks(pathlib.Path(seeds))
        print(f"{args.num_prompts} prompts, 1 per request, server latency {args.latency * 1000:.0f} ms, "
              f"loopback HTTP through openai {__import__('openai').__version__}")
        sequential = timed_run(server, os.path.join(tmp, "one"), seeds, args.num_prompts, 1)
        print(f"one request at a time (original): {sequential:7.2f} s")
        concurrent = timed_run(server, os.path.join(tmp, "many"), seeds, args.num_prompts, args.max_concurrency)
        print(f"--max_concurrency {args.max_concurrency:<14}: {concurrent:7.2f} s")
        outputs = [pathlib.Path(tmp, name, "regen.json").read_bytes() for name in ("one", "many")]
        same = outputs[0] == outputs[1]
        kept = len(json.loads(outputs[1]))
        print(f"speed-up: {sequential / concurrent:.1f}x; {kept} instructions kept; "
              f"identical regen.json: {'yes' if same else 'NO'}")
        if not same:
            sys.exit(1)


if __name__ == "__main__":
    main()
