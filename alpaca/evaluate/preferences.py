r"""Preference pairs for DPO from K sampled answers per instruction, judged by judge.py's judge.

    python inference.py --model_name_or_path output/alpaca --data_path instructions.json \
        --output_path samples.json --do_sample True --temperature 1.0 --num_samples 4
    python judge.py preferences --samples samples.json --output_dir prefs --judge_model gpt-4o-mini
    python train_dpo.py --model_name_or_path output/alpaca --data_path prefs/preferences.jsonl ...

The pairing rule is a round robin: every two distinct answers of an instruction, (i, j) with i < j, are judged
against each other with the judge's prompt, in both orders in swap mode (K(K-1) calls per instruction) or in one
order in logprobs mode (K(K-1)/2); identical answers are a tie without a call. A pair's preference for answer i (1 a
win, 0 a loss, 0.5 a tie or a disagreement between the two orders; P(i better) in logprobs mode) adds to i's wins,
its complement to j's. The best answer has the most wins (the earlier sample on a tie), the worst the fewest (the
later sample on a tie). An instruction becomes a preference pair only when the judge separated the two: the best
has more wins than the worst AND the judge preferred it in their own pair, so `chosen` is always an answer the judge
preferred to `rejected`. An instruction with a pair still unjudged after the retries is skipped this run (never
counted from part of its verdicts) and asked again on the next.

A sample may also be a conversation, as inference.py writes it for a conversation record: {"messages": [... ending
with the user turn the samples answer], "outputs": [K answers], ...}, alone or mixed with Alpaca records in one file.
The judge sees its earlier turns, then its last user turn as the instruction (prompts/judge.py), and the journal key
covers the whole conversation. Its pair is written as train_dpo.py reads a conversation: `messages` (no `prompt`:
train_dpo.py renders them with the chat template), `chosen`, `rejected` and the same other fields, without
`instruction` and `input`.

With `--best_of_k PATH` the same verdicts also give a baseline: the best answer of each instruction (the most wins,
the earlier sample on a tie, as for `chosen`; an instruction the judge did not separate gives its first sample) as an
answers file in inference.py's format, which judge.py judges against a reference as it would a model's (a
conversation's best answer is a {"messages", "output", "generator"} record, inference.py's format for an answered
conversation, which judge.py reads too); instructions with a pair still unjudged are left out and counted.

Every verdict goes to output_dir/judgments.jsonl (judge.py's journal: the cache, safe against a kill), so a re-run
makes no calls. Output: output_dir/preferences.jsonl, one line per separated instruction: `prompt` (the exact Alpaca
prompt training uses; `messages` for a conversation), `chosen`, `rejected`, `instruction`, `input` (not for a
conversation), `wins` (per sample), `chosen_index`, `rejected_index`, `judge_model`, `judge_mode`, and `provenance`
(alpaca/evaluate/provenance.py: the samples file's path, sha256, generators and decoding fields, the judge, its mode
and prompt template hash (and the conversation layout's, when there are conversations), the seed; the same on every
line, so each pair says where it came from; train_dpo.py reads prompt (or messages), chosen and rejected and ignores
the rest).
"""

import json
import os
import pathlib
from itertools import combinations

from alpaca import errors, files
from alpaca.evaluate import judge, provenance
from alpaca.llm.settings import dollars
from alpaca.prompts.alpaca import format_prompt
from alpaca.prompts.conversation import check_messages, is_conversation

OUTPUT_NAME = "preferences.jsonl"


