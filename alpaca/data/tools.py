"""Look at, clean, rate and convert instruction data in the Alpaca format.

    python data_tools.py stats regen.json alpaca_data.json --output_dir stats/
    python data_tools.py clean regen.json --output regen_clean.json [--exclude eval_instructions.jsonl]
    python data_tools.py contamination regen.json --eval eval_instructions.jsonl
    python data_tools.py rate regen.json --judge_model gpt-4o-mini --output rated.json --min_score 4.5
    python data_tools.py convert regen.json --to release|messages|jsonl --output out.json

Every input (a JSON list or JSONL of {"instruction", "input", "output"}, extra fields kept, or, for stats, clean,
contamination and convert, of conversations {"messages": [...]} too) is checked before any work starts; an input
"<noinput>" counts as no input, as in the generator. Outputs are written to a temporary file and renamed into
place, so a failure never leaves half a file. `python data_tools.py COMMAND --help` lists a
command's flags. The generator's filters, `--clean` filters and the ROUGE-L index are the generator's own
(`generate_instruction.filter_drop_reason`, `clean_drop_reason`, `rouge_l.RougeLIndex`). The commands live here;
their helpers in alpaca/data/: stats.py (the statistics), verb_objects.py (spaCy's verbs and objects), plots.py
(the pictures), conversations.py (conversation records) and rating.py (the LLM rater, on the one annotate loop).
"""

import json
import os
import sys
from collections import Counter

import numpy as np
from tqdm import tqdm

from alpaca import cli, errors, files
from alpaca.data import conversations as data_conversations
from alpaca.data.records import (  # noqa: F401  (the commands' record helpers, importable from here too)
    CONTROL_CHARACTERS,
    FIELDS,
    NOINPUT_MARKER,
    check_output_path,
    has_input,
    load_inputs,
    records_text,
    task_of,
    write_records,
)
from alpaca.errors import DataError, MissingPathError, UsageError
from alpaca.generate.language import check_language
from alpaca.generate.rouge_l import RougeLIndex
from alpaca.generate.self_instruct import (
    SIMILARITY_THRESHOLD,
    clean_drop_reason,
    filter_drop_reason,
    language_drop_reason,
)
from alpaca.llm.settings import ENDPOINT_FLAGS
from alpaca.prompts.conversation import check_messages, is_conversation, system_message, turns


def format_counts(counts: Counter) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in counts.most_common() if n) or "none"


# ----------------------------------------------------------------------------- stats


