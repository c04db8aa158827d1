"""The numbers and the Markdown report of `data_tools.py stats`: lengths, near-duplicate pairs, filter drops, verbs.

`file_stats` computes the statistics of one data set; `markdown_report` lays several side by side. The
command itself (reading, pictures, files) is `data_tools.stats`.
"""

import os
import pathlib
import re
from collections import Counter

import numpy as np
from tqdm import tqdm

from alpaca.data.records import FIELDS, has_input, task_of
from alpaca.errors import MissingPathError
from alpaca.generate import language as languages
from alpaca.generate.rouge_l import RougeLIndex
from alpaca.generate.self_instruct import SIMILARITY_THRESHOLD, clean_drop_reason, filter_drop_reason

PERCENTILES = (10, 50, 90, 99)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def length_summary(lengths: list[int]) -> dict:
    """Mean, percentiles (10, 50, 90, 99) and max of a list of lengths; all None when it is empty."""
    if not lengths:
        return {"count": 0, "mean": None, **{f"p{p}": None for p in PERCENTILES}, "max": None}
    values = np.asarray(lengths)
    return {"count": len(lengths), "mean": round(float(values.mean()), 1),
            **{f"p{p}": float(np.percentile(values, p)) for p in PERCENTILES}, "max": int(values.max())}


def field_lengths(records: list[dict], count) -> dict[str, list[int]]:
    """{field: [count(text) for each record]}; inputs only where the record has one."""
    return {"instruction": [count(r["instruction"]) for r in records],
            "input": [count(r["input"]) for r in records if has_input(r)],
            "output": [count(r["output"]) for r in records]}


def load_tokenizer(path: str):
    """A local Hugging Face tokenizer (a tokenizer or model directory); MissingPathError when there is none."""
    from transformers import AutoTokenizer

    if not os.path.isdir(path):
        raise MissingPathError(f"--tokenizer {path} is not a directory; give a local Hugging Face tokenizer or "
                               "model directory.")
    if not any(os.path.exists(os.path.join(path, name)) for name in TOKENIZER_FILES):
        raise MissingPathError(f"--tokenizer {path} holds no tokenizer ({', '.join(TOKENIZER_FILES)}); give the "
                               "directory of a saved tokenizer or model.")
    return AutoTokenizer.from_pretrained(path, trust_remote_code=False)  # never run code shipped with the files


def token_lengths(records: list[dict], tokenizer) -> dict[str, list[int]]:
    """Like field_lengths, in tokens of a Hugging Face tokenizer (no special tokens)."""
    lengths = {}
    for field in FIELDS:
        texts = [r[field] for r in records if field != "input" or has_input(r)]
        lengths[field] = []
        for start in range(0, len(texts), 4096):
            ids = tokenizer(texts[start:start + 4096], add_special_tokens=False)["input_ids"]
            lengths[field] += [len(i) for i in ids]
    return lengths


def near_duplicates(instructions: list[str], threshold: float, num_examples: int, num_cpus: int | None,
                    language: str = "en") -> dict:
    """Pairs (earlier, later) of instructions with ROUGE-L F1 above `threshold`, each later one scored against
    every earlier one with `RougeLIndex` (exact rouge_score values; for another language over its units).
    Identical texts are counted apart."""
    index = RougeLIndex(num_threads=num_cpus, language=language)
    pairs = records_with_pair = identical = 0
    examples = []
    # leave=True: the finished bar ends with a newline. A cleared one (leave=False) ends with a bare carriage
    # return, and in a log (`stats ... > log 2>&1`) the report's title was written on the bar's line.
    for i, instruction in enumerate(tqdm(instructions, desc="near-duplicates", unit="instr", leave=True)):
        scores = index.scores(instruction)
        above = np.flatnonzero(scores > threshold)
        if len(above):
            pairs += len(above)
            records_with_pair += 1
            for j in above:
                if instructions[j] == instruction:
                    identical += 1
                elif len(examples) < num_examples:
                    examples.append({"earlier": int(j), "later": i, "rouge_l": float(scores[j]),
                                     "earlier_instruction": instructions[j], "later_instruction": instruction})
        index.add(instruction)
    return {"threshold": threshold, "pairs": pairs, "identical_pairs": identical,
            "records_with_an_earlier_near_duplicate": records_with_pair, "examples": examples}


def language_mix(instructions: list[str]) -> dict[str, int]:
    """How many instructions lingua puts in each language (ISO 639-1; "unknown" where it cannot tell), most first."""
    found = languages.detect_languages(instructions)
    return dict(Counter(code or "unknown" for code in found).most_common())


