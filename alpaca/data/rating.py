"""`data_tools.py rate`: score each example 0-5 with an LLM judge, resumable, through the project's client.

The rater is a prompt and a parser on the one annotate loop (alpaca/llm/annotate.py). The prompt is ours
(RATING_PROMPT); the reply must end with `Score: N`, N from 0 to 5. A reply without one is asked again with a
reminder, and after `score_retries` such retries the record stays unrated this run (never given a default score).
Every reply is appended to the journal as it arrives (a hash of the record, attempt, score, reply, usage): a re-run
takes every journaled rating as done and asks only for the rest, the unrated records included.
"""

import asyncio
import hashlib
import json
import os
import random
import time

from alpaca import files
from alpaca.data import records as data_records
from alpaca.errors import UsageError, UserError
from alpaca.llm import annotate
from alpaca.llm.client import (
    DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_MODEL_NAMES,
    LLMEndpoint,
    LLMError,
    OpenAIDecodingArguments,
    check_settings,
)
from alpaca.llm.settings import dollars
from alpaca.prompts.rating import MAX_SCORE, RATING_PROMPT, REMINDER, SCORE_AT_END, parse_score  # noqa: F401


def rating_prompt(record: dict, attempt: int = 0) -> str:
    """The judge's prompt for a record; a retry (attempt >= 1) adds a reminder of the reply's last line."""
    task = data_records.task_of(record)
    prompt = RATING_PROMPT.format(instruction=task["instruction"], input=task["input"] or "(none)",
                                  output=task["output"])
    return prompt + (REMINDER.format(attempt=attempt + 1) if attempt else "")


def record_key(record: dict, judge_model: str) -> str:
    """sha256 of the judge model and a record's instruction, input and output: a journal entry applies only to the
    record it rated, by the judge that rated it (the journal is a cache keyed by content, not by place)."""
    task = data_records.task_of(record)
    identity = [judge_model] + [task[f] for f in data_records.FIELDS]
    return hashlib.sha256(json.dumps(identity).encode("utf-8")).hexdigest()


def parse_reply(choice: dict) -> dict | None:
    """The rater's parser for the annotate loop: {"score": N} from a reply ending in `Score: N`, or None."""
    score = parse_score(choice["text"])
    return None if score is None else {"score": score}


def is_rating(entry: dict) -> bool:
    """Whether a journal entry holds a score to use (replies without one, score null, are asked again)."""
    score = entry.get("score")
    return isinstance(score, (int, float)) and not isinstance(score, bool) and 0 <= score <= MAX_SCORE


def read_ratings(path: str) -> dict[str, dict]:
    """{record key: journal entry} of the records rated, by the one journal rule (annotate.read_answers: a torn
    last line is cut off; any other damaged line is refused with its number, and nothing is deleted)."""
    return annotate.read_answers(path, is_rating, writer="The rater")


def output_paths(output: str, min_score: float | None, num_kept: int) -> dict[str, str]:
    """Files `rate` writes next to --output."""
    root, ext = os.path.splitext(output)
    paths = {"journal": f"{output}.journal.jsonl", "cache": f"{output}.responses", "picture": f"{output}.scores.png",
             "lock": f"{output}.lock"}
    if min_score is not None:
        paths["kept"] = f"{root}.min_score_{min_score:g}{ext}"
        paths["random"] = f"{root}.random_{num_kept}{ext}"
    return paths


def write_best_and_random(rated: list[dict], data_path: str, output: str, min_score: float, seed: int) -> dict:
    """--min_score's files: the records scoring at least min_score, and as many drawn at random (with `seed`) from
    the whole file to train and judge against them. Returns their count and paths."""
    kept = [r for r in rated if r["score"] is not None and r["score"] >= min_score]
    paths = output_paths(output, min_score, len(kept))
    chosen = sorted(random.Random(seed).sample(range(len(rated)), len(kept)))
    data_records.write_records(paths["kept"], kept, [data_path])
    data_records.write_records(paths["random"], [rated[i] for i in chosen], [data_path])
    print(f"{len(kept):,} records score at least {min_score:g}: {paths['kept']}; a random subset of the same size "
          f"(seed {seed}) for comparison: {paths['random']}.")
    return {"kept": len(kept), "kept_path": paths["kept"], "random_path": paths["random"]}


def check_rate_flags(max_concurrency: int, max_tokens: int, score_retries: int, min_score: float | None) -> None:
    """Refuse the rater's own flags' impossible values before any work (exit 2)."""
    for flag, value in (("max_concurrency", max_concurrency), ("max_tokens", max_tokens)):
        if value < 1:
            raise UsageError(f"--{flag} must be at least 1, not {value}.")
    if score_retries < 0:
        raise UsageError(f"--score_retries must be 0 or more, not {score_retries}.")
    if min_score is not None and not 0 <= min_score <= MAX_SCORE:
        raise UsageError(f"--min_score must be between 0 and {MAX_SCORE:g}, not {min_score}.")


