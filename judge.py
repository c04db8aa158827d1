"""Pairwise evaluation with an LLM judge: how often a judge prefers a model's answers to a reference model's.

    python judge.py --model_outputs outputs/alpaca.json --reference_outputs outputs/reference.json \
        --output_dir judged --judge_model gpt-4o-mini
    python judge.py human ...     # blind verdicts from people on the same pairs

The code lives in alpaca/evaluate/; docs/evaluation.md explains the method.
"""

from alpaca.evaluate.judge import (  # noqa: F401  (the 2023 names, importable from here)
    entry_point,
    evaluate,
    judge_prompt,
    main,
    parse_verdict,
)

if __name__ == "__main__":
    entry_point()
