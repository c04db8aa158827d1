"""Checks on the shipped data: seed_tasks.jsonl (what every generation run is seeded with) and data/demo_alpaca.json
(the offline demo's training set). A seed that breaks the schema, repeats another, or would be dropped by the
generator's own filters silently weakens every run, so these tests hold the files to the generator's rules."""

import itertools
import json
import re

import pytest
from rouge_score import rouge_scorer

from alpaca.generate import self_instruct as gi
from conftest import REPO
from conftest import task as task_text

SEED_PATH = REPO / "seed_tasks.jsonl"
DEMO_PATH = REPO / "data" / "demo_alpaca.json"


def load_seed_lines() -> list[dict]:
    """Parse seed_tasks.jsonl strictly: one JSON object per non-empty line."""
    lines = SEED_PATH.read_text(encoding="utf-8").splitlines()
    assert all(line.strip() for line in lines), "seed_tasks.jsonl holds an empty line"
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def seeds() -> list[dict]:
    return load_seed_lines()


@pytest.fixture(scope="module")
def demo() -> list[dict]:
    with open(DEMO_PATH, encoding="utf-8") as f:
        return json.load(f)


def test_seed_schema(seeds):
    for line_number, task in enumerate(seeds, start=1):
        where = f"seed_tasks.jsonl line {line_number}"
        assert set(task) == {"id", "name", "instruction", "instances", "is_classification"}, where
        assert isinstance(task["id"], str) and isinstance(task["name"], str), where
        assert re.fullmatch(r"[a-z0-9]+(_[a-z0-9]+)*", task["name"]), f"{where}: name is not snake_case"
        assert isinstance(task["instruction"], str) and task["instruction"].strip(), where
        assert task["instruction"] == task["instruction"].strip(), f"{where}: instruction has outer whitespace"
        assert isinstance(task["is_classification"], bool), where
        assert isinstance(task["instances"], list) and len(task["instances"]) >= 1, where
        for instance in task["instances"]:
            assert set(instance) == {"input", "output"}, where
            assert isinstance(instance["input"], str) and isinstance(instance["output"], str), where
            assert instance["output"].strip(), f"{where}: empty output"
            # "<noinput>" is the prompt's marker; a seed spelling it out would teach the model a literal marker.
            assert instance["input"].strip().lower() not in {"<noinput>", "n/a", "none", "no input"}, where


def test_seed_count_ids_and_names(seeds):
    assert len(seeds) == 175
    assert [task["id"] for task in seeds] == [f"seed_task_{i}" for i in range(175)]
    names = [task["name"] for task in seeds]
    assert len(set(names)) == len(names), "duplicate seed names"
    instructions = [task["instruction"].lower() for task in seeds]
    assert len(set(instructions)) == len(instructions), "duplicate seed instructions"


def test_seed_mix_of_inputs_and_classification(seeds):
    with_input = sum(bool(task["instances"][0]["input"].strip()) for task in seeds)
    assert 0.30 <= with_input / len(seeds) <= 0.50, f"{with_input} of {len(seeds)} seeds have an input"
    classification = sum(task["is_classification"] for task in seeds)
    assert classification >= 15
    assert classification <= len(seeds) // 2, "classification tasks should be a minority"


def test_seed_instructions_pass_generator_filters(seeds):
    """Every seed would survive the generator's own filters (length, blacklist, first character), and written as a
    model's continuation it would be parsed back as it is."""
    for task_dict in seeds:
        instruction = task_dict["instruction"]
        instance = task_dict["instances"][0]
        assert gi.filter_drop_reason(instruction) is None, instruction
        text = task_text(4, instruction, instance["input"] or "<noinput>", instance["output"])[len("4. Instruction:"):]
        parsed = gi.post_process_gpt3_response(3, {"text": text, "finish_reason": "stop"})
        assert parsed == [{"instruction": instruction, "input": instance["input"].strip(),
                           "output": instance["output"].strip()}], instruction
        # The prompt asks for inputs under 100 words; the seeds set the example.
        assert len(instance["input"].split()) < 100, instruction


def test_the_generators_blacklist_matches_whole_words_only():
    """The generator's BLACKLIST, through its real filter: a real hit is dropped, a word that merely contains a
    blacklisted one is not."""
    assert {"image", "draw", "go to", "diagram"} <= set(gi.BLACKLIST)
    assert gi.filter_drop_reason("Describe this Image in detail.") == "blacklist"
    assert gi.filter_drop_reason("Tell me how to go to the station.") == "blacklist"
    assert gi.filter_drop_reason("Explain the mapping between profiles and drawers.") is None


@pytest.mark.slow
def test_seed_instructions_are_not_near_duplicates(seeds):
    """The generator drops anything above ROUGE-L 0.7 against the pool; seeds themselves must stay well apart."""
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    instructions = [task["instruction"] for task in seeds]
    worst = max(((scorer.score(a, b)["rougeL"].fmeasure, a, b)
                 for a, b in itertools.combinations(instructions, 2)), key=lambda item: item[0])
    assert worst[0] <= 0.7, f"near-duplicate seeds (ROUGE-L {worst[0]:.3f}): {worst[1]!r} / {worst[2]!r}"


def test_demo_dataset_schema_and_size(demo):
    assert isinstance(demo, list) and len(demo) == 120
    for index, example in enumerate(demo):
        where = f"data/demo_alpaca.json example {index}"
        assert set(example) == {"instruction", "input", "output"}, where
        assert all(isinstance(example[key], str) for key in example), where
        assert example["instruction"].strip() and example["output"].strip(), where
    with_input = sum(bool(example["input"].strip()) for example in demo)
    assert 0.30 <= with_input / len(demo) <= 0.50, f"{with_input} of {len(demo)} demo examples have an input"
    instructions = [example["instruction"].lower() for example in demo]
    assert len(set(instructions)) == len(instructions), "duplicate demo instructions"


@pytest.mark.slow
def test_demo_dataset_is_distinct_from_seeds(demo, seeds):
    """Training on the seeds themselves would make the demo's generation and training stages indistinguishable."""
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    for example in demo:
        for task in seeds:
            score = scorer.score(example["instruction"], task["instruction"])["rougeL"].fmeasure
            assert score <= 0.7, f"demo {example['instruction']!r} repeats seed {task['name']} ({score:.3f})"
