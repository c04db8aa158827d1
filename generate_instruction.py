r"""Batch Self-Instruct: generate Alpaca's instruction-following data with an LLM.

    python -m generate_instruction generate_instruction_following_data \
        --output_dir ./ --num_instructions_to_generate 100 --model_name gpt-3.5-turbo-instruct

Every request samples `num_prompt_instructions` seed tasks into the frame of prompt.txt and asks the model
to continue the numbered list up to task 20 (`request_batch_size` prompts per request). The continuation
is split into tasks and filtered (length, unsuitable words, ...); an instruction is dropped when its ROUGE-L
F1 against any seed or kept instruction is above 0.7, else kept with its 10 most similar instructions and
its mean similarity. The result is `output_dir/regen.json`, a JSON list as the original wrote it.

Beyond the original: any OpenAI-compatible endpoint (`--api_type completions|chat`, `--api_base`; vLLM,
Ollama, llama.cpp's server) or a local Hugging Face model (`--api_type local --model_name DIR`);
`--max_concurrency` requests in flight, processed in request order, so the output does not depend on it;
`--seed` fixes the prompt sampling; raw responses are cached in `output_dir/responses/` (a re-run replays
them); kept instructions are journaled in `output_dir/regen_journal.jsonl` after every request, so a kill
loses nothing and a re-run resumes; `--clean True` adds filters for defects found in the released 52K data.
Run with `--help` after the task name for every flag.
"""

import asyncio
import inspect
import json
import os
import random
import re
import signal
import string
import sys
import time
from collections import Counter
from contextlib import aclosing

import fire
import numpy as np
import tqdm

import utils
from llm_client import DEFAULT_MODEL_NAMES, LLMEndpoint, LLMError, check_settings, complete_in_order
from rouge_l import RougeLIndex, most_similar

__all__ = ["RougeLIndex", "encode_prompt", "post_process_gpt3_response", "generate_instruction_following_data"]

PROMPT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "prompt.txt")
SIMILARITY_THRESHOLD = 0.7  # ROUGE-L F1 above which a new instruction counts as a near-duplicate
STOP_SEQUENCES = ["\n20", "20."]  # the prompt asks for 20 tasks: stop where the 20th would begin
BLACKLIST = ["image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps", "draw",
             "plot", "go to", "video", "audio", "music", "flowchart", "diagram"]  # a text-only model cannot do these
JOURNAL_NAME = "regen_journal.jsonl"


class SeedTaskError(ValueError):
    """The seed tasks file cannot be used; the message names the file and the line."""


class FlagError(ValueError):
    """A command-line flag that does not exist or has a value that cannot work; the message names it."""


def encode_prompt(prompt_instructions: list[dict]) -> str:
    """prompt.txt followed by the given tasks numbered from 1, ending with an open `###\\n{k+1}. Instruction:`."""
    with open(PROMPT_PATH, encoding="utf-8") as f:
        prompt = f.read() + "\n"
    for idx, task_dict in enumerate(prompt_instructions):
        instruction = re.sub(r"\s+", " ", task_dict["instruction"]).strip().rstrip(":")
        task_input = "<noinput>" if task_dict["input"] == "" else task_dict["input"]
        prompt += "###\n"
        prompt += f"{idx + 1}. Instruction: {instruction}\n"
        prompt += f"{idx + 1}. Input:\n{task_input}\n"
        prompt += f"{idx + 1}. Output:\n{task_dict['output']}\n"
    prompt += "###\n"
    prompt += f"{len(prompt_instructions) + 1}. Instruction:"
    return prompt


def find_word_in_string(w: str, s: str) -> re.Match | None:
    return re.compile(rf"\b({w})\b", flags=re.IGNORECASE).search(s)


