"""`data_tools.py rate`: score each example 0-5 with an LLM judge, resumable, through the project's client.

The prompt is ours (RATING_PROMPT); the reply must end with `Score: N`, N from 0 to 5. A reply without one is asked
again with a reminder, and after `score_retries` such retries the record stays unrated. Every reply is appended
to an fsync'ed journal as it arrives (record index, a hash of the record, attempt, score, reply, usage): a re-run
takes every journaled rating as done and asks only for the rest.
"""

import asyncio
import hashlib
import json
import os
import random
import time
from contextlib import aclosing

from tqdm import tqdm

from alpaca import files
from alpaca.data import records as data_records
from alpaca.errors import UsageError, UserError
from alpaca.llm.client import (
    DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_MODEL_NAMES,
    LLMEndpoint,
    LLMError,
    OpenAIDecodingArguments,
    check_settings,
    complete_in_order,
)
from alpaca.prompts.rating import MAX_SCORE, RATING_PROMPT, REMINDER, SCORE_AT_END, parse_score  # noqa: F401


def rating_prompt(record: dict, attempt: int = 0) -> str:
    """The judge's prompt for a record; a retry (attempt >= 1) adds a reminder of the reply's last line."""
    task = data_records.task_of(record)
    prompt = RATING_PROMPT.format(instruction=task["instruction"], input=task["input"] or "(none)",
                                  output=task["output"])
    return prompt + (REMINDER.format(attempt=attempt + 1) if attempt else "")


def record_key(record: dict) -> str:
    """sha256 of a record's instruction, input and output: a journal entry applies only to the record it rated."""
    task = data_records.task_of(record)
    return hashlib.sha256(json.dumps([task[f] for f in data_records.FIELDS]).encode("utf-8")).hexdigest()


def rating_problem(entry: dict) -> str | None:
    """Why a journal line is not a rating this rater writes, or None when it is."""
    if not isinstance(entry.get("key"), str):
        return f"not a rating (it has no 'key'; {json.dumps(entry)[:60]!r})"
    return None


def read_journal(path: str) -> list[dict]:
    """The journal's entries, read by the one journal rule (files.read_journal): a torn last line is cut off; any
    other damaged line is refused with its number, and nothing is deleted."""
    return files.read_journal(path, rating_problem, writer="The rater")