def stats(*data_paths: str, output_dir: str = "data_stats", tokenizer: str | None = None,
          spacy_model: str = "en_core_web_sm", num_verbs: int = 20, num_objects: int = 4, num_examples: int = 5,
          num_cpus: int | None = None, language: str = "en", language_mix: bool = True) -> dict:
    """Statistics of one or more data sets, side by side: stats.json, stats.md and PNG pictures in --output_dir.

    Per data set: records, unique instructions, share with an input; mean, percentiles and max of the words
    (and tokens) of instructions, inputs and outputs; near-duplicate instruction pairs (ROUGE-L F1 > 0.7 against
    any earlier one, exact rouge_score values) with examples; what the generator's filters and its --clean
    filters would drop; the top root verbs and their direct objects (spaCy), drawn as the Alpaca figure's
    two-level pie. Also a histogram of lengths for all data sets together.

    Arguments:
        DATA_PATHS: the data files (JSON list or JSONL of Alpaca records or conversations; a conversation counts once
            per user turn, and stats.json adds its turn counts under "turns"), e.g. regen.json alpaca_data.json.
        output_dir: where stats.json, stats.md, lengths.png and LABEL_verbs.png are written (created).
        tokenizer: a local Hugging Face tokenizer (or model) directory, to count tokens as well as words.
        spacy_model: the spaCy English pipeline for the verbs (`python -m spacy download en_core_web_sm`); without
            it every other statistic is still computed.
        num_verbs, num_objects: verbs in the inner ring and objects per verb in the outer ring (20 and 4, as the
            Alpaca figure).
        num_examples: near-duplicate pairs shown per data set.
        num_cpus: threads for ROUGE-L scoring (default: all cores).
        language: ISO 639-1 code of the data's language: the generator's filters and the ROUGE-L units of that
            language (characters for zh, ja, th), as `generate_instruction.py --language` applies them.
        language_mix: report the languages of the instructions (lingua; its first Latin-script text loads ~9 s
            of models).
    """
    from alpaca.data import plots as data_plots
    from alpaca.data import stats as data_stats
    from alpaca.data import verb_objects

    paths = list(data_paths)
    language = check_language(language)
    datasets = load_inputs(paths, conversations=True)
    loaded_tokenizer = data_stats.load_tokenizer(tokenizer) if tokenizer else None
    nlp, verbs_note = verb_objects.load_pipeline(spacy_model)
    if verbs_note:  # on stderr: stdout is the report (`stats ... > report.md`), and the report says it too
        print(f"note: {verbs_note}", file=sys.stderr)
    labels = data_stats.unique_labels(paths)
    all_stats, lengths = {}, {}
    for label, path, records in zip(labels, paths, datasets, strict=True):
        records, turn_stats = data_conversations.turn_records(records, language)  # a conversation: one per turn
        all_stats[label], lengths[label] = data_stats.file_stats(records, path, loaded_tokenizer, nlp, num_examples,
                                                                 num_cpus, num_verbs, num_objects, language,
                                                                 language_mix)
        all_stats[label]["turns"] = turn_stats
    os.makedirs(output_dir, exist_ok=True)
    pictures = ["lengths.png"]
    data_plots.length_histograms({label: lengths[label]["words"] for label in labels},
                                 os.path.join(output_dir, "lengths.png"))
    if tokenizer:
        pictures.append("token_lengths.png")
        data_plots.length_histograms({label: lengths[label]["tokens"] for label in labels},
                                     os.path.join(output_dir, "token_lengths.png"), unit="tokens")
    for label, s in all_stats.items():
        if s["verbs"]:
            pictures.append(f"{label}_verbs.png")
            data_plots.verb_sunburst(s["verbs"]["top"], os.path.join(output_dir, pictures[-1]),
                                     f"{label}: top {num_verbs} root verbs and their top {num_objects} objects")
    report = data_stats.markdown_report(all_stats, pictures, verbs_note)
    files.write_atomically(os.path.join(output_dir, "stats.json"),
                          json.dumps({"data_sets": all_stats, "verbs_note": verbs_note}, indent=2,
                                     ensure_ascii=False) + "\n")
    files.write_atomically(os.path.join(output_dir, "stats.md"), report)
    print(report.split("\n## Top root verbs")[0].strip())
    for label, s in all_stats.items():
        if s["turns"]["conversations"]:
            print(f"{label}: {s['turns']['records']:,} records ({s['turns']['conversations']:,} conversations), "
                  f"{s['turns']['user_turns']:,} user turns; records by turns: " + ", ".join(
                      f"{n}: {count:,}" for n, count in s["turns"]["records_by_turns"].items()))
    for label, s in all_stats.items():
        if s["verbs"]:
            print(f"{label}, top root verbs (objects): " + "; ".join(
                f"{v['verb']} {v['count']} ({', '.join(o for o, _ in v['objects'])})" for v in s["verbs"]["top"]))
    print(f"Wrote stats.json, stats.md and {', '.join(pictures)} to {output_dir}")
    return all_stats


# ----------------------------------------------------------------------------- clean and contamination


def normalised(record: dict) -> dict:
    """The record with control characters (except tab and newline) removed from its three fields and a
    "<noinput>" input written as "" (the generator's reading of it). Other fields are kept as they are."""
    fixed = {**record}
    for field in FIELDS:
        if isinstance(record.get(field), str):
            fixed[field] = CONTROL_CHARACTERS.sub("", record[field])
    if fixed["input"].strip().lower() == NOINPUT_MARKER:
        fixed["input"] = ""
    return fixed


def normalised_with_repairs(original: dict) -> tuple[dict, Counter]:
    """(the record `normalised`, a conversation's every message too; what was repaired: control_characters and
    noinput_marker, 1 or 0 each)."""
    if is_conversation(original):
        messages = original["messages"]
        return ({**original, "messages": data_conversations.normalised_messages(messages)},
                data_conversations.repairs(messages))
    control = any(CONTROL_CHARACTERS.search(original[field] or "") for field in FIELDS
                  if isinstance(original.get(field), str))
    return normalised(original), Counter(control_characters=int(control),
                                         noinput_marker=int(original["input"].strip().lower() == NOINPUT_MARKER))


def eval_index(eval_path: str, num_cpus: int | None, language: str = "en") -> tuple[list[str], RougeLIndex]:
    """The instructions of an evaluation file (outputs optional) and a ROUGE-L index over them (in the units of
    `language`)."""
    eval_records = files.load_alpaca_records(eval_path, require_output=False)
    instructions = [r["instruction"] for r in eval_records]
    return instructions, RougeLIndex(instructions, num_threads=num_cpus, language=language)