def post_process_gpt3_response(num_prompt_instructions: int, response, drop_counts: Counter | None = None) -> list:
    """Parse one completion (a mapping with `text` and `finish_reason`, or None) into the tasks it holds:
    a list of {"instruction", "input", "output"} that pass the original's filters, in order.
    `drop_counts`, when given, is incremented once per skipped task under the reason it was skipped."""
    drops = drop_counts if drop_counts is not None else Counter()
    if response is None:
        return []
    raw_instructions = f"{num_prompt_instructions + 1}. Instruction:" + response["text"]
    raw_instructions = re.split("###", raw_instructions)
    instructions = []
    for idx, inst in enumerate(raw_instructions):
        # When decoding stopped at max_tokens the last task is likely cut off.
        if idx == len(raw_instructions) - 1 and response["finish_reason"] == "length":
            drops["truncated"] += 1
            continue
        idx += num_prompt_instructions + 1
        splitted_data = re.split(rf"{idx}\.\s+(Instruction|Input|Output):", inst)
        if len(splitted_data) != 7:
            if inst.strip():  # the empty tail after the last ### is no task
                drops["format"] += 1
            continue
        inst = splitted_data[2].strip()
        task_input = splitted_data[4].strip()
        task_input = "" if task_input.lower() == "<noinput>" else task_input
        output = splitted_data[6].strip()
        reason = filter_drop_reason(inst)
        if reason:
            drops[reason] += 1
            continue
        instructions.append({"instruction": inst, "input": task_input, "output": output})
    return instructions


def filter_drop_reason(instruction: str) -> str | None:
    """Why the original's filters drop a parsed instruction (`length`, `blacklist`, `write_a_program`,
    `punctuation`, `non_ascii`), or None to keep it. `data_tools.py` applies the same rules to existing data."""
    if len(instruction.split()) <= 3 or len(instruction.split()) > 150:
        return "length"
    if any(find_word_in_string(word, instruction) for word in BLACKLIST):
        return "blacklist"
    # Models tend to prefix "Write a program" to ordinary tasks, leaving it unclear what the output is.
    if instruction.startswith("Write a program"):
        return "write_a_program"
    if instruction[0] in string.punctuation:
        return "punctuation"
    if not instruction[0].isascii():
        return "non_ascii"
    return None


# --clean: defects found in the released 52K data, each its own drop reason.
MERGED_TASK = re.compile(r"(^|\n)\s*\d+\s*\.\s*Instruction\s*:", flags=re.IGNORECASE)
# "None" or "Nil" can be a real answer ("Which of these numbers is prime?"), so only N/A-style markers count.
NA_OUTPUT = re.compile(r"\s*(n/?a|no output|<no ?output>|-+|\.*)\s*\.?\s*", flags=re.IGNORECASE)
NOINPUT_VARIANT = re.compile(r"\s*[<(\[]?\s*(no[ _-]?input( (required|needed|provided))?|n/?a|none|null|nil|empty|"
                             r"not applicable|no input is required)\s*[>)\]]?\s*\.?\s*", flags=re.IGNORECASE)
# A URL or a file name alone, a bracketed placeholder ("<attached image>", "[link to the article]") or a pointer
# to an attachment ("See the attached file."): the task needs content the model never saw. An input that merely
# starts with such a word ("Document: the meeting moved to 5 pm", "Video games are popular") is real content.
URL_OR_ATTACHMENT = re.compile(
    r"\s*(<?(https?://\S+|www\.\S+)>?"
    r"|\S+\.(jpe?g|png|gif|bmp|pdf|docx?|xlsx?|pptx?|csv|mp3|mp4|wav|mov|zip)"
    r"|[<\[(]\s*(see )?(the )?(attached|attachment|link|url|image|photo|picture|file|document|video|audio|"
    r"screenshot)\b[^>\])]*[>\])]"
    r"|(please )?(see )?(the )?(attached|attachment|linked)\b[\w .:-]{0,40})\s*\.?\s*", flags=re.IGNORECASE)


def clean_drop_reason(task: dict) -> str | None:
    """Why --clean drops a parsed task, or None to keep it: two tasks merged into one output, an empty or
    N/A output, a no-input marker spelled otherwise than <noinput>, an input that is only a URL or an
    attachment placeholder."""
    if MERGED_TASK.search(task["output"]):
        return "merged_tasks"
    if NA_OUTPUT.fullmatch(task["output"]):
        return "empty_output"
    if task["input"] and NOINPUT_VARIANT.fullmatch(task["input"]):
        return "noinput_variant"
    if task["input"] and URL_OR_ATTACHMENT.fullmatch(task["input"]):
        return "url_input"
    return None


