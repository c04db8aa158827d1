"""Self-Instruct generation: one request at a time (the original's way) vs --max_concurrency 16, and one server vs
a fleet of servers behind one endpoint.

    python bench/bench_generate.py [--num_prompts 200] [--latency 0.2] [--max_concurrency 16]
    python bench/bench_generate.py --mode fleet [--servers 4] [--server_batch 4]

Every run sends the same prompts (one per request, --seed fixed) through the real openai client to loopback
OpenAI-compatible servers (alpaca/testing/openai_server.py) that answer each request after `latency` seconds with a
deterministic 16-task continuation. The response cache is off, so every request goes over HTTP. Prints the wall
times, their ratios, and whether the regen.json files are identical (they must be).

--mode fleet models servers with a batch limit: each answers at most --server_batch requests at once (later ones
wait, as in a continuous-batching server that is full). It compares one such server with --servers of them behind a
router-like endpoint (a forwarding proxy written here as test scaffolding, sending each request to the least busy
server, as LiteLLM's proxy with routing_strategy least-busy does), at --max_concurrency = one server's batch and =
servers x batch.
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

from alpaca.generate import self_instruct as generate_instruction
from alpaca.testing.openai_server import OpenAIServer, default_responder

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


def timed_run(server, output_dir: str, seeds: str, num_prompts: int, max_concurrency: int) -> float:
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # per-request logs
        generate_instruction.generate_instruction_following_data(
            output_dir=output_dir, seed_tasks_path=seeds, num_instructions_to_generate=10**9,
            request_batch_size=1, max_requests=num_prompts, max_concurrency=max_concurrency, api_base=server.url,
            cache=False, num_cpus=1)
    return time.perf_counter() - start


def batch_limited_server(latency: float, batch: int) -> OpenAIServer:
    """A loopback server that works on at most `batch` requests at once, `latency` seconds each."""
    slots = threading.BoundedSemaphore(batch)

    def respond(endpoint: str, prompt: str, body: dict) -> tuple[str, str]:
        with slots:
            time.sleep(latency)
        return default_responder(endpoint, prompt, body)

    return OpenAIServer(responder=respond)


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


def run_fleet(args, tmp: str, seeds: str) -> bool:
    """One batch-limited server vs --servers of them behind the router; True when every regen.json is identical."""
    fleet_concurrency = args.servers * args.server_batch
    print(f"{args.num_prompts} prompts, 1 per request; each server answers at most {args.server_batch} requests at "
          f"once, {args.latency * 1000:.0f} ms each (at most {args.server_batch / args.latency:.0f} requests/s)")
    servers = [batch_limited_server(args.latency, args.server_batch) for _ in range(args.servers)]
    with contextlib.ExitStack() as stack:
        for server in servers:
            stack.enter_context(server)
        router = stack.enter_context(Router([server.url for server in servers]))
        runs = [("one server", servers[0], fleet_concurrency),
                (f"{args.servers} servers behind one endpoint", router, args.server_batch),
                (f"{args.servers} servers behind one endpoint", router, fleet_concurrency)]
        seconds = []
        for index, (name, endpoint, concurrency) in enumerate(runs):
            seconds.append(timed_run(endpoint, os.path.join(tmp, f"run{index}"), seeds, args.num_prompts,
                                     concurrency))
            print(f"{name:34s} --max_concurrency {concurrency:3d}: {seconds[-1]:7.2f} s, "
                  f"{args.num_prompts / seconds[-1]:6.1f} requests/s")
        outputs = [pathlib.Path(tmp, f"run{index}", "regen.json").read_bytes() for index in range(len(runs))]
    with OpenAIServer() as instant:  # no latency, no batch limit: what the client side alone sustains here
        ceiling = args.num_prompts / timed_run(instant, os.path.join(tmp, "ceiling"), seeds, args.num_prompts,
                                               fleet_concurrency)
    same = all(output == outputs[0] for output in outputs)
    print(f"fleet at --max_concurrency {fleet_concurrency} (servers x batch) vs one server: "
          f"{seconds[0] / seconds[2]:.1f}x (servers alone would allow {args.servers}x); vs the fleet at one server's "
          f"batch: {seconds[1] / seconds[2]:.1f}x; identical regen.json: {'yes' if same else 'NO'}")
    print(f"client ceiling on this machine (instant server, same concurrency): {ceiling:.1f} requests/s; the fleet "
          f"is bounded by min(servers x batch / latency = {fleet_concurrency / args.latency:.0f}, that ceiling)")
    return same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["concurrency", "fleet"], default="concurrency",
                        help="concurrency: one request at a time vs --max_concurrency; fleet: one server vs several")
    parser.add_argument("--num_prompts", type=int, default=200, help="prompts (= requests) per run")
    parser.add_argument("--latency", type=float, default=0.2, help="seconds the server takes per request")
    parser.add_argument("--max_concurrency", type=int, default=16, help="requests in flight in the fast run")
    parser.add_argument("--servers", type=int, default=4, help="fleet mode: servers behind the router")
    parser.add_argument("--server_batch", type=int, default=4, help="fleet mode: requests a server works on at once")
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