def nearest_above(index: RougeLIndex, texts: list[str], instruction: str,
                  threshold: float) -> tuple[str, float] | None:
    """(the text of `index` (`texts`, in the index's order) closest to `instruction` by ROUGE-L F1, that F1) when
    the F1 is above `threshold`, else None. The index must hold at least one text."""
    scores = index.scores(instruction)
    best = int(np.argmax(scores))
    return (texts[best], float(scores[best])) if scores[best] > threshold else None


def turn_drop_reason(task: dict, language: str, generator_filters: bool, clean_filters: bool,
                     excluded: tuple[list[str], RougeLIndex] | None, threshold: float) -> tuple[str | None, dict]:
    """(the first reason `clean` drops one user turn's task for, or None; its details): the generator's filters, its
    --clean filters, then contamination against `excluded` (the evaluation instructions and their index)."""
    reason = None
    if generator_filters:
        reason = filter_drop_reason(task["instruction"], language)
        if reason is None and language != "en":
            reason = language_drop_reason(task, language)
    if reason is None and clean_filters:
        reason = clean_drop_reason(task)
    if reason is None and excluded is not None and len(excluded[1]):
        near = nearest_above(excluded[1], excluded[0], task["instruction"], threshold)
        if near:
            return "contamination", {"similar_to": near[0], "rouge_l": near[1]}
    return reason, {}


def clean(data_path: str, output: str, exclude: str | None = None, generator_filters: bool = True,
          clean_filters: bool = True, similarity_threshold: float = SIMILARITY_THRESHOLD,
          num_cpus: int | None = None, language: str = "en") -> dict:
    """Clean a data set: drop what the generator would have dropped, and duplicates, and write the rest.

    In file order, each record (its control characters other than tab and newline removed, a "<noinput>" input
    written as "") is dropped, with the first reason that applies:
      - the generator's filters (length, blacklist, write_a_program, punctuation, non_ascii; with --language
        other than en that language's filters and the language check: first_character, language);
      - the generator's --clean filters (merged_tasks, empty_output, noinput_variant, url_input);
      - contamination: ROUGE-L F1 above the threshold against an instruction of --exclude;
      - duplicate: the same instruction as an earlier kept record;
      - similarity: ROUGE-L F1 above the threshold against an earlier kept instruction (as the generator does).
    A conversation ({"messages": [...]}) is checked turn by turn: the first three apply to every user turn, and the
    first turn that fails drops the whole conversation ("drop_turn" says which, counting from 1); duplicate and
    similarity compare its first instruction only, as the generator's novelty filter does.
    Cleaning a cleaned file drops nothing. Writes --output (a JSON list, or JSONL when it ends in .jsonl),
    OUTPUT.dropped.jsonl (each dropped record with "drop_reason", "record_index" and, for similarity and
    contamination, "similar_to" and "rouge_l"), and prints the counts by reason.

    Arguments:
        DATA_PATH: the data file (JSON list or JSONL of Alpaca records or conversations, or both).
        output: where the kept records go (not the input file).
        exclude: an evaluation file (JSON list or JSONL with "instruction"); its near-duplicates are dropped.
        generator_filters: apply the generator's per-instruction filters (True/False).
        clean_filters: apply the generator's --clean filters (True/False).
        similarity_threshold: ROUGE-L F1 above which an instruction is a near-duplicate (0.7, as the generator);
            1.0 keeps everything but exact duplicates.
        num_cpus: threads for ROUGE-L scoring (default: all cores).
        language: ISO 639-1 code of the language the data must be in (default en, the original's filters); the
            filters, the language check and the ROUGE-L units of `generate_instruction.py --language`.
    """
    language = check_language(language)
    if not 0 <= similarity_threshold <= 1:
        raise UsageError(f"--similarity_threshold must be between 0 and 1, not {similarity_threshold}.")
    (records,) = load_inputs([data_path], conversations=True)
    inputs = [data_path] + ([exclude] if exclude else [])
    check_output_path(output, inputs, also=(f"{output}.dropped.jsonl",))
    excluded = eval_index(exclude, num_cpus, language) if exclude else None
    kept_index = RougeLIndex(num_threads=num_cpus, language=language)
    kept, kept_instructions, dropped, counts = [], [], [], Counter()
    turn_counts = Counter()  # (reason, user turn) of each dropped conversation
    seen = set()
    fixed = Counter()  # repairs made to kept and dropped records alike
    for record_index, original in enumerate(tqdm(records, desc="cleaning", unit="record")):
        record, repairs = normalised_with_repairs(original)
        fixed.update(repairs)
        tasks = data_conversations.user_turn_tasks(record)
        reason, detail, turn = None, {}, 1
        for number, task in enumerate(tasks, start=1):  # the first user turn that fails drops the record
            reason, detail = turn_drop_reason(task, language, generator_filters, clean_filters, excluded,
                                              similarity_threshold)
            if reason:
                turn = number
                break
        instruction = tasks[0]["instruction"]  # the novelty filter's instruction: the first turn's
        if reason is None and instruction in seen:
            reason, turn = "duplicate", 1
        near = nearest_above(kept_index, kept_instructions, instruction, similarity_threshold) \
            if reason is None and len(kept_index) else None
        if near:
            reason, turn, detail = "similarity", 1, {"similar_to": near[0], "rouge_l": near[1]}
        if reason:
            counts[reason] += 1
            if is_conversation(record):
                turn_counts[reason, turn] += 1
                detail = {**detail, "drop_turn": turn}
            dropped.append({**record, "drop_reason": reason, "record_index": record_index, **detail})
            continue
        kept.append(record)
        kept_instructions.append(instruction)
        seen.add(instruction)
        kept_index.add(instruction)
    write_records(output, kept, inputs)
    files.write_atomically(f"{output}.dropped.jsonl", records_text(dropped, ".jsonl"), inputs)
    by_turn = format_turn_counts(counts, turn_counts)
    print(f"Kept {len(kept):,} of {len(records):,} records in {output}; dropped {len(dropped):,}: "
          f"{format_counts(counts)} (listed in {output}.dropped.jsonl). "
          + (f"Conversations dropped, by the user turn that failed: {by_turn}. " if by_turn else "")
          + f"Fixed in kept and dropped records: {format_counts(fixed)}.")
    result = {"kept": len(kept), "dropped": dict(counts), "fixed": {k: v for k, v in fixed.items() if v}}
    if any(map(is_conversation, records)):  # {reason: {user turn: conversations}}
        result["dropped_conversations_by_turn"] = by_reason = {}
        for (reason, turn), n in sorted(turn_counts.items()):
            by_reason.setdefault(reason, {})[str(turn)] = n
    return result