def file_stats(records: list[dict], path: str, tokenizer, nlp, num_examples: int,
               num_cpus: int | None, num_verbs: int, num_objects: int, language: str = "en",
               with_language_mix: bool = True) -> tuple[dict, dict]:
    """(statistics of one data set, its per-record lengths for the histograms). `language` chooses the filters and
    the ROUGE-L units; `with_language_mix` adds the languages of the instructions."""
    from alpaca.data import verb_objects

    instructions = [r["instruction"] for r in records]
    words = field_lengths(records, lambda text: languages.count_units(text, language))  # characters for zh, ja, th
    tokens = token_lengths(records, tokenizer) if tokenizer else None
    with_input = sum(map(has_input, records))
    stats = {
        "path": path, "records": len(records), "unique_instructions": len(set(instructions)),
        "with_input": with_input, "with_input_share": round(with_input / len(records), 4),
        "words": {field: length_summary(values) for field, values in words.items()},
        "tokens": {field: length_summary(values) for field, values in tokens.items()} if tokens else None,
        "near_duplicates": near_duplicates(instructions, SIMILARITY_THRESHOLD, num_examples, num_cpus, language),
        "generator_filter_drops": dict(Counter(filter(None, (filter_drop_reason(i, language) for i in instructions)))
                                       .most_common()),
        "instruction_languages": language_mix(instructions) if with_language_mix else None,
        "clean_filter_drops": dict(Counter(filter(None, (clean_drop_reason(task_of(r)) for r in records)))
                                   .most_common()),
        "verbs": None,
    }
    if nlp is not None:
        pairs = verb_objects.extract_all(nlp, instructions, total=len(instructions))
        stats["verbs"] = verb_objects.top_verb_objects(pairs, num_verbs, num_objects)
    return stats, {"words": words, "tokens": tokens}


def unique_labels(paths: list[str]) -> list[str]:
    """Short names for the data sets: file stems, with the parent directory (then a number) where they clash."""
    labels = [pathlib.Path(p).stem for p in paths]
    if len(set(labels)) < len(labels):
        labels = [f"{pathlib.Path(p).parent.name}_{pathlib.Path(p).stem}".strip("_") for p in paths]
    if len(set(labels)) < len(labels):
        labels = [f"{i}_{label}" for i, label in enumerate(labels)]
    return [re.sub(r"[^\w.-]+", "_", label) for label in labels]


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def markdown_report(all_stats: dict[str, dict], pictures: list[str], verbs_note: str | None) -> str:
    """The side-by-side Markdown report of `stats`: one column per data set."""
    labels = list(all_stats)
    rows = [("records", lambda s: s["records"]), ("unique instructions", lambda s: s["unique_instructions"]),
            ("with an input", lambda s: f"{s['with_input']:,} ({100 * s['with_input_share']:.1f}%)")]
    for unit in ("words", "tokens"):
        for field in FIELDS:
            rows.append((f"{field} {unit} p50 / p90 / max",
                         lambda s, u=unit, f=field: None if not s[u] or s[u][f]["count"] == 0 else
                         f"{s[u][f]['p50']:g} / {s[u][f]['p90']:g} / {s[u][f]['max']:,}"))
    rows.append(("instruction languages", lambda s: None if not s.get("instruction_languages") else ", ".join(
        f"{code} {100 * n / s['records']:.1f}%" for code, n in list(s["instruction_languages"].items())[:5])))
    rows.append(("near-duplicate pairs (ROUGE-L > 0.7)", lambda s: s["near_duplicates"]["pairs"]))
    rows.append(("... of which identical", lambda s: s["near_duplicates"]["identical_pairs"]))
    reasons = sorted({r for s in all_stats.values() for r in s["generator_filter_drops"]})
    rows += [(f"generator filter: {r}", lambda s, r=r: s["generator_filter_drops"].get(r, 0)) for r in reasons]
    reasons = sorted({r for s in all_stats.values() for r in s["clean_filter_drops"]})
    rows += [(f"--clean filter: {r}", lambda s, r=r: s["clean_filter_drops"].get(r, 0)) for r in reasons]
    lines = ["# Data statistics", "", "| | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    lines += [f"| {name} | " + " | ".join(_cell(get(all_stats[label])) for label in labels) + " |"
              for name, get in rows if any(get(s) is not None for s in all_stats.values())]
    lines += ["", "## Top root verbs and their direct objects", ""]
    if verbs_note:
        lines.append(f"Not computed: {verbs_note}")
    for label, s in all_stats.items():
        if s["verbs"]:
            tops = "; ".join(f"{v['verb']} {v['count']} ({', '.join(o for o, _ in v['objects'])})"
                             for v in s["verbs"]["top"])
            lines.append(f"- {label}: {tops or 'none'}")
    lines += ["", "## Near-duplicate examples", ""]
    for label, s in all_stats.items():
        for example in s["near_duplicates"]["examples"]:
            lines.append(f"- {label}, records {example['earlier']} and {example['later']} "
                         f"(ROUGE-L {example['rouge_l']:.3f}): {example['earlier_instruction']!r} / "
                         f"{example['later_instruction']!r}")
    lines += ["", "## Pictures", ""] + [f"![{name}]({name})" for name in pictures]
    return "\n".join(lines) + "\n"