def output_paths(output: str, min_score: float | None, num_kept: int) -> dict[str, str]:
    """Files `rate` writes next to --output."""
    root, ext = os.path.splitext(output)
    paths = {"journal": f"{output}.journal.jsonl", "cache": f"{output}.responses", "picture": f"{output}.scores.png"}
    if min_score is not None:
        paths["kept"] = f"{root}.min_score_{min_score:g}{ext}"
        paths["random"] = f"{root}.random_{num_kept}{ext}"
    return paths


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
                                   also=tuple(beside[k] for k in ("kept", "picture") if k in beside))
    for flag, value in (("max_concurrency", max_concurrency), ("max_tokens", max_tokens)):
        if value < 1:
            raise UsageError(f"--{flag} must be at least 1, not {value}.")
    if score_retries < 0:
        raise UsageError(f"--score_retries must be 0 or more, not {score_retries}.")
    if min_score is not None and not 0 <= min_score <= MAX_SCORE:
        raise UsageError(f"--min_score must be between 0 and {MAX_SCORE:g}, not {min_score}.")
    judge_model = judge_model or DEFAULT_MODEL_NAMES.get(api_type)
    check_settings(api_type, judge_model, api_base, requests_per_minute=requests_per_minute,
                   tokens_per_minute=tokens_per_minute, max_retries=max_retries, retry_base_delay=retry_base_delay,
                   retry_max_delay=retry_max_delay, request_timeout=request_timeout, temperature=temperature,
                   max_response_bytes=max_response_bytes)
    paths = output_paths(output, min_score, 0)

    keys = [record_key(r) for r in records]
    scores: list[float | None] = [None] * len(records)
    attempts = [0] * len(records)
    stale = 0
    # Ratings are keyed by the record's content, not its place in the file: a record moved, or rated under another
    # --output's journal copied here, keeps its rating; a record whose text changed is rated again.
    places: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        places.setdefault(key, []).append(i)
    for entry in read_journal(paths["journal"]):
        if entry["key"] not in places:
            stale += 1  # the data file changed since: that rating belongs to a record no longer there
            continue
        score = entry.get("score")
        usable = isinstance(score, (int, float)) and not isinstance(score, bool) and 0 <= score <= MAX_SCORE
        for i in places[entry["key"]]:
            attempts[i] += 1
            if usable:
                scores[i] = score
    if stale:
        print(f"note: {stale} journal entries in {paths['journal']} do not match the records of {data_path} (the "
              "file changed); those records are rated again.")
    finished = sum(s is not None or a > score_retries for s, a in zip(scores, attempts, strict=True))
    if finished:
        print(f"Resuming: {finished:,} of {len(records):,} records already rated (or out of attempts) in "
              f"{paths['journal']}")
    decoding_args = OpenAIDecodingArguments(max_tokens=max_tokens, temperature=temperature, top_p=1.0, n=1)
    totals = {"requests": 0, "cached": 0, "prompt_tokens": 0, "completion_tokens": 0, "unparsed_replies": 0}
    progress = tqdm(total=len(records), initial=finished, desc="rated", unit="record")

    async def run() -> None:
        async with LLMEndpoint(api_type=api_type, model_name=judge_model, api_base=api_base,
                               max_concurrency=max_concurrency, requests_per_minute=requests_per_minute,
                               tokens_per_minute=tokens_per_minute, max_retries=max_retries,
                               retry_base_delay=retry_base_delay, retry_max_delay=retry_max_delay,
                               request_timeout=request_timeout,
                               cache_dir=paths["cache"] if cache else None,
                               max_response_bytes=max_response_bytes) as endpoint:
            for attempt in range(score_retries + 1):
                todo = [i for i in range(len(records)) if scores[i] is None and attempts[i] == attempt]
                if not todo:
                    continue
                # Batches are numbered by record index when the records to ask form a run (a first pass, or one
                # resumed after a kill), so that the cache's request tags match the earlier run's and responses
                # that arrived after the journal's last line are replayed, not bought again.
                offset = todo[0] if todo[-1] - todo[0] + 1 == len(todo) else 0
                results = complete_in_order(
                    endpoint, lambda k, a=attempt, t=todo, o=offset: [rating_prompt(records[t[k - o]], a)],
                    decoding_args, offset, offset + len(todo) - 1)
                async with aclosing(results) as stream:
                    async for k, _, result in stream:
                        i = todo[k - offset]
                        reply = result["choices"][0]["text"]
                        score = parse_score(reply)
                        files.append_journal(paths["journal"], {"record_index": i, "key": keys[i], "attempt": attempt,
                                                          "score": score, "reply": reply, "usage": result["usage"]})
                        attempts[i] += 1
                        scores[i] = score
                        totals["requests"] += 1
                        totals["cached"] += result["cached"]
                        totals["unparsed_replies"] += score is None
                        if not result["cached"]:
                            totals["prompt_tokens"] += result["usage"]["prompt_tokens"]
                            totals["completion_tokens"] += result["usage"]["completion_tokens"]
                        if score is not None or attempt == score_retries:
                            progress.update(1)

    start = time.time()
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    try:
        asyncio.run(run())
    except LLMError as error:
        raise UserError(f"{error} Ratings so far are kept in {paths['journal']}.") from error
    finally:
        progress.close()
        files.sync_journal(paths["journal"])
    rated = [{**record, "score": score} for record, score in zip(records, scores, strict=True)]
    data_records.write_records(output, rated, [data_path])
    data_plots.score_histogram(scores, paths["picture"], os.path.basename(output), min_score)
    num_rated = sum(s is not None for s in scores)
    cost = (totals["prompt_tokens"] * (price_per_1k_prompt_tokens or 0)
            + totals["completion_tokens"] * (price_per_1k_completion_tokens or 0)) / 1000
    priced = price_per_1k_prompt_tokens is not None or price_per_1k_completion_tokens is not None
    attempts_text = f"{score_retries + 1} attempt{'s' if score_retries else ''}"
    print(f"Rated {num_rated:,} of {len(records):,} records with {judge_model} ({len(records) - num_rated:,} unrated "
          f"after {attempts_text}) in {time.time() - start:.1f}s: {totals['requests']:,} requests "
          f"({totals['cached']:,} replayed from the cache, {totals['unparsed_replies']:,} replies without a score), "
          f"tokens {totals['prompt_tokens'] + totals['completion_tokens']:,} (prompt {totals['prompt_tokens']:,}, "
          f"completion {totals['completion_tokens']:,})" + (f", cost ${cost:.4f}" if priced else "")
          + f". Wrote {output} and {paths['picture']}.")
    summary = {"records": len(records), "rated": num_rated, **totals, "cost": cost}
    if min_score is not None:
        kept = [r for r in rated if r["score"] is not None and r["score"] >= min_score]
        paths = output_paths(output, min_score, len(kept))
        chosen = sorted(random.Random(seed).sample(range(len(rated)), len(kept)))
        data_records.write_records(paths["kept"], kept, [data_path])
        data_records.write_records(paths["random"], [rated[i] for i in chosen], [data_path])
        print(f"{len(kept):,} records score at least {min_score:g}: {paths['kept']}; a random subset of the same size "
              f"(seed {seed}) for comparison: {paths['random']}.")
        summary.update(kept=len(kept), kept_path=paths["kept"], random_path=paths["random"])
    return summary