def chat_reply_as_continuation(text: str, next_number: int) -> str:
    """A chat model answers the prompt instead of continuing it and usually restates the open `4. Instruction:`
    (sometimes after a preamble); cut up to it so the reply parses like a completions model's continuation."""
    match = re.search(rf"(?<!\d){next_number}\.\s+Instruction:", text)  # "4." but not "14."
    return text[match.end():] if match else text


def load_seed_tasks(seed_tasks_path: str) -> list[dict]:
    """The first instance of every seed task as {"instruction", "input", "output"}; errors name file and line."""
    if not os.path.exists(seed_tasks_path):
        raise SeedTaskError(f"Seed tasks file {seed_tasks_path} does not exist; pass --seed_tasks_path.")
    seed_instruction_data = []
    with open(seed_tasks_path, "rb") as f:
        for line_number, raw_line in enumerate(f, start=1):
            try:
                line = raw_line.decode("utf-8")
            except UnicodeDecodeError as e:
                raise SeedTaskError(f"{seed_tasks_path}, line {line_number}: not UTF-8 text ({e.reason}); save the "
                                    "seed tasks as UTF-8 JSONL.") from None
            if not line.strip():
                continue
            where = f"{seed_tasks_path}, line {line_number}"
            try:
                task = json.loads(line)
            except json.JSONDecodeError as e:
                raise SeedTaskError(f"{where}: not valid JSON ({e.msg}, column {e.colno}); every line must be "
                                    f"one seed task object.") from None
            try:
                instance = task["instances"][0]
                entry = {"instruction": task["instruction"], "input": instance["input"], "output": instance["output"]}
            except (KeyError, IndexError, TypeError):
                raise SeedTaskError(f"{where}: a seed task needs \"instruction\" and \"instances\" with at least one "
                                    f"{{\"input\", \"output\"}}.") from None
            if not all(isinstance(v, str) for v in entry.values()):
                raise SeedTaskError(f"{where}: instruction, input and output must be strings.")
            seed_instruction_data.append(entry)
    if not seed_instruction_data:
        raise SeedTaskError(f"Seed tasks file {seed_tasks_path} holds no tasks.")
    return seed_instruction_data


def load_generated(output_dir: str) -> tuple[list[dict], int]:
    """(kept instructions, next request index) of an earlier run: from its journal, which survives kills
    (a half-written last line is cut off), else from a regen.json such as the original wrote."""
    journal_path = os.path.join(output_dir, JOURNAL_NAME)
    regen_path = os.path.join(output_dir, "regen.json")
    if os.path.exists(journal_path):
        entries, next_request, good_bytes = [], 0, 0
        with open(journal_path, "rb") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    break  # the run was killed while writing this line
                if not line.endswith(b"\n"):
                    break
                entries += record["kept"]
                next_request = max(next_request, record["request_index"] + 1)
                good_bytes += len(line)
        if good_bytes < os.path.getsize(journal_path):
            with open(journal_path, "r+b") as f:
                f.truncate(good_bytes)
        keep_edited_regen_json(regen_path, entries)
        return entries, next_request
    if os.path.exists(regen_path):
        entries = utils.jload(regen_path)
        append_journal(journal_path, {"request_index": -1, "kept": entries, "source": "regen.json"})
        return entries, 0
    return [], 0


def keep_edited_regen_json(regen_path: str, journal_entries: list[dict]) -> None:
    """The journal is what a run resumes from, and regen.json is rewritten from it at the end. A regen.json
    that is not a copy of the journal's start (one left by a kill is) was edited by hand: move it aside,
    so that the edits are not lost, and say so."""
    if not os.path.exists(regen_path):
        return
    try:
        written = utils.jload(regen_path)
    except (ValueError, UnicodeDecodeError):
        written = None
    if isinstance(written, list) and written == journal_entries[:len(written)]:
        return
    backup = f"{regen_path}.edited-{time.strftime('%Y%m%d-%H%M%S')}"
    os.replace(regen_path, backup)
    print(f"warning: {regen_path} differs from the run's journal ({JOURNAL_NAME}), which the run resumes from; "
          f"it was moved to {backup} and regen.json will be written again from the journal.", file=sys.stderr)