def format_turn_counts(counts: Counter, turn_counts: Counter) -> str:
    """The dropped conversations by reason (in `counts`' order) and failing user turn: "length at turn 2: 3, at
    turn 3: 1; duplicate at turn 1: 1", or "" when none."""
    parts = []
    for reason, _ in counts.most_common():
        at = [f"at turn {turn}: {n:,}" for (r, turn), n in sorted(turn_counts.items()) if r == reason]
        if at:
            parts.append(f"{reason} " + ", ".join(at))
    return "; ".join(parts)


def contamination(train_path: str, eval: str, output: str | None = None, threshold: float = SIMILARITY_THRESHOLD,
                  num_cpus: int | None = None, language: str = "en") -> list[dict]:
    """Training instructions that are near-duplicates of evaluation instructions (ROUGE-L F1 > --threshold).

    Every user turn of a conversation is a training instruction: each one near an evaluation instruction is listed,
    with its record and turn. Prints each one with its closest evaluation instruction and the score, and writes
    them to --output (JSONL) when given. `clean DATA --exclude EVAL` drops them (a conversation as a whole).

    Arguments:
        TRAIN_PATH: the training data (JSON list or JSONL of Alpaca records or conversations, or both).
        eval: the evaluation instructions (JSON list or JSONL with "instruction"; "output" optional).
        output: a JSONL file for the list ({"record_index", "instruction", "eval_instruction", "rouge_l"}; a
            conversation's also "turn", its user turn counting from 1, after "record_index").
        threshold: ROUGE-L F1 above which a training instruction counts as contaminated.
        num_cpus: threads for ROUGE-L scoring (default: all cores).
        language: ISO 639-1 code: ROUGE-L over that language's units, as the generator's filter (default en).
    """
    language = check_language(language)
    (records,) = load_inputs([train_path], conversations=True)
    eval_instructions, index = eval_index(eval, num_cpus, language)
    if output:
        check_output_path(output, [train_path, eval])
    found, n_instructions = [], 0
    for record_index, record in enumerate(tqdm(records, desc="contamination", unit="record", leave=False)):
        instructions = [task["instruction"] for task in data_conversations.user_turn_tasks(record)]
        n_instructions += len(instructions)
        for turn, instruction in enumerate(instructions, start=1):
            near = nearest_above(index, eval_instructions, instruction, threshold)
            if near:
                where = {"record_index": record_index, "turn": turn} if is_conversation(record) else \
                    {"record_index": record_index}
                found.append({**where, "instruction": instruction, "eval_instruction": near[0], "rouge_l": near[1]})
    for item in found:
        place = f"record {item['record_index']}" + (f", turn {item['turn']}" if "turn" in item else "")
        print(f"{place} (ROUGE-L {item['rouge_l']:.3f}): {item['instruction']!r} ~ {item['eval_instruction']!r}")
    conversations = sum(map(is_conversation, records))
    counted = f" (every user turn of the {conversations:,} conversations counts)" if conversations else ""
    print(f"{len(found):,} of {n_instructions:,} training instructions{counted} have ROUGE-L F1 > {threshold} "
          f"against one of the {len(eval_instructions):,} evaluation instructions in {eval}.")
    if output:
        files.write_atomically(output, records_text(found, ".jsonl"), [train_path, eval])
        print(f"Listed in {output}")
    return found


