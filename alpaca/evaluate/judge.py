r"""Pairwise evaluation with an LLM judge: how often a judge prefers a model's answers to a reference model's.

    # answers from your model and from a reference model on the same instructions (see inference.py), then:
    python judge.py --model_outputs outputs/alpaca.json --reference_outputs outputs/reference.json \
        --output_dir judged --judge_model gpt-4o-mini

    # several models at once (space- or comma-separated), judged by a vLLM server, one call per pair
    python judge.py --model_outputs outputs/a.json outputs/b.json --reference_outputs outputs/reference.json \
        --output_dir judged --judge_model meta-llama/Llama-3.1-70B-Instruct --api_base http://localhost:8000/v1 \
        --judge_mode logprobs

Each model file is matched to the reference file on (instruction, input); a file that misses instructions or has
extra ones is an error. The judge sees the instruction, then the two answers between `<answer_a>`...`</answer_a>`
and `<answer_b>`...`</answer_b>`, and either ends its reply with `[[A]]`, `[[B]]` or `[[TIE]]` (`--judge_mode
swap`: both orders; agreement is a win or a loss, disagreement or a tie is a tie) or answers the single letter A or
B (`--judge_mode logprobs`: one order per instruction, drawn from `--seed`; the probabilities of A and B give a
soft preference). Identical answers are a tie without a call. A reply without a verdict is asked again
(`--verdict_retries`); a pair still without one is unjudged: reported, never counted, and asked again next run.

A record may also be a conversation answered by inference.py ({"messages": [... ending with the user turn answered],
"output", "generator"}), alone or mixed with Alpaca records: it is matched on its whole conversation up to that turn
(a trailing assistant turn is left aside), the judge sees its earlier turns, then its last user turn as the
instruction (prompts/judge.py), its journal key covers the conversation, and in logprobs mode its order is drawn
per conversation.

Every reply, with its verdict or without one, is appended to `output_dir/judgments.jsonl` as soon as it arrives
(the one annotate loop, alpaca/llm/annotate.py), keyed by judge model, mode and prompt (which holds both answers): a
re-run makes no calls for what was judged and gives the same results, a changed answer is judged anew, a killed run
loses nothing it judged. Outputs: `results.json` (win rate with a bootstrap 95% interval,
length-controlled win rate, counts, lengths, per category; paired differences between models; `provenance`: the
sha256 of every input file, the judge, its mode and prompt template hash, the seed), `annotations.jsonl`
(every judged order with the judge's raw reply; a conversation's lines carry `messages` instead of instruction and
input) and `win_rates.png`. The numbers and the picture are computed in
win_rates.py; `python judge.py human` (human_eval.py) collects blind verdicts from people on the same pairs;
`python judge.py preferences` (alpaca/evaluate/preferences.py) judges K sampled answers per instruction (or per
conversation, shown to the judge with its earlier turns) against each other and writes the preference pairs
train_dpo.py trains on.
"""

import asyncio
import hashlib
import json
import math
import os
import pathlib
import random

from alpaca import files
from alpaca.errors import DataError, UsageError, UserError
from alpaca.evaluate import provenance
from alpaca.evaluate.win_rates import (  # noqa: F401 - the metrics are judge.py's public interface too (human_eval.py uses them)
    DIFFERENCES_KEY,
    NOT_MODELS,
    PROVENANCE_KEY,
    compute_results,
    format_table,
    length_controlled_win_rate,
    model_names,
    paired_difference_ci,
    plot_win_rates,
    rounded,
)
from alpaca.llm import annotate
from alpaca.llm.client import (
    API_TYPES,
    DEFAULT_MAX_RESPONSE_BYTES,
    LLMEndpoint,
    LLMError,
    OpenAIDecodingArguments,
    check_settings,
)
from alpaca.llm.settings import dollars
from alpaca.prompts.conversation import is_conversation, prompt_messages, system_message, turns
from alpaca.prompts.judge import (  # noqa: F401  (judge.py's names; the prompt lives in prompts/judge.py)
    ENDINGS,
    JUDGE_PROMPT,
    PREFERENCE_FOR_A,
    VERDICT_PATTERN,
    conversation_judge_prompt,
    judge_prompt,
    neutralised,
    parse_verdict,
)

JUDGE_MODES = ("swap", "logprobs")
JOURNAL_NAME = "judgments.jsonl"
LOCK_NAME = ".judge.lock"  # two judges on one directory would pay every judgment twice
RETRY_TEMPERATURE = 0.7  # a reply without a verdict is asked again at least this hot: a greedy judge repeats itself