def append_journal(journal_path: str, record: dict) -> None:
    """Append one line and force it to disk, so a kill right after still finds it."""
    with open(journal_path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def format_counts(counts: Counter) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in counts.most_common() if n) or "none"


def generate_instruction_following_data(
    output_dir: str = "./",
    seed_tasks_path: str = "./seed_tasks.jsonl",
    num_instructions_to_generate: int = 100,
    model_name: str | None = None,
    num_prompt_instructions: int = 3,
    request_batch_size: int = 5,
    temperature: float = 1.0,
    top_p: float = 1.0,
    num_cpus: int = 16,
    api_type: str = "completions",
    api_base: str | None = None,
    max_concurrency: int = 4,
    requests_per_minute: float | None = None,
    tokens_per_minute: float | None = None,
    max_retries: int = 8,
    retry_base_delay: float = 1.0,
    retry_max_delay: float = 60.0,
    request_timeout: float = 600.0,
    max_tokens: int = 3072,
    logit_bias: dict | None = None,
    seed: int = 42,
    clean: bool = False,
    cache: bool = True,
    price_per_1k_prompt_tokens: float | None = None,
    price_per_1k_completion_tokens: float | None = None,
    max_requests: int | None = None,
) -> list[dict]:
    """Generate instructions until output_dir/regen.json holds at least `num_instructions_to_generate`.

    Arguments (the original's first):
        output_dir: where regen.json, the journal and the response cache go; an earlier run there is resumed.
        seed_tasks_path: JSONL of seed tasks ({"instruction", "instances": [{"input", "output"}], ...}).
        num_instructions_to_generate: stop once this many instructions are kept (the last request's all count).
        model_name: default gpt-3.5-turbo-instruct (completions) or gpt-4o-mini (chat); a directory for local.
        num_prompt_instructions: seed tasks shown in each prompt.
        request_batch_size: prompts per request (completions endpoint; chat sends one request per prompt).
        temperature, top_p: sampling settings.
        num_cpus: threads for ROUGE-L scoring.
        api_type: "completions" (Alpaca's batch decoding), "chat" (prompt as a user message) or "local".
        api_base: base URL of an OpenAI-compatible server, e.g. http://localhost:8000/v1 (default
            OPENAI_BASE_URL, else OpenAI). The key comes from OPENAI_API_KEY, the organisation from OPENAI_ORG.
        max_concurrency: requests in flight at once; the output does not depend on it.
        requests_per_minute, tokens_per_minute: client-side limits to stay under a quota.
        max_retries: retries of a request on 429, 5xx, timeouts and dropped connections.
        retry_base_delay, retry_max_delay: backoff seconds (doubling from base, at most max, with jitter).
        request_timeout: seconds to wait for one response.
        max_tokens: tokens to generate per prompt (the original's 3072); shrunk 20% per context-length error.
        logit_bias: e.g. '{"50256": -100}', the original's GPT-3 setting against <|endoftext|>; off by default.
        seed: fixes which seed tasks each prompt shows.
        clean: also drop merged tasks, empty/N-A outputs, no-input markers in other spellings, URL-only inputs.
        cache: replay and store raw responses in output_dir/responses.
        price_per_1k_prompt_tokens, price_per_1k_completion_tokens: dollars, to log the cost.
        max_requests: stop after this many requests in this run even if fewer instructions were kept.
    Returns the kept instructions (also written to output_dir/regen.json).
    """
    seed_instruction_data = load_seed_tasks(seed_tasks_path)
    print(f"Loaded {len(seed_instruction_data)} human-written seed instructions")
    if not 1 <= num_prompt_instructions <= len(seed_instruction_data):
        raise SeedTaskError(f"--num_prompt_instructions must be between 1 and the {len(seed_instruction_data)} seed "
                            f"tasks in {seed_tasks_path}, not {num_prompt_instructions}.")
    for flag, value in (("num_instructions_to_generate", num_instructions_to_generate), ("num_cpus", num_cpus),
                        ("request_batch_size", request_batch_size), ("max_concurrency", max_concurrency)):
        if not isinstance(value, int) or value < 1:
            raise FlagError(f"--{flag} must be a positive whole number, not {value!r}.")
    model_name = model_name or DEFAULT_MODEL_NAMES.get(api_type)
    check_settings(api_type, model_name, api_base)
    os.makedirs(output_dir, exist_ok=True)
    regen_path = os.path.join(output_dir, "regen.json")
    journal_path = os.path.join(output_dir, JOURNAL_NAME)
    machine_instruction_data, first_request = load_generated(output_dir)
    if machine_instruction_data:
        print(f"Loaded {len(machine_instruction_data)} machine-generated instructions")

    # The pool every new instruction is compared with: the seeds and everything kept so far.
    all_instructions = [d["instruction"] for d in seed_instruction_data + machine_instruction_data]
    similarity_index = RougeLIndex(all_instructions, num_threads=num_cpus)
    decoding_args = utils.OpenAIDecodingArguments(temperature=temperature, n=1, max_tokens=max_tokens, top_p=top_p,
                                                  stop=STOP_SEQUENCES)
    if isinstance(logit_bias, str):
        logit_bias = json.loads(logit_bias)

    def make_prompts(request_index: int) -> list[str]:
        # Only seed tasks are sampled, from an RNG of (seed, request index) alone, so a prompt never depends
        # on other requests' results and a resumed run sends what an uninterrupted one would.
        rng = random.Random(f"{seed}:{request_index}")
        return [encode_prompt(rng.sample(seed_instruction_data, num_prompt_instructions))
                for _ in range(request_batch_size)]

    progress_bar = tqdm.tqdm(total=num_instructions_to_generate, initial=len(machine_instruction_data), unit="instr",
                             desc="kept")
    totals = {"requests": 0, "cached": 0, "parsed": 0, "kept": 0, "drops": Counter(), "prompt_tokens": 0,
              "completion_tokens": 0, "cost": 0.0}

    def should_launch(unprocessed: int) -> bool:
        # Hold back new requests when those already sent will likely reach the goal (saves money at the end).
        remaining = num_instructions_to_generate - len(machine_instruction_data)
        kept_per_request = totals["kept"] / totals["requests"] if totals["requests"] else 0.0
        return kept_per_request * unprocessed < remaining

    def process(request_index: int, result: dict) -> None:
        process_start = time.time()
        drops: Counter = Counter()
        instruction_data = []
        for choice in result["choices"]:
            if api_type == "chat":
                choice = {**choice, "text": chat_reply_as_continuation(choice["text"], num_prompt_instructions + 1)}
            instruction_data += post_process_gpt3_response(num_prompt_instructions, choice, drops)
        parsed = len(instruction_data) + sum(v for k, v in drops.items() if k not in ("format", "truncated"))
        kept = []
        for instruction_data_entry in instruction_data:
            reason = clean_drop_reason(instruction_data_entry) if clean else None
            if reason:
                drops[reason] += 1
                continue
            rouge_scores = similarity_index.scores(instruction_data_entry["instruction"])
            if rouge_scores.max() > SIMILARITY_THRESHOLD:
                drops["similarity"] += 1
                continue
            instruction_data_entry["most_similar_instructions"] = most_similar(rouge_scores, all_instructions, 10)
            instruction_data_entry["avg_similarity_score"] = float(np.mean(rouge_scores))
            kept.append(instruction_data_entry)
            machine_instruction_data.append(instruction_data_entry)
            all_instructions.append(instruction_data_entry["instruction"])
            similarity_index.add(instruction_data_entry["instruction"])
            progress_bar.update(1)
        usage = result["usage"]
        paid = {k: 0 if result["cached"] else v for k, v in usage.items()}  # a replayed response costs nothing now
        cost = (paid["prompt_tokens"] * (price_per_1k_prompt_tokens or 0)
                + paid["completion_tokens"] * (price_per_1k_completion_tokens or 0)) / 1000
        append_journal(journal_path, {"request_index": request_index, "kept": kept, "parsed": parsed,
                                      "dropped": dict(drops), "usage": usage})
        totals["requests"] += 1
        totals["parsed"] += parsed
        totals["kept"] += len(kept)
        totals["drops"].update(drops)
        totals["cached"] += result["cached"]
        totals["prompt_tokens"] += paid["prompt_tokens"]
        totals["completion_tokens"] += paid["completion_tokens"]
        totals["cost"] += cost
        priced = price_per_1k_prompt_tokens is not None or price_per_1k_completion_tokens is not None
        tqdm.tqdm.write(
            f"Request {request_index}: {len(result['choices'])} completions in {result['seconds']:.2f}s"
            f"{' (cached)' if result['cached'] else ''}, processing {time.time() - process_start:.2f}s | "
            f"parsed {parsed}, kept {len(kept)}, dropped: {format_counts(drops)} | tokens {usage['total_tokens']:,}"
            + (f" | cost ${cost:.4f} (total ${totals['cost']:.4f})" if priced else ""))

    async def generate() -> None:
        cache_dir = os.path.join(output_dir, "responses") if cache else None
        async with LLMEndpoint(api_type, model_name, api_base, max_concurrency, requests_per_minute,
                               tokens_per_minute, max_retries, retry_base_delay, retry_max_delay,
                               request_timeout, cache_dir) as endpoint:
            tqdm.tqdm.write(f"Generating with {endpoint.model_name} at {endpoint.api_base} ({api_type}), "
                            f"{max_concurrency} requests in flight, from request {first_request}")
            last_request = first_request + max_requests - 1 if max_requests is not None else None
            results = complete_in_order(endpoint, make_prompts, decoding_args, first_request, last_request,
                                        should_launch=should_launch, logit_bias=logit_bias)
            async with aclosing(results) as stream:
                async for request_index, _, result in stream:
                    process(request_index, result)
                    if len(machine_instruction_data) >= num_instructions_to_generate:
                        break

    start = time.time()
    try:
        if len(machine_instruction_data) < num_instructions_to_generate:
            asyncio.run(generate())
    finally:
        progress_bar.close()
        # regen.json in the original's format; written once (the journal holds every request's entries).
        utils.jdump(machine_instruction_data, regen_path + ".tmp")
        os.replace(regen_path + ".tmp", regen_path)
        tokens = totals["prompt_tokens"] + totals["completion_tokens"]
        print(f"Kept {totals['kept']} of {totals['parsed']} parsed instructions from {totals['requests']} requests "
              f"({totals['cached']} replayed from the cache) in {time.time() - start:.1f}s; dropped: "
              f"{format_counts(totals['drops'])}; tokens used {tokens:,} "
              f"(prompt {totals['prompt_tokens']:,}, completion {totals['completion_tokens']:,})"
              + (f"; cost ${totals['cost']:.4f}" if totals["cost"] else "")
              + f". {len(machine_instruction_data)} instructions in {regen_path}")
    return machine_instruction_data