# ----------------------------------------------------------------------------- convert

CONVERSIONS = ("release", "messages", "jsonl")


def to_messages(record: dict) -> dict:
    """An Alpaca record as a chat example, with the mapping of the checkpoint's chat template: one user message
    holding the instruction (a plain string), or, when there is an input, two text parts (instruction, input);
    then the assistant message with the output."""
    if has_input(record):
        content = [{"type": "text", "text": record["instruction"]}, {"type": "text", "text": record["input"]}]
    else:
        content = record["instruction"]
    return {"messages": [{"role": "user", "content": content}, {"role": "assistant", "content": record["output"]}]}


def from_messages(example: object, where: str) -> dict:
    """The Alpaca record of a one-turn conversation without a system message (`to_messages`'s inverse; an input
    as a second text part or a message with role "input"); DataError otherwise: longer conversations have no Alpaca
    form."""
    messages = example.get("messages") if isinstance(example, dict) else None
    check_messages(messages, where)
    user_turns, system = turns(messages), system_message(messages)
    if len(user_turns) != 1 or system is not None:
        raise DataError(f"{where}: expected \"messages\" with one user turn, its answer and no system message to "
                        f"write an Alpaca record; this conversation has {len(user_turns)} user turns"
                        f"{' and a system message' if system is not None else ''}: keep it as messages (--to "
                        "messages), which train.py reads as they are.")
    return {field: user_turns[0][field] for field in FIELDS}


def load_any_format(path: str) -> list[dict]:
    """The records of an Alpaca file, a chat `messages` JSONL or a mix of both: Alpaca records checked and
    normalised, conversations checked and kept as they are."""
    return files.load_alpaca_records(path, conversations=True)


def convert(data_path: str, to: str, output: str) -> int:
    """Convert a data set between the generator's, the release and the chat formats.

    --to release: {"instruction", "input", "output"} only (regen.json's most_similar_instructions and
        avg_similarity_score dropped; a "<noinput>" input written as ""), a JSON list like alpaca_data.json
        (JSONL when --output ends in .jsonl).
    --to messages: chat JSONL for TRL and hosted fine-tuning APIs, one {"messages": [user, assistant]} per line;
        the user message is the instruction as a string, or [{"type": "text", "text": instruction},
        {"type": "text", "text": input}] when there is an input; the assistant message is the output. This is the
        mapping of the checkpoint's chat template.
    --to jsonl: the same records, every field kept, one per line.
    A messages file as DATA_PATH is read back into Alpaca records (then --to release or jsonl); conversations of
    several turns (generate_instruction.py --num_turns) stay conversations with --to messages and have no Alpaca
    form otherwise. An Alpaca file, a messages file and a mix of both are all read.

    Arguments:
        DATA_PATH: a JSON list or JSONL of Alpaca records, or a messages JSONL.
        to: release, messages or jsonl.
        output: the file to write (not the input file).
    """
    if to not in CONVERSIONS:
        raise UsageError(f"--to must be one of {', '.join(CONVERSIONS)}, not {to!r}.")
    if not os.path.isfile(data_path):
        raise MissingPathError(f"Data file '{data_path}' does not exist or is not a file.")
    records = load_any_format(data_path)
    check_output_path(output, [data_path])
    if to != "messages":  # a one-turn conversation becomes its Alpaca record; a longer one has no such form
        records = [from_messages(r, f"{data_path}, record {i}") if is_conversation(r) else r
                   for i, r in enumerate(records)]
    if to == "release":
        converted = [{field: task_of(r)[field] for field in FIELDS} for r in records]
        write_records(output, converted, [data_path])
    elif to == "messages":
        files.write_atomically(output, records_text([r if is_conversation(r) else to_messages(r) for r in records],
                                                    ".jsonl"), [data_path])
    else:
        files.write_atomically(output, records_text(records, ".jsonl"), [data_path])
    print(f"Wrote {len(records):,} records to {output} ({to}).")
    return len(records)