class JudgeError(UserError):
    """A judge or an endpoint that cannot give verdicts as asked; the message says what to do."""


def top_logprobs_of(logprobs: dict | None) -> list[dict[str, float]] | None:
    """The top log-probabilities of each generated token, as {token: logprob} per position, from a chat response
    (`content[i].top_logprobs`) or a completions one (`top_logprobs[i]`); None when the endpoint sent none."""
    if not logprobs:
        return None
    if "content" in logprobs:
        positions = [{t["token"]: t["logprob"] for t in item.get("top_logprobs") or []}
                     for item in logprobs["content"] or []]
    else:
        positions = [dict(top or {}) for top in logprobs.get("top_logprobs") or []]
    return positions if any(positions) else None


def preference_for_a(positions: list[dict[str, float]]) -> float | None:
    """P(A) / (P(A) + P(B)) at the first generated token whose top log-probabilities include A or B (tokens
    compared without surrounding spaces); None when neither letter is among them."""
    for top in positions:
        letters = [lp for token, lp in top.items() if token.strip() in ("A", "B")]
        if not all(is_log_probability(lp) for lp in letters):
            return None  # Infinity, NaN, a positive value or not a number: no verdict, never a NaN win rate
        p_a = sum(math.exp(lp) for token, lp in top.items() if token.strip() == "A")
        p_b = sum(math.exp(lp) for token, lp in top.items() if token.strip() == "B")
        if p_a + p_b > 0:
            return p_a / (p_a + p_b)
    return None


def is_log_probability(value: object) -> bool:
    """A finite number <= 0 (a tiny positive rounding error allowed), as a log-probability must be."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and value <= 1e-6


def read_reply(choice: dict, judge_mode: str) -> dict | None:
    """The judgment in one reply: {"verdict"} (+ "p_a", "top_logprobs" in logprobs mode), or None when it holds no
    verdict (the annotate loop journals the reply itself). Raises JudgeError for an endpoint that returns no
    log-probabilities."""
    text = choice["text"]
    if judge_mode == "swap":
        verdict = parse_verdict(text)
        return None if verdict is None else {"verdict": verdict}
    positions = top_logprobs_of(choice.get("logprobs"))
    if positions is None:
        raise JudgeError("The judge endpoint returned no log-probabilities (as Ollama and `transformers serve` do), "
                         "so --judge_mode logprobs cannot work there; use --judge_mode swap.")
    p_a = preference_for_a(positions)
    if p_a is None:
        return None
    verdict = "A" if p_a > 0.5 else "B" if p_a < 0.5 else "TIE"
    return {"verdict": verdict, "p_a": p_a, "top_logprobs": positions[:3]}


# -- inputs ------------------------------------------------------------------------------------------


def conversation_key(messages: list[dict]) -> str:
    """A conversation's key: its conversation_fields as JSON text, from the messages up to its last user turn (a
    trailing assistant turn, the reference answer inference.py leaves in a record, is not part of what was asked)."""
    return json.dumps(conversation_fields(prompt_messages(messages)), ensure_ascii=False)


def record_key(record: dict) -> tuple[str, str] | str:
    """What records are matched on: (instruction, input), or a conversation record's conversation_key."""
    if is_conversation(record):
        return conversation_key(record["messages"])
    return record["instruction"], record["input"]