def load_samples(path: str) -> list[dict]:
    """The records of an answers file written by `inference.py --num_samples K`: each with `outputs`, a list of at
    least two answer strings (K may differ between records), and either an instruction (and input) or `messages`, a
    conversation ending with the user turn the outputs answer. A record otherwise is a DataError naming it."""
    records = files.load_alpaca_records(path, require_output=False, conversations=True)
    for index, record in enumerate(records):
        outputs = record.get("outputs")
        where = f"{path}, record {index}"
        if is_conversation(record):
            check_sampled_conversation(record["messages"], where)
        if outputs is None:
            raise errors.DataError(f"{where}: field 'outputs' is missing; write the samples with inference.py "
                                "--do_sample True --num_samples K (K >= 2).")
        if not isinstance(outputs, list) or not all(isinstance(answer, str) for answer in outputs):
            raise errors.DataError(f"{where}: field 'outputs' must be a list of answer strings.")
        if len(outputs) < 2:
            raise errors.DataError(f"{where}: 'outputs' holds {len(outputs)} answer; a preference needs at least two "
                                "(inference.py --num_samples K, K >= 2).")
    return records


def check_sampled_conversation(messages: list[dict], where: str) -> None:
    """A conversation sample's messages must end with the user turn its outputs answer (DataError naming `where`)."""
    check_messages(messages, where, last="user", why_last=(
        "the samples in 'outputs' answer a user turn, so the messages must end with it: drop the trailing answer "
        "(inference.py answers the last user turn and leaves such an answer in the record)."))


def round_robin(record: dict) -> list[dict]:
    """The pairs of one record's answers, (i, j) for i < j, as judge.py's pairs: answer i plays the 'model', j the
    'reference'; a conversation's pairs carry its `messages`, an instruction's its `instruction` and `input`."""
    shown = {"messages": record["messages"]} if is_conversation(record) else \
        {"instruction": record["instruction"], "input": record["input"]}
    return [{**shown, "i": i, "j": j, "model_output": record["outputs"][i], "reference_output": record["outputs"][j]}
            for i, j in combinations(range(len(record["outputs"])), 2)]


def wins_of(k: int, preference_of: dict) -> list[float]:
    """Each of k answers' wins in the round robin: a pair's preference for answer i adds to i, its complement to j.
    `preference_of` maps each pair's (i, j) to its preference for answer i, all judged."""
    wins = [0.0] * k
    for (i, j), p in preference_of.items():
        wins[i] += p
        wins[j] += 1 - p
    return wins


def best_of(wins: list[float]) -> int:
    """The best answer: the most wins, the earlier sample on a tie (the rule of `chosen`)."""
    return max(range(len(wins)), key=lambda k: (wins[k], -k))


def is_unjudged(pairs: list[dict], preference_of: dict) -> bool:
    return any(preference_of[(p["i"], p["j"])] is None for p in pairs)


def choose_pair(record: dict, pairs: list[dict], preference_of: dict) -> tuple[str, dict | None]:
    """("written", the preference record), or ("unjudged" / "not_separated", None), by the module's rule.

    `preference_of` maps each pair's (i, j) to its preference for answer i (None: unjudged)."""
    if is_unjudged(pairs, preference_of):
        return "unjudged", None
    answers = record["outputs"]
    wins = wins_of(len(answers), preference_of)
    best = best_of(wins)
    worst = min(range(len(answers)), key=lambda k: (wins[k], -k))
    head_to_head = preference_of[(best, worst)] if best < worst else 1 - preference_of[(worst, best)]
    if wins[best] <= wins[worst] or head_to_head <= 0.5:
        return "not_separated", None
    fields = {"wins": [round(w, 6) for w in wins], "chosen_index": best, "rejected_index": worst}
    if is_conversation(record):  # train_dpo.py renders the messages with the chat template
        return "written", {"messages": record["messages"], "chosen": answers[best], "rejected": answers[worst],
                           **fields}
    return "written", {"prompt": format_prompt(record["instruction"], record["input"]),
                       "chosen": answers[best], "rejected": answers[worst],
                       "instruction": record["instruction"], "input": record["input"], **fields}


def best_of_k_name(records: list[dict], samples: str) -> str:
    """The `generator` of the best-of-K answers: the samples' generator (else the file's name) + "-best-of-K" (K,
    or "k" when records hold different numbers of samples), so judge.py never takes it for the model sampled."""
    names = {record.get("generator") for record in records}
    name = names.pop() if len(names) == 1 else None
    base = name if isinstance(name, str) and name.strip() else pathlib.Path(samples).stem
    sizes = {len(record["outputs"]) for record in records}
    return f"{base}-best-of-{sizes.pop() if len(sizes) == 1 else 'k'}"


