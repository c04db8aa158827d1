"""Pairwise evaluation with an LLM judge: how often a judge prefers a model's answers to a reference model's.

    python judge.py --model_outputs outputs/alpaca.json --reference_outputs outputs/reference.json \
        --output_dir judged --judge_model gpt-4o-mini
    python judge.py human ...            # blind verdicts from people on the same pairs
    python judge.py preferences ...      # preference pairs for train_dpo.py
    python judge.py leaderboard DIR ...  # one table from several judge.py runs

The code lives in alpaca/evaluate/ (the judge in judge.py, this command line in command.py); docs/evaluation.md
explains the method.
"""

from alpaca.evaluate.command import entry_point, main  # noqa: F401
from alpaca.evaluate.judge import evaluate, judge_prompt, parse_verdict  # noqa: F401  (importable from here)

if __name__ == "__main__":
    entry_point()