# ----------------------------------------------------------------------------- rate


def rate(data_path: str, output: str, judge_model: str | None = None, api_type: str = "chat",
         api_base: str | None = None, min_score: float | None = None, seed: int = 42, max_concurrency: int = 4,
         requests_per_minute: float | None = None, tokens_per_minute: float | None = None, max_retries: int = 8,
         retry_base_delay: float = 1.0, retry_max_delay: float = 60.0, request_timeout: float = 600.0,
         max_tokens: int = 512, temperature: float = 0.0, score_retries: int = 2, cache: bool = True,
         price_per_1k_prompt_tokens: float | None = None, price_per_1k_completion_tokens: float | None = None,
         max_response_bytes: int = 16 * 2**20) -> dict:
    """Rate each example's answer 0-5 for accuracy and helpfulness with an LLM judge; optionally keep the best.

    The judge sees our prompt (rating.RATING_PROMPT: the instruction, input and output, then "end your reply
    with a last line `Score: N`") and must end its reply with a score from 0 to 5 (halves allowed). A reply
    without one is asked again (--score_retries times, with a reminder); after that the record stays unrated
    (score null), never given a default score. Every reply is appended to OUTPUT.journal.jsonl as it arrives,
    so a killed run loses nothing and re-running the same command resumes (rated records cost no call).
    Writes --output (the records with a "score" field) and OUTPUT.scores.png (a histogram).

    Arguments:
        DATA_PATH: the data file (JSON list or JSONL of Alpaca records).
        output: the rated records (JSON list, or JSONL when it ends in .jsonl).
        judge_model: the judge (e.g. gpt-4o-mini); a directory with --api_type local.
        min_score: also write NAME.min_score_X.json (the records scoring at least X; NAME.json is --output) and,
            beside it, NAME.random_N.json: N records drawn at random (with --seed) from the whole file, N the
            number kept, so that the two can be trained and judged against each other.
        seed: seed of that random subset.
        max_tokens, temperature: the judge's decoding settings.
        score_retries: times a reply without a parseable score is asked again.
        cache: keep raw responses in OUTPUT.responses/ (a re-run replays them).
        price_per_1k_prompt_tokens, price_per_1k_completion_tokens: dollars, for the cost line.
    """
    arguments = dict(locals())
    from alpaca.data import rating

    return rating.rate_records(**arguments)


def cache(cache_dir: str, clear: bool = False) -> None:
    """Show the size of a response cache (the generator's OUTPUT_DIR/responses, inference's OUTPUT.cache, rate's
    OUTPUT.responses), or delete it with --clear. A run that finds no cache asks the endpoint again.

    Arguments:
        CACHE_DIR: the cache directory (it holds responses.sqlite3).
        clear: delete the cache (the store, its log, and one-file-per-response entries of earlier versions).
    """
    from alpaca.llm import client as llm_client

    if not os.path.isdir(cache_dir):
        raise errors.MissingPathError(f"There is no cache directory {cache_dir}.")
    if clear:
        deleted = llm_client.clear_cache(cache_dir)
        print(f"deleted {deleted} cache file(s) in {cache_dir}")
        return
    store = llm_client.ResponseCache(cache_dir)
    try:
        print(store.size_line())
    finally:
        store.close()


def entry_point() -> None:
    """The command line of `python data_tools.py`."""
    cli.report_errors(lambda: cli.run_commands({"stats": stats, "clean": clean, "rate": rate,
                                                "contamination": contamination, "convert": convert,
                                                "cache": cache}, flag_help=ENDPOINT_FLAGS),
                      "interrupted: re-run the same command (rate resumes from its journal).")