def rate_records(data_path: str, output: str, judge_model: str | None, api_type: str, api_base: str | None,
                 min_score: float | None, seed: int, max_concurrency: int, requests_per_minute: float | None,
                 tokens_per_minute: float | None, max_retries: int, retry_base_delay: float, retry_max_delay: float,
                 request_timeout: float, max_tokens: int, temperature: float, score_retries: int, cache: bool,
                 price_per_1k_prompt_tokens: float | None, price_per_1k_completion_tokens: float | None,
                 max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES) -> dict:
    """`alpaca.data.tools.rate` (see its docstring for the arguments). Returns the run's counts."""
    from alpaca.data import plots as data_plots

    (records,) = data_records.load_inputs([data_path])
    beside = output_paths(output, min_score, 0)  # the random subset's name needs the count: checked when written
    data_records.check_output_path(output, [data_path],
                                   also=tuple(beside[k] for k in ("kept", "picture", "lock") if k in beside))
    check_rate_flags(max_concurrency, max_tokens, score_retries, min_score)
    judge_model = judge_model or DEFAULT_MODEL_NAMES.get(api_type)
    check_settings(api_type, judge_model, api_base, requests_per_minute=requests_per_minute,
                   tokens_per_minute=tokens_per_minute, max_retries=max_retries, retry_base_delay=retry_base_delay,
                   retry_max_delay=retry_max_delay, request_timeout=request_timeout, temperature=temperature,
                   max_response_bytes=max_response_bytes)
    paths = output_paths(output, min_score, 0)

    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    # One rater per output: a second would pay every rating again and write each into the journal twice.
    with files.held_lock(paths["lock"], f"{output} is being rated by another run ({{holder}}); wait for it to "
                         "finish or stop it, or pass another --output."):
        ratings = read_ratings(paths["journal"])
        keys = [record_key(r, judge_model) for r in records]
        jobs = {key: {"key": key, "record": record} for key, record in zip(keys, records, strict=True)
                if key not in ratings}  # a record found twice is rated once
        stale = len(ratings.keys() - set(keys))
        if stale:
            print(f"note: {stale} ratings in {paths['journal']} match no record of {data_path} rated by {judge_model} "
                  "(the file or the judge changed); records without a rating are rated now.")
        done = len(records) - sum(key in jobs for key in keys)
        if done:
            print(f"Resuming: {done:,} of {len(records):,} records already rated in {paths['journal']}")
        decoding_args = OpenAIDecodingArguments(max_tokens=max_tokens, temperature=temperature, top_p=1.0, n=1)

        async def run() -> dict:
            async with LLMEndpoint(api_type=api_type, model_name=judge_model, api_base=api_base,
                                   max_concurrency=max_concurrency, requests_per_minute=requests_per_minute,
                                   tokens_per_minute=tokens_per_minute, max_retries=max_retries,
                                   retry_base_delay=retry_base_delay, retry_max_delay=retry_max_delay,
                                   request_timeout=request_timeout,
                                   cache_dir=paths["cache"] if cache else None,
                                   max_response_bytes=max_response_bytes) as endpoint:
                return await annotate.annotate(
                    endpoint, list(jobs.values()), paths["journal"],
                    prompt_of=lambda job, attempt: rating_prompt(job["record"], attempt), parse=parse_reply,
                    decoding_args=decoding_args, retries=score_retries, answers=ratings, unit="record", desc="rated")

        start = time.time()
        try:
            totals = asyncio.run(run()) if jobs else dict.fromkeys(annotate.COUNTS, 0)
        except LLMError as error:
            raise UserError(f"{error} Ratings so far are kept in {paths['journal']}.") from error
        scores = [ratings[key]["score"] if key in ratings else None for key in keys]
        rated = [{**record, "score": score} for record, score in zip(records, scores, strict=True)]
        data_records.write_records(output, rated, [data_path])
        data_plots.score_histogram(scores, paths["picture"], os.path.basename(output), min_score)
        num_rated = sum(s is not None for s in scores)
        cost = dollars(totals, price_per_1k_prompt_tokens, price_per_1k_completion_tokens)
        priced = price_per_1k_prompt_tokens is not None or price_per_1k_completion_tokens is not None
        attempts_text = f"{score_retries + 1} attempt{'s' if score_retries else ''}"
        print(f"Rated {num_rated:,} of {len(records):,} records with {judge_model} "
              f"({len(records) - num_rated:,} unrated after {attempts_text}) in {time.time() - start:.1f}s: "
              f"{totals['requests']:,} requests "
              f"({totals['cached']:,} replayed from the cache, {totals['unparsed']:,} replies without a score), "
              f"tokens {totals['prompt_tokens'] + totals['completion_tokens']:,} (prompt {totals['prompt_tokens']:,}, "
              f"completion {totals['completion_tokens']:,})" + (f", cost ${cost:.4f}" if priced else "")
              + f". Wrote {output} and {paths['picture']}.")
        summary = {"records": len(records), "rated": num_rated, "requests": totals["requests"],
                   "cached": totals["cached"], "unparsed_replies": totals["unparsed"],
                   "prompt_tokens": totals["prompt_tokens"], "completion_tokens": totals["completion_tokens"],
                   "cost": cost}
        if min_score is not None:
            summary.update(write_best_and_random(rated, data_path, output, min_score, seed))
        return summary