def best_answer_record(record: dict, best: int, generator: str) -> dict:
    """A record of inference.py's answers format (the instruction's fields or the conversation's `messages`,
    `output`, `generator`) holding the best of its samples; `outputs` is left out, so that the file reads as one
    model's answers."""
    fields = {key: value for key, value in record.items() if key not in ("outputs", "output", "generator")}
    return {**fields, "output": record["outputs"][best], "generator": generator}


def check_best_of_k(best_of_k: str, output_dir: str, samples: str) -> None:
    """Refuse, before any call, a --best_of_k path that would replace an input or another output of the run."""
    taken = {os.path.abspath(os.path.join(output_dir, name)): name for name in (OUTPUT_NAME, judge.JOURNAL_NAME)}
    if os.path.abspath(best_of_k) in taken:
        raise errors.UsageError(f"--best_of_k {best_of_k} is the run's {taken[os.path.abspath(best_of_k)]}; give the "
                                "best answers a file of their own (e.g. best_of_k.json).")
    files.check_output_file(best_of_k, inputs=[samples], flag="--best_of_k")


def preferences(samples: str, output_dir: str, judge_model: str, api_base: str | None = None,
                api_type: str = "chat", judge_mode: str = "swap", max_concurrency: int = 4, seed: int = 42,
                verdict_retries: int = 2, max_retries: int = 8, max_tokens: int | None = None,
                temperature: float = 0.0,
                requests_per_minute: float | None = None, tokens_per_minute: float | None = None,
                request_timeout: float = 600.0, price_per_1k_prompt_tokens: float | None = None,
                price_per_1k_completion_tokens: float | None = None, best_of_k: str | None = None) -> dict:
    """Judge each instruction's sampled answers against each other (a round robin) and write the best and worst
    as a preference pair for train_dpo.py: output_dir/preferences.jsonl.

    Arguments:
        samples: answers file from `inference.py --do_sample True --num_samples K` (records with `outputs`): Alpaca
            records, conversations ({"messages": [... ending with a user turn], "outputs"}), or both.
        output_dir: preferences.jsonl and the judgment journal (judgments.jsonl); re-runs reuse it.
        judge_model: the judge: a model name at the endpoint, or a local model directory with --api_type local.
        judge_mode: "swap" (both orders of every pair) or "logprobs" (one order, P(A) vs P(B)).
        seed: in logprobs mode, which answer of each instruction's pairs is shown first.
        verdict_retries: times a reply without a verdict is asked again; then the pair, and its instruction, is
            unjudged this run.
        max_tokens: tokens the judge may write (default 512 in swap mode, 3 in logprobs mode).
        temperature: the judge's sampling temperature on the first attempt.
        price_per_1k_prompt_tokens, price_per_1k_completion_tokens: dollars, to report the judging cost.
        best_of_k: also write here, from the same verdicts (no extra judge call), the best answer of each instruction
            (the most wins; the earlier sample on a tie, as for `chosen`) as an answers file in inference.py's format,
            named "<generator>-best-of-K": a baseline for DPO that judge.py judges against a reference directly.
            Instructions with a pair still unjudged are left out (and counted).
    Returns counts: instructions, written, not_separated, unjudged, judge_calls (and best_of_k, the best answers
    written, with --best_of_k).
    """
    judge_model = judge.check_judge_settings(judge_model, api_type, api_base, judge_mode, max_concurrency,
                                             verdict_retries, max_tokens)
    records = load_samples(samples)
    files.check_output_file(os.path.join(output_dir, OUTPUT_NAME), inputs=[samples], flag="the output")
    if best_of_k is not None:
        check_best_of_k(str(best_of_k), output_dir, samples)
    conversations = sum(map(is_conversation, records))
    run_provenance = provenance.of_run(judge_model, judge_mode, seed, conversations=conversations > 0,
                                       samples=provenance.input_file(samples, records))
    with files.claimed_directory(output_dir, judge.LOCK_NAME, "judge"):  # the judge's lock: one journal
        journal_path = os.path.join(output_dir, judge.JOURNAL_NAME)
        judgments = judge.load_judgments(journal_path)
        pairs_of = [round_robin(record) for record in records]
        jobs, to_send = judge.jobs_to_ask([pair for pairs in pairs_of for pair in pairs], judgments, judge_model,
                                          judge_mode, seed)
        needed = sum(map(len, jobs.values()))
        sizes = sorted({len(record["outputs"]) for record in records})
        print(f"Preferences from {len(records)} instructions"
              + (f" ({conversations} of them a conversation's last turn)" if conversations else "")
              + f" x {'/'.join(map(str, sizes))} samples, judged by "
              f"{judge_model} ({judge_mode} mode) in a round robin: {needed} judgments needed, "
              f"{needed - len(to_send)} found in {journal_path}, {len(to_send)} judge calls to make.")
        spent = {"prompt_tokens": 0, "completion_tokens": 0}
        if to_send:
            judge.ask_judge(list(to_send.values()), judgments, journal_path, spent, judge_model=judge_model,
                            api_type=api_type, api_base=api_base, judge_mode=judge_mode,
                            max_concurrency=max_concurrency, verdict_retries=verdict_retries,
                            max_retries=max_retries, max_tokens=max_tokens, temperature=temperature,
                            requests_per_minute=requests_per_minute, tokens_per_minute=tokens_per_minute,
                            request_timeout=request_timeout)

        counts = {"instructions": len(records), "written": 0, "not_separated": 0, "unjudged": 0,
                  "judge_calls": len(to_send)}
        lines, best_answers = [], []
        best_name = best_of_k_name(records, samples)
        for record, pairs in zip(records, pairs_of, strict=True):
            preference_of = {(pair["i"], pair["j"]): judge.judged_preference(pair, jobs[id(pair)], judgments,
                                                                             judge_mode) for pair in pairs}
            outcome, line = choose_pair(record, pairs, preference_of)
            counts[outcome] += 1
            if not is_unjudged(pairs, preference_of):
                best = best_of(wins_of(len(record["outputs"]), preference_of))
                best_answers.append(best_answer_record(record, best, best_name))
            if line is not None:
                lines.append(json.dumps({**line, "judge_model": judge_model, "judge_mode": judge_mode,
                                         "provenance": run_provenance}, ensure_ascii=False))
        output_path = os.path.join(output_dir, OUTPUT_NAME)
        files.write_atomically(output_path, "".join(line + "\n" for line in lines))
        print(f"Wrote {counts['written']} preference pairs to {output_path}; skipped {counts['not_separated']} "
              f"instructions whose best and worst answers the judge did not separate"
              + (f" and {counts['unjudged']} with pairs still unjudged after {verdict_retries} retries (not counted; a "
                 "re-run asks again)" if counts["unjudged"] else "") + ".")
        if best_of_k is not None:
            files.write_json(best_of_k, best_answers, inputs=[samples])
            counts["best_of_k"] = len(best_answers)
            print(f"Wrote the best of each instruction's samples (the most wins; {best_name}) for "
                  f"{len(best_answers)} of {len(records)} instructions to {best_of_k}"
                  + (f"; left out {counts['unjudged']} with pairs still unjudged (a re-run asks again; judge.py needs "
                     "the file to answer every instruction of the reference)" if counts["unjudged"] else "") + ".")
        priced = price_per_1k_prompt_tokens is not None or price_per_1k_completion_tokens is not None
        cost = dollars(spent, price_per_1k_prompt_tokens, price_per_1k_completion_tokens)
        print(f"Judging cost of this run: {len(to_send)} judgments asked, {spent['prompt_tokens']:,} prompt + "
              f"{spent['completion_tokens']:,} completion tokens" + (f", ${cost:.4f}" if priced else "") + ".")
        return counts
