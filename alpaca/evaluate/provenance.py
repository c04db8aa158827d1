"""What produced a result: recorded in judge.py's results.json (under PROVENANCE_KEY) and on every line of
`judge.py preferences`' preferences.jsonl.

A provenance holds the judge model and mode, the sha256 of the judge's prompt template (prompts.judge.template_sha256;
when a run judged conversations, also `judge_conversation_prompt_sha256`, of the conversation layout), the seed, and
for each input file its path as given, the sha256 of its bytes, its number of records, the `generator` names its
records carry and the decoding settings its records carry (DECODING_FIELDS, only those present: inference.py writes
none, so an answers file from it shows `{}`). Nothing in it depends on the time or the machine, so a re-run from the
journal writes the same bytes.
"""

import json
import os

from alpaca import files
from alpaca.evaluate.win_rates import PROVENANCE_KEY  # noqa: F401  (the key of results.json it lives under)
from alpaca.prompts.judge import conversation_template_sha256, template_sha256

# Per-record generation settings another tool may write beside an answer; recorded when present, never guessed.
DECODING_FIELDS = ("do_sample", "temperature", "top_p", "top_k", "max_new_tokens", "max_tokens", "num_samples",
                   "seed")


def distinct(values: list) -> object:
    """The one value when all are equal, else the distinct values in a stable order (by their JSON text)."""
    unique = {json.dumps(value, sort_keys=True): value for value in values}
    ordered = [unique[text] for text in sorted(unique)]
    return ordered[0] if len(ordered) == 1 else ordered


def input_file(path: str | os.PathLike, records: list[dict]) -> dict:
    """The provenance of one input file read as `records`: path (as given), sha256, records, generators (the
    distinct string `generator` fields, sorted) and decoding ({field: value, or the distinct values when records
    differ} for each of DECODING_FIELDS some record has)."""
    generators = sorted({record["generator"] for record in records if isinstance(record.get("generator"), str)})
    decoding = {field: distinct([record[field] for record in records if field in record])
                for field in DECODING_FIELDS if any(field in record for record in records)}
    return {"path": os.fspath(path), "sha256": files.file_sha256(path), "records": len(records),
            "generators": generators, "decoding": decoding}


def of_run(judge_model: str, judge_mode: str, seed: int, *, conversations: bool = False, **inputs: object) -> dict:
    """A run's provenance: the judge (model, mode, prompt template hash, and the conversation layout's hash when the
    run judged `conversations`), the seed, then `inputs` as given (e.g. model_outputs={name: input_file(...)},
    reference_outputs=input_file(...))."""
    prompts = {"judge_prompt_sha256": template_sha256(judge_mode)}
    if conversations:
        prompts["judge_conversation_prompt_sha256"] = conversation_template_sha256(judge_mode)
    return {"judge_model": judge_model, "judge_mode": judge_mode, **prompts, "seed": seed, **inputs}
