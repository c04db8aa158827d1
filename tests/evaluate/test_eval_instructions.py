"""Checks on eval_instructions.jsonl, the project's own evaluation set for judge.py (issue 9).

The set is only a fair test of a model trained on seed-derived data if no evaluation instruction is a near copy of a
seed task, a demo training instruction or another evaluation instruction; these tests hold it to the same ROUGE-L
rule (F1 > 0.7 is a near copy) and the same per-instruction filters the generator applies."""

import collections
import json
import pathlib

import numpy as np
import pytest

from alpaca.files import load_alpaca_records
from alpaca.generate.rouge_l import RougeLIndex
from alpaca.generate.self_instruct import filter_drop_reason

REPO = pathlib.Path(__file__).resolve().parents[2]
EVAL_PATH = REPO / "eval_instructions.jsonl"
SEED_PATH = REPO / "seed_tasks.jsonl"
DEMO_PATH = REPO / "data" / "demo_alpaca.json"

CATEGORIES = {"writing", "rewriting", "brainstorming", "open_qa", "closed_qa", "classification", "extraction",
              "summarization", "math_reasoning", "coding", "advice", "roleplay"}
MAX_ROUGE_L = 0.7  # the generator's own similarity threshold


@pytest.fixture(scope="module")
def records() -> list[dict]:
    return load_alpaca_records(EVAL_PATH, require_output=False)


def test_every_line_has_exactly_the_three_string_fields():
    lines = EVAL_PATH.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        record = json.loads(line)
        assert set(record) == {"instruction", "input", "category"}, f"line {number}: {sorted(record)}"
        assert all(isinstance(value, str) for value in record.values()), f"line {number}"
        assert record["instruction"] == record["instruction"].strip() and record["instruction"], f"line {number}"
        assert record["input"] == record["input"].strip(), f"line {number}: input has surrounding whitespace"


def test_size_categories_and_input_share(records):
    assert len(records) >= 300
    counts = collections.Counter(record["category"] for record in records)
    assert set(counts) <= CATEGORIES, f"unknown categories: {set(counts) - CATEGORIES}"
    assert len(counts) >= 10
    assert min(counts.values()) >= 15, counts
    input_share = sum(1 for record in records if record["input"]) / len(records)
    assert 0.25 <= input_share <= 0.45, input_share


def test_no_duplicate_instruction_input_pairs(records):
    pairs = collections.Counter((record["instruction"], record["input"]) for record in records)
    assert [pair for pair, n in pairs.items() if n > 1] == []


def test_generator_filters_keep_every_instruction(records):
    dropped = {record["instruction"]: filter_drop_reason(record["instruction"]) for record in records}
    assert {text: reason for text, reason in dropped.items() if reason is not None} == {}


def _near_copies(instructions: list[str], reference: list[str]) -> dict[str, float]:
    """Each instruction whose highest ROUGE-L F1 against `reference` is above the threshold, with that score."""
    index = RougeLIndex(reference)
    found = {}
    for text in instructions:
        best = float(index.scores(text).max())
        if best > MAX_ROUGE_L:
            found[text] = best
    return found


def test_no_near_copy_of_a_seed_task(records):
    seeds = [json.loads(line)["instruction"] for line in SEED_PATH.read_text(encoding="utf-8").splitlines()]
    assert _near_copies([record["instruction"] for record in records], seeds) == {}


def test_no_near_copy_of_a_demo_training_instruction(records):
    demo = [record["instruction"] for record in load_alpaca_records(DEMO_PATH)]
    assert _near_copies([record["instruction"] for record in records], demo) == {}


def test_no_near_copy_of_another_evaluation_instruction(records):
    instructions = [record["instruction"] for record in records]
    index = RougeLIndex(instructions)
    found = {}
    for position, text in enumerate(instructions):
        scores = index.scores(text).copy()
        scores[position] = 0.0  # itself
        if scores.max() > MAX_ROUGE_L:
            found[text] = instructions[int(np.argmax(scores))]
    assert found == {}


def test_near_copy_check_catches_a_planted_copy(records):
    """The ROUGE-L check is live: a lightly reworded evaluation instruction counts as a near copy."""
    text = records[0]["instruction"]
    planted = text.rstrip(".?!") + " please."
    assert list(_near_copies([planted], [text])) == [planted]
