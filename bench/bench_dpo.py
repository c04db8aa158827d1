"""DPO against supervised fine-tuning, side by side: training throughput of `train_dpo.py` and `train.py` on the same
model, the same examples and the same batch settings, in one run.

    python bench/bench_dpo.py                         # CPU, the tiny test model (hidden 64, 2 layers)
    python bench/bench_dpo.py --hidden_size 512 --num_hidden_layers 8 --use_cpu False   # on a GPU

Each preference pair is an example of data/demo_alpaca.json: its prompt, its output as `chosen` and another
example's output as `rejected`. Both scripts run as a user runs them (subprocesses, the same flags where they
overlap) for --steps steps; the numbers are the throughput lines both write (throughput.py: real, i.e. non-pad,
tokens per second and optimizer steps per second) over the whole run. A DPO step reads two sequences per pair
(chosen and rejected) through the policy and the frozen reference, so its tokens per second count both sequences
and the ratio says what a preference pair costs against a supervised example.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

from alpaca.prompts.alpaca import format_prompt
from alpaca.testing.tiny_model import make_tiny_model

REPO = pathlib.Path(__file__).resolve().parent.parent


def preference_pairs(records: list[dict]) -> list[dict]:
    """Each record's prompt with its own output chosen and the next record's output rejected."""
    return [{"prompt": format_prompt(r["instruction"], r.get("input") or ""), "chosen": r["output"],
             "rejected": records[(i + 1) % len(records)]["output"]} for i, r in enumerate(records)]


def run(script: str, data: pathlib.Path, base: pathlib.Path, out: pathlib.Path, args: argparse.Namespace) -> dict:
    """Train with `script` for args.steps steps and return its last logged metrics (trainer_state.json)."""
    command = [sys.executable, script, "--model_name_or_path", str(base), "--data_path", str(data),
               "--output_dir", str(out), "--use_cpu", str(args.use_cpu), "--max_steps", str(args.steps),
               "--per_device_train_batch_size", str(args.batch_size), "--model_max_length", "256",
               "--learning_rate", "1e-4", "--logging_steps", str(args.steps), "--save_strategy", "no",
               "--report_to", "none", "--seed", "0"]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "WANDB_DISABLED": "true"}
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"{script} failed:\n{done.stderr[-3000:]}")
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    summary = next(entry for entry in reversed(history) if "train_steps_per_second" in entry)  # the whole run
    return {**next(entry for entry in reversed(history) if "real_tokens_per_second" in entry), **summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per run")
    parser.add_argument("--batch_size", type=int, default=8, help="examples (SFT) or pairs (DPO) per step")
    parser.add_argument("--hidden_size", type=int, default=64, help="width of the model built for the run")
    parser.add_argument("--num_hidden_layers", type=int, default=2, help="layers of the model built for the run")
    parser.add_argument("--use_cpu", default="True", help="True: train on the CPU; False: on the GPU")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        base = make_tiny_model(str(tmp / "base"), hidden_size=args.hidden_size,
                               num_hidden_layers=args.num_hidden_layers)
        records = json.loads((REPO / "data" / "demo_alpaca.json").read_text())
        pairs = tmp / "pairs.jsonl"
        pairs.write_text("".join(json.dumps(pair) + "\n" for pair in preference_pairs(records)))
        print(f"model: hidden {args.hidden_size}, {args.num_hidden_layers} layers; {len(records)} examples / pairs; "
              f"{args.steps} steps of batch {args.batch_size}; use_cpu={args.use_cpu}")
        sft = run("train.py", REPO / "data" / "demo_alpaca.json", base, tmp / "sft", args)
        dpo = run("train_dpo.py", pairs, base, tmp / "dpo", args)
    for name, metrics in (("SFT (train.py)", sft), ("DPO (train_dpo.py)", dpo)):
        print(f"{name:<20} {metrics['real_tokens_per_second']:>10,.0f} real tokens/s  "
              f"{metrics['train_steps_per_second']:>6.2f} steps/s")
    print(f"DPO / SFT: {dpo['real_tokens_per_second'] / sft['real_tokens_per_second']:.2f}x the tokens per second; "
          f"a step of {args.batch_size} pairs takes "
          f"{sft['train_steps_per_second'] / dpo['train_steps_per_second']:.2f}x "
          f"the time of a step of {args.batch_size} examples")


if __name__ == "__main__":
    main()