def raise_keyboard_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(task: str, **kwargs):
    """`python -m generate_instruction TASK --flag value ...`: run a function of this module by name
    (`generate_instruction_following_data`); `TASK --help` lists its flags."""
    function = globals().get(task)
    if not callable(function):
        print(f"error: unknown task '{task}'; use generate_instruction_following_data.", file=sys.stderr)
        sys.exit(2)
    if kwargs.pop("help", False) or kwargs.pop("h", False):
        parameters = inspect.signature(function).parameters.items()
        defaults = "\n".join(f"    --{name} {parameter.default!r}" for name, parameter in parameters)
        print(f"usage: python -m generate_instruction {task} [--flag value ...]\n\n{inspect.getdoc(function)}\n\n"
              f"Flags and their defaults:\n{defaults}")
        return
    known = inspect.signature(function).parameters
    unknown = [f"--{name}" for name in kwargs if name not in known]
    if unknown:
        print(f"error: unknown flag {', '.join(unknown)}; `python -m generate_instruction {task} --help` lists "
              "the flags.", file=sys.stderr)
        sys.exit(2)
    signal.signal(signal.SIGTERM, raise_keyboard_interrupt)  # kill, timeout, SLURM: save as for Ctrl-C
    try:
        function(**kwargs)
    except (LLMError, SeedTaskError, FlagError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted: every instruction kept so far is saved; re-run the same command to resume.",
              file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    fire.Fire(main)
