"""The one annotate loop: ask an LLM one prompt per job, parse the reply, ask again when it does not parse, journal
every reply as it arrives, and on a re-run ask only what the journal lacks.

The judge and the preference stage (through alpaca.evaluate.judge.ask_judge) and the rater (alpaca.data.rating)
are each a prompt and a parser on top of it. Its rules, in one place:
- A job is a dict with a "key" that hashes everything defining its answer (the model, the prompt, the texts being
  judged; never an API key). The journal is therefore a cache keyed by content: a changed text is asked anew, a
  moved one is not.
- A run asks every job without an answer in the journal up to 1 + `retries` times; a retry may change the prompt
  (`prompt_of(job, attempt)`) and raise the temperature (`retry_temperature`). A job still without an answer stays
  unanswered this run (never given a default) and is asked again by the next run.
- Every reply, answer or not, is appended to the journal (files.append_journal: flushed at once, fsynced), so the
  journal accounts for every token paid; a kill loses only the requests in flight.
- A request's tag is its job's key and attempt, so the endpoint's response cache (when on) and a local model's
  sampling seed follow the content, not the job's place in the run.
"""

import dataclasses
import json
import time
from collections.abc import Callable
from contextlib import aclosing

from tqdm.auto import tqdm

from alpaca import files
from alpaca.llm.client import LLMEndpoint, OpenAIDecodingArguments, complete_in_order

COUNTS = ("requests", "cached", "unparsed", "prompt_tokens", "completion_tokens")


def has_key(entry: dict) -> str | None:
    """Why a journal line is not an entry of this loop (it needs a string 'key'), or None when it is."""
    if not isinstance(entry.get("key"), str):
        return f"not an answer of this run (it has no 'key'; {json.dumps(entry)[:60]!r})"
    return None


def read_answers(journal_path: str, is_answer: Callable[[dict], bool], writer: str,
                 problem: Callable[[dict], str | None] = has_key) -> dict[str, dict]:
    """{key: the last journaled entry that `is_answer`} from a journal read by the one journal rule
    (files.read_journal: a torn last line is cut off; any other damaged line is refused with its number and nothing is
    deleted). Replies that were no answer are skipped: their jobs are asked again."""
    return {entry["key"]: entry for entry in files.read_journal(journal_path, problem, writer=writer)
            if is_answer(entry)}


def journal_entry(job: dict, attempt: int, answer: dict | None, choice: dict, result: dict, context: dict) -> dict:
    """The journal line of one reply: the job's key, the attempt (0 = first ask this run), the parser's fields (none
    for a reply that was no answer), the reply text and the tokens it cost."""
    usage = {k: result["usage"][k] for k in ("prompt_tokens", "completion_tokens")}
    return {"key": job["key"], "attempt": attempt, **context, **(answer or {}), "reply": choice["text"],
            "usage": usage, "cached": result["cached"], "time": time.time()}


async def annotate(endpoint: LLMEndpoint, jobs: list[dict], journal_path: str, *,
                   prompt_of: Callable[[dict, int], str], parse: Callable[[dict], dict | None],
                   decoding_args: OpenAIDecodingArguments, retries: int, retry_temperature: float | None = None,
                   context: dict | None = None, answers: dict | None = None, unit: str = "answer",
                   desc: str = "asked") -> dict:
    """Ask each job until `parse(choice)` gives its answer (a dict of fields to journal), at most 1 + `retries`
    times, up to the endpoint's max_concurrency requests in flight; journal every reply as it arrives (see the
    module's rules). `context` adds fields to every journal line (e.g. the judge model); `answers`, when given, gets
    {key: journal entry} of each answer as it arrives.

    Returns counts ("requests", "cached" (replayed from the endpoint's cache), "unparsed" (replies that were no
    answer), "prompt_tokens", "completion_tokens": tokens of the requests actually sent) and "failed": {key: last
    reply} of the jobs still without an answer. An LLMError (an endpoint that cannot go on) propagates; every reply
    before it is in the journal."""
    answers = {} if answers is None else answers
    tally = dict.fromkeys(COUNTS, 0)
    failed: dict[str, str] = {}
    pending = list(jobs)
    progress = tqdm(total=len(jobs), unit=unit, desc=desc)
    try:
        for attempt in range(retries + 1):
            if not pending:
                break
            args = decoding_args if attempt == 0 or retry_temperature is None else dataclasses.replace(
                decoding_args, temperature=max(decoding_args.temperature, retry_temperature))
            results = complete_in_order(endpoint, lambda i, batch=pending, a=attempt: [prompt_of(batch[i], a)], args,
                                        0, len(pending) - 1,
                                        tag_of=lambda i, batch=pending, a=attempt: f"{batch[i]['key']} attempt {a}")
            still_pending = []
            async with aclosing(results) as stream:
                async for i, _, result in stream:
                    job, choice = pending[i], result["choices"][0]
                    answer = parse(choice)
                    entry = journal_entry(job, attempt, answer, choice, result, context or {})
                    files.append_journal(journal_path, entry)
                    count(tally, result, answer is None)
                    if answer is None:
                        still_pending.append(job)
                        failed[job["key"]] = choice["text"]
                    else:
                        answers[job["key"]] = entry
                        failed.pop(job["key"], None)
                    if answer is not None or attempt == retries:
                        progress.update(1)
            pending = still_pending
    finally:
        progress.close()
        files.sync_journal(journal_path)  # the lines since the last fsync, however the run ends
    return {**tally, "failed": failed}


def count(tally: dict, result: dict, unparsed: bool) -> None:
    """Add one reply to the run's counts; tokens only for a request actually sent (a replay cost nothing)."""
    tally["requests"] += 1
    tally["cached"] += result["cached"]
    tally["unparsed"] += unparsed
    if not result["cached"]:
        tally["prompt_tokens"] += result["usage"]["prompt_tokens"]
        tally["completion_tokens"] += result["usage"]["completion_tokens"]
