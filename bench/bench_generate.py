"""Self-Instruct generation: one request at a time (the original's way) vs --max_concurrency 16.

    python bench/bench_generate.py [--num_prompts 200] [--latency 0.2] [--max_concurrency 16]

Both runs send the same prompts (one per request, --seed fixed) through the real openai client to a loopback
OpenAI-compatible server (tests/openai_server.py) that answers each request after `latency` seconds with a
deterministic 16-task continuation. The response cache is off, so every request goes over HTTP. Prints both
wall times, their ratio, and whether the two regen.json files are identical (they must be).
"""

import argparse
import contextlib
import io
import json
import os
import pathlib
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import generate_instruction  # noqa: E402
from openai_server import OpenAIServer  # noqa: E402


def write_seed_tasks(path: pathlib.Path, count: int = 20) -> None:
    topics = "volcano sonnet budget recipe chess tax poem python history climate marathon vaccine guitar email " \
             "garden bridge planet violin harbor desert".split()
    with open(path, "w") as f:
        for i in range(count):
            task = {"id": f"seed_task_{i}", "name": f"task_{i}", "is_classification": False,
                    "instruction": f"Tell me something useful about the {topics[i]} topic.",
                    "instances": [{"input": "", "output": f"Answer {i}."}]}
            f.write(json.dumps(task) + "\n")


def timed_run(server: OpenAIServer, output_dir: str, seeds: str, num_prompts: int, max_concurrency: int) -> float:
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # per-request logs
        generate_instruction.generate_instruction_following_data(
            output_dir=output_dir, seed_tasks_path=seeds, num_instructions_to_generate=10**9,
            request_batch_size=1, max_requests=num_prompts, max_concurrency=max_concurrency, api_base=server.url,
            cache=False, num_cpus=1)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_prompts", type=int, default=200, help="prompts (= requests) per run")
    parser.add_argument("--latency", type=float, default=0.2, help="seconds the server takes per request")
    parser.add_argument("--max_concurrency", type=int, default=16, help="requests in flight in the fast run")
    args = parser.parse_args()
    os.environ["OPENAI_API_KEY"] = "sk-bench"
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