def short(key: tuple[str, str] | str, width: int = 60) -> str:
    """A record's key as an error sentence names it: the instruction (and input), or a conversation's first and
    last user turns."""
    if isinstance(key, str):
        shown = json.loads(key)[1]
        first, last = (short((turn["instruction"], turn["input"]), width // 2) for turn in (shown[0], shown[-1]))
        return f"the 1-turn conversation {first}" if len(shown) == 1 else \
            f"the {len(shown)}-turn conversation starting {first} and ending {last}"
    text = key[0] + (f" [input: {key[1]}]" if key[1] else "")
    return repr(text if len(text) <= width else text[:width - 3] + "...")


def load_outputs(path: str) -> tuple[str, dict[tuple[str, str] | str, dict]]:
    """(generator name, {record_key: record}) of one answers file: Alpaca records, conversation records
    ({"messages": [... ending with the user turn answered, or with a trailing assistant turn], "output"}, as
    inference.py writes them), or both. The name is the records' common `generator` field (inference.py writes it),
    else the file name without its extension."""
    records = files.load_alpaca_records(path, require_output=False, conversations=True)
    by_key: dict[tuple[str, str] | str, dict] = {}
    first_index: dict[tuple[str, str] | str, int] = {}
    for index, record in enumerate(records):
        output = record.get("output")
        if output is None:
            raise DataError(f"{path}, record {index}: field 'output' is missing.")
        if not isinstance(output, str):
            raise DataError(f"{path}, record {index}: field 'output' must be a string, got {type(output).__name__}.")
        category = record.get("category")
        if category is not None and not isinstance(category, str):
            raise DataError(f"{path}, record {index}: field 'category' is {json.dumps(category)[:40]}, not a string; "
                            "categories name groups of instructions (e.g. \"coding\"): fix or remove the field.")
        key = record_key(record)
        if key in by_key:
            if isinstance(key, str):
                raise DataError(f"{path}, record {index}: the same conversation as record {first_index[key]} "
                                f"({short(key)}); conversations are matched on their messages up to the last user "
                                "turn, so each must be unique.")
            raise DataError(f"{path}, record {index}: the same instruction and input as record {first_index[key]} "
                                f"({short(key)}); records are matched on (instruction, input), so each must be unique.")
        by_key[key], first_index[key] = record, index
    names = {record.get("generator") for record in records}
    name = names.pop() if len(names) == 1 else None
    return (name if isinstance(name, str) and name.strip() else pathlib.Path(path).stem), by_key


def load_pairs(model_path: str, reference_path: str) -> list[dict]:
    """The model's and the reference's answers to the same instructions, in the reference file's order: dicts with
    instruction and input (a conversation's pair: `messages`, up to its last user turn, instead), category,
    model_output, reference_output, model_generator, reference_generator.

    Raises DataError naming the instructions (or conversations) one file has and the other lacks (a silent subset
    would change what the win rate means)."""
    return match_pairs(load_outputs(model_path), load_outputs(reference_path), model_path, reference_path)


def match_pairs(model_outputs: tuple[str, dict], reference_outputs: tuple[str, dict], model_path: str,
                reference_path: str) -> list[dict]:
    """load_pairs of two files already read by load_outputs (judge.py reads the reference once for every model)."""
    (model_name, model), (reference_name, reference) = model_outputs, reference_outputs
    missing = [key for key in reference if key not in model]
    extra = [key for key in model if key not in reference]
    if missing or extra:
        conversations = any(isinstance(key, str) for key in [*model, *reference])
        noun = "instructions or conversations" if conversations else "instructions"
        parts = [f"{len(missing)} of the reference's {noun} are missing (e.g. {short(missing[0])})"] if missing \
            else []
        parts += [f"{len(extra)} are not in the reference (e.g. {short(extra[0])})"] if extra else []
        raise DataError(f"{model_path} does not answer the {noun} of {reference_path}: {'; '.join(parts)}. "
                        "Records are matched on (instruction, input)"
                        + (", conversations on their messages up to the last user turn" if conversations else "")
                        + "; answer the same file with both models.")
    pairs = []
    for key, ref in reference.items():
        answer = model[key]
        shown = {"messages": prompt_messages(ref["messages"])} if isinstance(key, str) else \
            {"instruction": key[0], "input": key[1]}
        pairs.append({**shown, "category": ref.get("category") or answer.get("category") or "uncategorized",
                      "model_output": answer["output"], "reference_output": ref["output"],
                      "model_generator": model_name, "reference_generator": reference_name})
    return pairs


def split_model_outputs(model_outputs: str | list | tuple, more: tuple = ()) -> list[str]:
    """Model files from `--model_outputs a.json b.json`, `--model_outputs a.json,b.json` or `[a.json,b.json]`."""
    values = [model_outputs] if isinstance(model_outputs, str) else list(model_outputs)
    paths = []
    for value in [*values, *more]:
        text = str(value).strip().removeprefix("[").removesuffix("]")
        paths += [part.strip().strip("'\"") for part in text.split(",") if part.strip()]
    return paths


# -- the judgment journal (the cache) ----------------------------------------------------------------


def judgment_key(judge_model: str, judge_mode: str, prompt: str, answer_a: str, answer_b: str,
                 conversation: list | None = None) -> str:
    """sha256 of what defines a judgment: judge model, mode, the prompt and the two answers (never the API key), and
    for a conversation's answers its whole text (`conversation_fields`): the prompt shows every text neutralised, so
    two conversations, like two answers, may differ where the prompt does not."""
    fields = [judge_model, judge_mode, prompt, answer_a, answer_b]
    if conversation is not None:
        fields.append(conversation)
    canonical = json.dumps(fields, ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def conversation_fields(messages: list[dict]) -> list:
    """A conversation's content as [system message or None, its turns (instruction, input, output)]: the same for
    the same texts however the messages spell them (an input as a message or as a second text part)."""
    return [system_message(messages), turns(messages)]


def judgment_problem(record: dict) -> str | None:
    """Why a journal record is not one this judge writes (a 'key', and a verdict only of A, B or TIE), or None."""
    if not isinstance(record.get("key"), str) or record.get("verdict", "A") not in PREFERENCE_FOR_A:
        return f"not a judgment of this judge (it needs a 'key' and a 'verdict'; {json.dumps(record)[:60]!r})"
    return None


def is_usable(judgment: dict) -> bool:
    """Whether a journal record is a verdict to count: it has one, and in logprobs mode its P(A) is a finite number
    in [0, 1] (earlier versions journaled NaN from a reply with an infinite log-probability). Anything else (a reply
    without a verdict) is asked again, never counted."""
    p_a = judgment.get("p_a")
    return "verdict" in judgment and (
        p_a is None or (isinstance(p_a, (int, float)) and math.isfinite(p_a) and 0.0 <= p_a <= 1.0))


def load_judgments(path: str) -> dict[str, dict]:
    """{key: judgment} from the journal (annotate.read_answers: the one journal rule). Replies without a usable
    verdict are left out, so they are asked again."""
    return annotate.read_answers(path, is_usable, writer="The judge", problem=judgment_problem)


def reply_of(judgment: dict) -> str:
    """The judge's reply behind a journaled verdict (journals before the annotate loop called it raw_reply)."""
    return judgment["reply"] if "reply" in judgment else judgment["raw_reply"]


# -- pairs, orders and jobs ------------------------------------------------------------------------


def model_shown_first(seed: int, instruction: str, input: str, messages: list[dict] | None = None) -> bool:
    """logprobs mode: whether the model's answer is shown as A, drawn per instruction (per conversation, given its
    `messages`) from the seed alone (so every model meets the same order on the same instruction)."""
    drawn = f"{seed}\0{instruction}\0{input}" if messages is None else f"{seed}\0{conversation_key(messages)}"
    return random.Random(drawn).random() < 0.5


def orders_of(pair: dict, judge_mode: str, seed: int) -> list[bool]:
    """The orders a pair is judged in, as "model shown first" flags: both in swap mode, one in logprobs mode.
    A pair answers an instruction (`instruction`, `input`) or the last user turn of a conversation (`messages`)."""
    if judge_mode == "swap":
        return [True, False]
    if "messages" in pair:
        return [model_shown_first(seed, "", "", pair["messages"])]
    return [model_shown_first(seed, pair["instruction"], pair["input"])]


def order_job(pair: dict, model_first: bool, judge_model: str, judge_mode: str) -> dict:
    """The prompt and cache key of judging `pair` in one order."""
    a, b = (pair["model_output"], pair["reference_output"]) if model_first else \
        (pair["reference_output"], pair["model_output"])
    if "messages" in pair:
        prompt = conversation_judge_prompt(pair["messages"], a, b, judge_mode)
        return {"key": judgment_key(judge_model, judge_mode, prompt, a, b, conversation_fields(pair["messages"])),
                "prompt": prompt}
    prompt = judge_prompt(pair["instruction"], pair["input"], a, b, judge_mode)
    return {"key": judgment_key(judge_model, judge_mode, prompt, a, b), "prompt": prompt}


def model_preference(judgment: dict, model_first: bool, judge_mode: str) -> float:
    """The preference for the model's answer (1 win, 0 loss, 0.5 tie, in between in logprobs mode) of one order."""
    p_a = judgment["p_a"] if judge_mode == "logprobs" else PREFERENCE_FOR_A[judgment["verdict"]]
    return p_a if model_first else 1.0 - p_a


def pair_preference(order_preferences: list[float | None]) -> float | None:
    """A pair's preference for the model from its orders: None if any order is unjudged; in swap mode agreement
    gives a win or a loss and anything else a tie."""
    if not order_preferences or any(p is None for p in order_preferences):
        return None
    if len(order_preferences) == 1:
        return order_preferences[0]
    first, second = order_preferences
    return first if first == second else 0.5


def identical(pair: dict) -> bool:
    return pair["model_output"].strip() == pair["reference_output"].strip()


def jobs_of_pair(pair: dict, judge_model: str, judge_mode: str, seed: int) -> dict[bool, dict]:
    """{model shown first: the judge's job} for each order a pair is judged in; none for identical answers."""
    if identical(pair):
        return {}
    return {first: order_job(pair, first, judge_model, judge_mode) for first in orders_of(pair, judge_mode, seed)}


def jobs_to_ask(pairs: list[dict], judgments: dict, judge_model: str, judge_mode: str,
                seed: int) -> tuple[dict[int, dict[bool, dict]], dict[str, dict]]:
    """({id(pair): jobs_of_pair}, {key: job} of the jobs the journal holds no verdict for, each key once: pairs that
    show the same answers in the same order are one judgment)."""
    jobs = {id(pair): jobs_of_pair(pair, judge_model, judge_mode, seed) for pair in pairs}
    to_send = {job["key"]: job for pair_jobs in jobs.values() for job in pair_jobs.values()
               if job["key"] not in judgments}
    return jobs, to_send


def judged_preference(pair: dict, pair_jobs: dict[bool, dict], judgments: dict, judge_mode: str) -> float | None:
    """A pair's preference for the model from the verdicts on its jobs (jobs_of_pair): 0.5 for identical answers,
    None while an order is unjudged."""
    if identical(pair):
        return 0.5
    judged = {first: judgments.get(job["key"]) for first, job in pair_jobs.items()}
    return pair_preference([None if judgment is None else model_preference(judgment, first, judge_mode)
                            for first, judgment in judged.items()])


# -- the command -------------------------------------------------------------------------------------


def annotation_lines(pairs: list[dict], judge_mode: str, seed: int, jobs: dict, judgments: dict,
                     failed: dict[str, str]) -> list[str]:
    """annotations.jsonl: one line per pair and order with the generators, which was shown first, the verdict
    (None: unjudged) and the judge's raw reply, for audit."""
    lines = []
    for pair in pairs:
        for model_first in orders_of(pair, judge_mode, seed):
            first, second = ("model_generator", "reference_generator") if model_first else \
                ("reference_generator", "model_generator")
            shown = {"messages": pair["messages"]} if "messages" in pair else \
                {"instruction": pair["instruction"], "input": pair["input"]}
            line = {**shown, "category": pair["category"], "model": pair["model_generator"],
                    "reference": pair["reference_generator"], "shown_first": pair[first], "shown_second": pair[second]}
            if identical(pair):
                line.update(verdict="TIE", raw_reply=None, note="identical answers: a tie without a call")
            else:
                key = jobs[id(pair)][model_first]["key"]
                judgment = judgments.get(key)
                if judgment is None:
                    line.update(verdict=None, raw_reply=failed.get(key), note="unjudged: no verdict in the reply")
                else:
                    line.update(verdict=judgment["verdict"], raw_reply=reply_of(judgment))
                    if "p_a" in judgment:
                        line["p_a"] = judgment["p_a"]
            lines.append(json.dumps(line, ensure_ascii=False))
            if identical(pair) and judge_mode == "swap":
                break  # one line for a pair that was never shown
    return lines


def check_judge_settings(judge_model: str, api_type: str, api_base: str | None, judge_mode: str,
                         max_concurrency: int, verdict_retries: int, max_tokens: int | None,
                         check_endpoint: bool = True) -> str:
    """Refuse, before any file is read or call made, judge flags that cannot work (a UsageError, or a JudgeError
    for endpoint settings when `check_endpoint`); returns the judge model's name as a string."""
    if judge_mode not in JUDGE_MODES:
        raise UsageError(f"--judge_mode must be one of {', '.join(JUDGE_MODES)}, not {judge_mode!r}.")
    if api_type not in API_TYPES:
        raise UsageError(f"--api_type must be one of {', '.join(API_TYPES)}, not {api_type!r}.")
    if api_type == "local" and judge_mode == "logprobs":
        raise UsageError("a local judge returns no log-probabilities; use --judge_mode swap with --api_type local.")
    for flag, value, least in (("max_concurrency", max_concurrency, 1), ("verdict_retries", verdict_retries, 0),
                               ("max_tokens", max_tokens if max_tokens is not None else 1, 1)):
        if value < least:
            raise UsageError(f"--{flag} must be at least {least}, not {value}.")
    if not judge_model or not str(judge_model).strip():
        raise UsageError("--judge_model is empty; name the judge model (e.g. gpt-4o-mini).")
    if check_endpoint:  # its errors say what to do as they are; a malformed setting stays a usage error (exit 2)
        check_settings(api_type, str(judge_model), api_base)
    return str(judge_model)


def evaluate(*more_model_outputs: str, model_outputs: str, reference_outputs: str, output_dir: str,
             judge_model: str, api_base: str | None = None, api_type: str = "chat", judge_mode: str = "swap",
             max_concurrency: int = 4, seed: int = 42, verdict_retries: int = 2, max_tokens: int | None = None,
             max_retries: int = 8, temperature: float = 0.0, requests_per_minute: float | None = None,
             tokens_per_minute: float | None = None, request_timeout: float = 600.0,
             price_per_1k_prompt_tokens: float | None = None, price_per_1k_completion_tokens: float | None = None,
             plot: bool = True, max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES) -> dict:
    """Judge each model's answers against the reference's; write results.json, annotations.jsonl, win_rates.png.

    Arguments:
        model_outputs: answers files (JSON list or JSONL of instruction/input/output records, or of conversation
            records {"messages": [... ending with the user turn answered], "output"}, or both, e.g. from
            inference.py); several as `--model_outputs a.json b.json` or `--model_outputs a.json,b.json`.
            A model's name is its records' `generator` field, else the file name.
        reference_outputs: the reference model's answers to the same instructions (and conversations).
        output_dir: results, annotations, picture and the judgment cache (judgments.jsonl); re-runs reuse it.
        judge_model: the judge: a model name at the endpoint, or a local model directory with --api_type local.
        judge_mode: "swap" (both orders, [[A]]/[[B]]/[[TIE]]) or "logprobs" (one call per pair, P(A) vs P(B);
            needs an endpoint that returns log-probabilities: OpenAI, vLLM, llama.cpp).
        seed: the bootstrap resamples and, in logprobs mode, which answer each instruction shows first.
        verdict_retries: times a reply without a verdict is asked again (at temperature >= 0.7); then unjudged.
        max_tokens: tokens the judge may write (default 512 in swap mode, 3 in logprobs mode).
        temperature: the judge's sampling temperature on the first attempt.
        price_per_1k_prompt_tokens, price_per_1k_completion_tokens: dollars, to report the judging cost.
        plot: write win_rates.png.
    Returns the results (also in output_dir/results.json). Other commands: `python judge.py human --help` and
    `python judge.py human_results --help` (blind human evaluation of the same pairs).
    """
    judge_model = check_judge_settings(judge_model, api_type, api_base, judge_mode, max_concurrency, verdict_retries,
                                       max_tokens, check_endpoint=False)
    paths = split_model_outputs(model_outputs, more_model_outputs)
    if not paths:
        raise UsageError("--model_outputs names no file.")
    # Every input is read and checked, and the endpoint settings too, before any file is written or call made.
    reference = load_outputs(reference_outputs)
    models = [load_outputs(path) for path in paths]
    runs = [match_pairs(model, reference, path, reference_outputs) for model, path in zip(models, paths, strict=True)]
    names = [pairs[0]["model_generator"] for pairs in runs]
    reference_name = runs[0][0]["reference_generator"]
    for name, path in zip(names, paths, strict=True):
        clash = "another model file" if names.count(name) > 1 else "the reference" if name == reference_name else \
            "a key of results.json" if name in NOT_MODELS else None
        if clash:
            raise DataError(f"{path} is named '{name}', as is {clash}; give each answers file a distinct "
                                "'generator' field (inference.py --generator) or file name.")
    check_settings(api_type, judge_model, api_base, temperature=temperature, requests_per_minute=requests_per_minute,
                   tokens_per_minute=tokens_per_minute, request_timeout=request_timeout,
                   max_response_bytes=max_response_bytes, max_retries=max_retries)

    outputs = [os.path.join(output_dir, name) for name in ("results.json", "annotations.jsonl", "win_rates.png")]
    for output in outputs:
        files.check_output_file(output, inputs=paths + [reference_outputs], flag="judge.py's output")
    run_provenance = provenance.of_run(
        judge_model, judge_mode, seed, conversations=any(isinstance(key, str) for key in reference[1]),
        model_outputs={name: provenance.input_file(path, list(model[1].values()))
                       for name, path, model in zip(names, paths, models, strict=True)},
        reference_outputs=provenance.input_file(reference_outputs, list(reference[1].values())))
    with files.claimed_directory(output_dir, LOCK_NAME, "judge"):
        return judge_and_report(runs, names, paths, output_dir, run_provenance, judge_model=judge_model,
                                api_type=api_type, api_base=api_base, judge_mode=judge_mode, seed=seed,
                                max_concurrency=max_concurrency,
                                verdict_retries=verdict_retries, max_retries=max_retries, max_tokens=max_tokens,
                                temperature=temperature,
                                requests_per_minute=requests_per_minute, tokens_per_minute=tokens_per_minute,
                                request_timeout=request_timeout, max_response_bytes=max_response_bytes, plot=plot,
                                price_per_1k_prompt_tokens=price_per_1k_prompt_tokens,
                                price_per_1k_completion_tokens=price_per_1k_completion_tokens)


def judge_and_report(runs: list[list[dict]], names: list[str], paths: list[str], output_dir: str,
                     run_provenance: dict, *, judge_model: str,
                     api_type: str, api_base: str | None, judge_mode: str, seed: int, max_concurrency: int,
                     verdict_retries: int, max_retries: int, max_tokens: int | None, temperature: float,
                     requests_per_minute: float | None, tokens_per_minute: float | None, request_timeout: float,
                     max_response_bytes: int, plot: bool, price_per_1k_prompt_tokens: float | None,
                     price_per_1k_completion_tokens: float | None) -> dict:
    """Ask what the journal lacks, then compute and write the results, `run_provenance` under PROVENANCE_KEY
    (evaluate's work, under the directory's lock)."""
    journal_path = os.path.join(output_dir, JOURNAL_NAME)
    judgments = load_judgments(journal_path)
    jobs, to_send = jobs_to_ask([pair for pairs in runs for pair in pairs], judgments, judge_model, judge_mode, seed)
    needed = sum(map(len, jobs.values()))
    spent = {"prompt_tokens": 0, "completion_tokens": 0}
    failed: dict[str, str] = {}
    conversations = sum("messages" in pair for pair in runs[0])
    print(f"Judging {len(paths)} model(s) against {runs[0][0]['reference_generator']} on {len(runs[0])} instructions "
          + (f"({conversations} of them a conversation's last turn) " if conversations else "")
          + f"with {judge_model} ({judge_mode} mode): {needed} judgments needed, "
          f"{needed - len(to_send)} found in {journal_path}, {len(to_send)} to ask.")
    if to_send:
        failed = ask_judge(list(to_send.values()), judgments, journal_path, spent, judge_model=judge_model,
                           api_type=api_type, api_base=api_base, judge_mode=judge_mode,
                           max_concurrency=max_concurrency, verdict_retries=verdict_retries, max_tokens=max_tokens,
                           temperature=temperature, requests_per_minute=requests_per_minute,
                           tokens_per_minute=tokens_per_minute, request_timeout=request_timeout,
                           max_response_bytes=max_response_bytes, max_retries=max_retries)

    priced = price_per_1k_prompt_tokens is not None or price_per_1k_completion_tokens is not None

    def cost_of(usage: dict) -> float:
        return dollars(usage, price_per_1k_prompt_tokens, price_per_1k_completion_tokens)

    results: dict = {}
    preferences_of: dict[str, list] = {}
    annotations: list[str] = []
    for name, pairs in zip(names, runs, strict=True):
        preferences, cost = [], 0.0
        for pair in pairs:
            pair_jobs = jobs[id(pair)]
            preferences.append(judged_preference(pair, pair_jobs, judgments, judge_mode))
            cost += sum(cost_of(judgments[job["key"]].get("usage", {})) for job in pair_jobs.values()
                        if job["key"] in judgments)
        result = compute_results(preferences, [len(p["model_output"]) for p in pairs],
                                 [len(p["reference_output"]) for p in pairs], [p["category"] for p in pairs], seed)
        result.update(reference=pairs[0]["reference_generator"], judge_model=judge_model, judge_mode=judge_mode)
        if priced:
            result["cost"] = round(cost, 6)
        results[name], preferences_of[name] = result, preferences
        annotations += annotation_lines(pairs, judge_mode, seed, jobs, judgments, failed)
    if len(names) > 1:
        ordered = model_names(results)
        results[DIFFERENCES_KEY] = [{"model_a": a, "model_b": b,
                                     **paired_difference_ci(preferences_of[a], preferences_of[b], seed)}
                                    for i, a in enumerate(ordered) for b in ordered[i + 1:]]
    results[PROVENANCE_KEY] = run_provenance

    files.write_json(os.path.join(output_dir, "results.json"), results, indent=2, ensure_ascii=False)
    files.write_atomically(os.path.join(output_dir, "annotations.jsonl"), "".join(line + "\n" for line in annotations))
    if plot:
        plot_win_rates(results, os.path.join(output_dir, "win_rates.png"))
    print(format_table(results))
    report_unjudged(results, names, verdict_retries)
    if to_send:
        print(f"This run asked the judge {len(to_send)} judgments, {len(failed)} without a verdict; tokens "
              f"{spent['prompt_tokens']:,} prompt, {spent['completion_tokens']:,} completion"
              + (f"; cost ${cost_of(spent):.4f}" if priced else "") + ".")
    print(f"Wrote results.json, annotations.jsonl{', win_rates.png' if plot else ''} to {output_dir}")
    return results


def report_unjudged(results: dict, names: list[str], verdict_retries: int) -> None:
    """Say plainly how many pairs carry no verdict, and that the numbers rest on the rest."""
    for name in names:
        r = results[name]
        if not r["n_unjudged"]:
            continue
        judged = r["n_total"] - r["n_unjudged"]
        print(f"{name}: {r['n_unjudged']} of {r['n_total']} pairs are unjudged (no verdict after {verdict_retries} "
              f"retries); they are not counted, and a re-run asks again. "
              + ("Most pairs are unjudged: this judge rarely answers in the asked format, so these numbers rest on "
                 f"{judged} pairs and mean little." if r["n_unjudged"] * 2 > r["n_total"] else ""))


# -- calling the judge: the one annotate loop (alpaca/llm/annotate.py) with the judge's prompt and parser ---


def ask_judge(jobs: list[dict], judgments: dict, journal_path: str, spent: dict, *, judge_model: str,
              api_type: str, api_base: str | None, judge_mode: str, max_concurrency: int, verdict_retries: int,
              max_tokens: int | None, temperature: float, requests_per_minute: float | None,
              tokens_per_minute: float | None, request_timeout: float,
              max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES, max_retries: int = 8) -> dict[str, str]:
    """Judge `jobs` ({"key", "prompt"}) through the one annotate loop: each reply journaled as it arrives, a reply
    without a verdict asked again (at least RETRY_TEMPERATURE hot: a greedy judge repeats itself) up to
    `verdict_retries` times. Adds each verdict to `judgments` and the tokens sent to `spent`; returns {key: last
    reply} of the jobs still without a verdict. The endpoint's response cache is off: the journal is the cache, and
    a reply without a verdict must be asked again next run, not replayed."""
    logprobs = judge_mode == "logprobs"
    decoding_args = OpenAIDecodingArguments(max_tokens=max_tokens or (3 if logprobs else 512), temperature=temperature,
                                            top_p=1.0, logprobs=5 if logprobs else None)

    async def run() -> dict:
        async with LLMEndpoint(api_type=api_type, model_name=judge_model, api_base=api_base,
                               max_concurrency=max_concurrency, requests_per_minute=requests_per_minute,
                               tokens_per_minute=tokens_per_minute, request_timeout=request_timeout,
                               max_retries=max_retries, cache_dir=None,
                               max_response_bytes=max_response_bytes) as endpoint:
            return await annotate.annotate(
                endpoint, jobs, journal_path, prompt_of=lambda job, attempt: job["prompt"],
                parse=lambda choice: read_reply(choice, judge_mode), decoding_args=decoding_args,
                retries=verdict_retries, retry_temperature=RETRY_TEMPERATURE,
                context={"judge_model": judge_model, "judge_mode": judge_mode}, answers=judgments, unit="judgment",
                desc="judged")

    try:
        tally = asyncio.run(run())
    except LLMError as error:
        advice = " If it does not support log-probabilities, use --judge_mode swap." \
            if logprobs and "rejected the request" in str(error) else ""
        raise JudgeError(f"{error}{advice} Every verdict so far is saved in {journal_path}.") from None
    for k in spent:  # a reply without a verdict is paid for too
        spent[k] += tally[k]
    return tally["failed"]
