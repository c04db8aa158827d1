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
loses nothing and a re-run resumes; one run at a time per output_dir (a lock file, released by the OS when
the process dies); `--clean True` adds filters for defects found in the released 52K data.
Run with `--help` after the task name for every flag.
"""

import asyncio
import dataclasses
import functools
import json
import os
import random
import re
import string
import sys
import time
import unicodedata
from collections import Counter
from contextlib import aclosing

import numpy as np
import tqdm

from alpaca import REPO_ROOT, cli, errors, files
from alpaca.generate import conversations
from alpaca.generate import language as languages
from alpaca.generate.journal import (
    JOURNAL_NAME,
    append_journal,
    claimed_output_dir,
    interrupts_deferred,
    load_generated,
    sync_journal,
    write_regen_json,
)
from alpaca.generate.rouge_l import RougeLIndex, most_similar
from alpaca.llm.client import (
    DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_MODEL_NAMES,
    LLMEndpoint,
    OpenAIDecodingArguments,
    check_settings,
    complete_in_order,
)
from alpaca.llm.settings import ENDPOINT_FLAGS, dollars

__all__ = ["RougeLIndex", "encode_prompt", "post_process_gpt3_response", "generate_instruction_following_data"]

PROMPT_PATH = str(REPO_ROOT / "prompt.txt")
SIMILARITY_THRESHOLD = 0.7  # ROUGE-L F1 above which a new instruction counts as a near-duplicate
STOP_SEQUENCES = ["\n20", "20."]  # the prompt asks for 20 tasks: stop where the 20th would begin
BLACKLIST = ["image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps", "draw",
             "plot", "go to", "video", "audio", "music", "flowchart", "diagram"]  # a text-only model cannot do these
# Requests in a row that hold not one task in the prompt's format before the run stops: the server is not
# continuing the list (a chat model on the completions endpoint, a wrong model, an error page as text).
MAX_FRUITLESS_REQUESTS = 10
ENGLISH_RULE = "5. Write all instructions in English."  # prompt.txt's line that --language replaces
TRANSLATED_SEEDS_NAME = "seed_tasks.{language}.jsonl"  # --translate_seed_tasks's file in output_dir
INTERRUPTED = "interrupted: every instruction kept so far is saved; re-run the same command to resume."


class SeedTaskError(errors.DataError):
    """The seed tasks file cannot be used; the message names the file and the line."""


class FlagError(errors.UsageError):
    """A command-line flag with a value that cannot work; the message names it."""


class FruitlessRunError(errors.UserError):
    """Request after request yielded no task in the prompt's format; the message says what the server returned."""


def encode_prompt(prompt_instructions: list[dict], language: str = "en") -> str:
    """prompt.txt followed by the given tasks numbered from 1, ending with an open `###\\n{k+1}. Instruction:`.
    For a `language` other than English, prompt.txt's requirement 5 ("Write all instructions in English.") asks
    for every field in that language instead (`languages.prompt_language_rule`)."""
    with open(PROMPT_PATH, encoding="utf-8") as f:
        prompt = f.read() + "\n"
    if language != "en":
        prompt = with_language_rule(prompt, language)
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


def post_process_gpt3_response(num_prompt_instructions: int, response, drop_counts: Counter | None = None,
                                language: str = "en") -> list:
    """Parse one completion (a mapping with `text` and `finish_reason`, or None) into the tasks it holds:
    a list of {"instruction", "input", "output"} that pass the original's filters, in order.
    `drop_counts`, when given, is incremented once per skipped task under the reason it was skipped.
    `language` other than "en": the filters of that language (`filter_drop_reason`), then the language check
    (`language_drop_reason`)."""
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
        reason = filter_drop_reason(inst, language)
        if reason is None and language != "en":
            reason = language_drop_reason({"instruction": inst, "output": output}, language)
        if reason:
            drops[reason] += 1
            continue
        instructions.append({"instruction": inst, "input": task_input, "output": output})
    return instructions


def filter_drop_reason(instruction: str, language: str = "en") -> str | None:
    """Why the original's filters drop a parsed instruction (`length`, `blacklist`, `write_a_program`,
    `punctuation`, `non_ascii`), or None to keep it. `data_tools.py` applies the same rules to existing data.
    For another language (ISO 639-1) the same rules as that language has them (`other_language_drop_reason`)."""
    if language != "en":
        return other_language_drop_reason(instruction, language)
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


def other_language_drop_reason(instruction: str, language: str) -> str | None:
    """The original's filters for an instruction in another language: `length` in the language's units (characters
    for Chinese, Japanese, Thai; words elsewhere; `languages.length_limits`); `blacklist` and `write_a_program`
    where the language has them written down (German, Chinese; off elsewhere); `punctuation` when the first
    character is punctuation (ASCII, as the original, or any Unicode punctuation); `first_character` when it is no
    letter or digit at all (the original's `non_ascii` would drop every "Übersetze ..." and every Chinese task)."""
    shortest, longest = languages.length_limits(language)
    length = languages.count_units(instruction, language)
    if length <= shortest or length > longest:
        return "length"
    if language in languages.CHARACTER_LANGUAGES:
        if any(word in instruction for word in languages.BLACKLISTS.get(language, ())):
            return "blacklist"
    elif any(find_word_in_string(re.escape(word), instruction) for word in languages.BLACKLISTS.get(language, ())):
        return "blacklist"
    if any(instruction.startswith(prefix) for prefix in languages.PROGRAM_PREFIXES.get(language, ())):
        return "write_a_program"
    first = instruction[0]
    if first in string.punctuation or unicodedata.category(first).startswith("P"):
        return "punctuation"
    if not unicodedata.category(first).startswith(("L", "N")):
        return "first_character"
    return None


def language_drop_reason(task: dict, language: str) -> str | None:
    """`language` when the instruction is not in `language` (ISO 639-1), or its output, code left out, holds
    enough prose to tell (`languages.says_enough`) and is in another language; else None. lingua decides."""
    if not languages.is_in_language(task["instruction"], language):
        return "language"
    if languages.prose_in_other_language(task["output"], language):
        return "language"
    return None


def with_language_rule(prompt: str, language: str) -> str:
    """The prompt with requirement 5 asking for `language`; FlagError when prompt.txt no longer has the line."""
    if ENGLISH_RULE not in prompt:
        raise FlagError(f"--language {language} rewrites the line {ENGLISH_RULE!r} of {PROMPT_PATH}, which is not "
                        "there; restore it, or write the prompt in your language yourself and use --language en.")
    return prompt.replace(ENGLISH_RULE, languages.prompt_language_rule(language), 1)


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
    if not os.path.isfile(seed_tasks_path):
        raise SeedTaskError(f"Seed tasks file {seed_tasks_path} does not exist; pass --seed_tasks_path.")
    try:
        lines = list(files.read_jsonl(seed_tasks_path))
    except errors.DataError as error:  # not UTF-8, not JSON: the message already names the file and the line
        raise SeedTaskError(str(error)) from None
    seed_instruction_data = []
    for line_number, task in lines:
        where = f"{seed_tasks_path}, line {line_number}"
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


def check_flags(num_tasks: int, seed_tasks_path: str, num_prompt_instructions: int, **positive: int) -> None:
    """FlagError for values that cannot work: more prompt tasks than seeds, a count that is not a positive integer."""
    if not isinstance(num_prompt_instructions, int) or not 1 <= num_prompt_instructions <= num_tasks:
        raise FlagError(f"--num_prompt_instructions must be between 1 and the {num_tasks} seed tasks in "
                        f"{seed_tasks_path}, not {num_prompt_instructions!r}.")
    for flag, value in positive.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise FlagError(f"--{flag} must be a positive whole number, not {value!r}.")


def parse_logit_bias(logit_bias: dict | str | None) -> dict | None:
    """--logit_bias as the request's {token id (str): bias}, from a dict or its JSON text; FlagError otherwise."""
    value = logit_bias
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            value = None
    if logit_bias is not None and not (isinstance(value, dict) and all(
            isinstance(b, (int, float)) and not isinstance(b, bool) for b in value.values())):
        raise FlagError(f"--logit_bias must be a JSON object of token id to bias, e.g. '{{\"50256\": -100}}', "
                        f"not {logit_bias!r}.")
    return {str(token): bias for token, bias in value.items()} if value is not None else None


# -- one request: prompts, parsing, the similarity filter, the counts -------------------------------


def request_prompts(seed_tasks: list[dict], num_prompt_instructions: int, request_batch_size: int, seed: int,
                    request_index: int, language: str = "en") -> list[str]:
    """The `request_batch_size` prompts of request `request_index`, each showing `num_prompt_instructions` seed
    tasks. Only seed tasks are sampled, from an RNG of (seed, request index) alone, so a prompt never depends on
    other requests' results and a resumed run sends what an uninterrupted one would."""
    rng = random.Random(f"{seed}:{request_index}")
    return [encode_prompt(rng.sample(seed_tasks, num_prompt_instructions), language)
            for _ in range(request_batch_size)]


def parse_result(result: dict, num_prompt_instructions: int, api_type: str,
                 language: str = "en") -> tuple[list[dict], int, Counter]:
    """(tasks passing the original's filters, tasks in the prompt's format, drops by reason) of one request."""
    drops: Counter = Counter()
    tasks = []
    for choice in result["choices"]:
        if api_type == "chat":
            choice = {**choice, "text": chat_reply_as_continuation(choice["text"], num_prompt_instructions + 1)}
        tasks += post_process_gpt3_response(num_prompt_instructions, choice, drops, language)
    parsed = len(tasks) + sum(n for reason, n in drops.items() if reason not in ("format", "truncated"))
    return tasks, parsed, drops


class InstructionPool:
    """The instructions a new one is compared with, the seeds and every one kept so far: their texts (for the
    top-10 lists) and their ROUGE-L index, one home that grows in one step."""

    def __init__(self, instructions: list[str], num_threads: int, language: str = "en"):
        self.instructions = list(instructions)
        self.index = RougeLIndex(self.instructions, num_threads=num_threads, language=language)

    def add(self, instruction: str) -> None:
        self.instructions.append(instruction)
        self.index.add(instruction)


def keep_novel_tasks(tasks: list[dict], pool: InstructionPool, clean: bool, drops: Counter) -> list[dict]:
    """The tasks that pass --clean's filters (when on) and are no near-copy (ROUGE-L F1 above 0.7) of any pool
    instruction, each with its 10 most similar instructions and its mean similarity; each kept task joins the pool
    before the next is scored. Dropped tasks are counted in `drops`."""
    kept = []
    for task in tasks:
        reason = clean_drop_reason(task) if clean else None
        if reason:
            drops[reason] += 1
            continue
        scores = pool.index.scores(task["instruction"])
        if scores.max() > SIMILARITY_THRESHOLD:
            drops["similarity"] += 1
            continue
        task["most_similar_instructions"] = most_similar(scores, pool.instructions, 10)
        task["avg_similarity_score"] = float(np.mean(scores))
        kept.append(task)
        pool.add(task["instruction"])
    return kept


def format_counts(counts: Counter) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in counts.most_common() if n) or "none"


def describe_completions(choices: list[dict]) -> str:
    """What a request's completions were, in a few words: for a message about a server that yields nothing."""
    texts = [" ".join(c["text"].split()) for c in choices]
    reasons = ", ".join(sorted({str(c["finish_reason"]) for c in choices}))
    sample = next((t for t in texts if t), None)
    if sample is None:
        return f"{len(texts)} empty completion{'s' * (len(texts) != 1)} (finish_reason {reasons})"
    shown = sample if len(sample) <= 80 else sample[:77] + "..."
    return f"{len(texts)} completion{'s' * (len(texts) != 1)} (finish_reason {reasons}) such as {shown!r}"


@dataclasses.dataclass
class Totals:
    """What this run's requests gave: the per-request log line, the closing summary, and the count of requests
    in a row that held no task at all."""

    price_per_1k_prompt_tokens: float | None = None
    price_per_1k_completion_tokens: float | None = None
    requests: int = 0
    cached: int = 0
    parsed: int = 0
    kept: int = 0
    drops: Counter = dataclasses.field(default_factory=Counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    fruitless_in_a_row: int = 0
    barren_in_a_row: int = 0  # requests in a row that kept nothing new
    start: float = dataclasses.field(default_factory=time.time)

    def add(self, request_index: int, result: dict, parsed: int, kept: list[dict], drops: Counter,
            processing_seconds: float) -> None:
        """Count one processed request and print its line."""
        usage = result["usage"]
        paid = {k: 0 if result["cached"] else v for k, v in usage.items()}  # a replayed response costs nothing now
        cost = dollars(paid, self.price_per_1k_prompt_tokens, self.price_per_1k_completion_tokens)
        self.requests += 1
        self.cached += result["cached"]
        self.parsed += parsed
        self.kept += len(kept)
        self.drops.update(drops)
        self.prompt_tokens += paid["prompt_tokens"]
        self.completion_tokens += paid["completion_tokens"]
        self.cost += cost
        self.fruitless_in_a_row = 0 if parsed else self.fruitless_in_a_row + 1
        self.barren_in_a_row = 0 if kept else self.barren_in_a_row + 1
        priced = self.price_per_1k_prompt_tokens is not None or self.price_per_1k_completion_tokens is not None
        tqdm.tqdm.write(
            f"Request {request_index}: {len(result['choices'])} completions in {result['seconds']:.2f}s"
            f"{' (cached)' if result['cached'] else ''}, processing {processing_seconds:.2f}s | "
            f"parsed {parsed}, kept {len(kept)}, dropped: {format_counts(drops)} | tokens {usage['total_tokens']:,}"
            + (f" | cost ${cost:.4f} (total ${self.cost:.4f})" if priced else ""))

    def summary(self, num_generated: int, regen_path: str) -> str:
        tokens = self.prompt_tokens + self.completion_tokens
        return (f"Kept {self.kept} of {self.parsed} parsed instructions from {self.requests} requests "
                f"({self.cached} replayed from the cache) in {time.time() - self.start:.1f}s; dropped: "
                f"{format_counts(self.drops)}; tokens used {tokens:,} (prompt {self.prompt_tokens:,}, completion "
                f"{self.completion_tokens:,})" + (f"; cost ${self.cost:.4f}" if self.cost else "")
                + (f". {num_generated} instructions in {regen_path}" if self.requests or num_generated
                   else ". Nothing was generated, so no regen.json was written"))


def raise_if_fruitless(totals: Totals, result: dict, api_base: str, output_dir: str) -> None:
    """Stop a run whose last MAX_FRUITLESS_REQUESTS requests held no task in the prompt's format, saying what the
    server returned, instead of paying for requests without end."""
    if totals.fruitless_in_a_row < MAX_FRUITLESS_REQUESTS:
        return
    raise FruitlessRunError(
        f"The last {MAX_FRUITLESS_REQUESTS} requests to {api_base} held no task in the prompt's numbered format; "
        f"the last one returned {describe_completions(result['choices'])}. Check that --model_name continues text "
        f"(an instruction-tuned model may need --api_type chat), or read the raw responses in "
        f"{os.path.join(output_dir, 'responses')}.")


def stale_teacher_message(totals: Totals, limit: int) -> str:
    """Why a run stops early when its teacher only repeats itself, and how to go on."""
    return (f"warning: stopping: the last {limit} requests kept no new instruction (this run dropped: "
            f"{format_counts(totals.drops)}); the teacher keeps writing what the pool already holds. Everything kept "
            "is saved. To go on: raise --temperature, show more seed tasks (--num_prompt_instructions), use another "
            "teacher, or pass --max_requests_without_new 0; re-running the command resumes.")


def worth_launching(totals: Totals, remaining: int, unprocessed: int) -> bool:
    """Whether to send another request while `unprocessed` ones are in flight or waiting: not when those will
    likely reach the goal of `remaining` more instructions (saves money at the end)."""
    kept_per_request = totals.kept / totals.requests if totals.requests else 0.0
    return kept_per_request * unprocessed < remaining


# -- seed tasks in another language (--translate_seed_tasks) ----------------------------------------

TRANSLATION_PROMPT = (
    "Translate this task from English into {name}: its instruction, its input and its output. Adapt names, places, "
    "currencies, units and examples so that they are natural for {english}-speaking readers; keep code, numbers and "
    "the layout as they are. Keep the markers \"1. Instruction:\", \"1. Input:\", \"1. Output:\" and <noinput> "
    "exactly as they are, in English.\n\n"
    "1. Instruction: {instruction}\n1. Input:\n{input}\n1. Output:\n{output}\n###\n"
    "The translation:\n1. Instruction:")


def translation_prompt(task: dict, language: str) -> str:
    """The prompt asking the teacher to translate one seed task into `language`, answered in the generator's own
    numbered format (so that one parser reads it), continued after its open `1. Instruction:`."""
    name = languages.language_name(language)
    return TRANSLATION_PROMPT.format(name=name, english=languages.NAMES.get(language, (name,))[0],
                                     instruction=task["instruction"], input=task["input"] or "<noinput>",
                                     output=task["output"])


def parse_translation(text: str, api_type: str) -> dict | None:
    """The translated task ({"instruction", "input", "output"}) of one reply, or None when it is not in the format."""
    if api_type == "chat":
        text = chat_reply_as_continuation(text, 1)
    pieces = re.split(r"1\.\s+(Instruction|Input|Output):", "1. Instruction:" + text.split("###")[0])
    if len(pieces) != 7 or not pieces[2].strip() or not pieces[6].strip():
        return None
    task_input = pieces[4].strip()
    return {"instruction": pieces[2].strip(), "input": "" if task_input.lower() == "<noinput>" else task_input,
            "output": pieces[6].strip()}


def translated_seed_tasks(seed_tasks: list[dict], language: str, output_dir: str, endpoint_settings: dict,
                          request_batch_size: int, totals: "Totals") -> list[dict]:
    """The seed tasks in `language`: read from output_dir/seed_tasks.LANG.jsonl when an earlier run wrote it (no
    cost), else translated once through the run's endpoint (temperature 0, one prompt per seed task, replies
    cached like the generator's), written there as a seed-task file (usable as --seed_tasks_path), and the cost
    printed. A reply that is not in the format drops that seed task (counted)."""
    path = os.path.join(output_dir, TRANSLATED_SEEDS_NAME.format(language=language))
    name = languages.language_name(language)
    if os.path.exists(path):
        translated = load_seed_tasks(path)
        print(f"Loaded {len(translated)} seed tasks in {name} from {path} (translated by an earlier run; no cost)")
        return translated
    prompts = [translation_prompt(task, language) for task in seed_tasks]
    batches = [prompts[i:i + request_batch_size] for i in range(0, len(prompts), request_batch_size)]
    decoding_args = OpenAIDecodingArguments(temperature=0.0, n=1, max_tokens=1024, stop=["###"])
    replies: list[dict] = []
    usage = Counter()
    cost = totals.price_per_1k_prompt_tokens is not None or totals.price_per_1k_completion_tokens is not None

    async def translate() -> None:
        async with LLMEndpoint(**endpoint_settings) as endpoint:
            results = complete_in_order(endpoint, lambda index: batches[index], decoding_args, 0, len(batches) - 1)
            async with aclosing(results) as stream:
                async for _, _, result in stream:
                    replies.extend(result["choices"])
                    if not result["cached"]:
                        usage.update(result["usage"])

    start = time.time()
    asyncio.run(translate())
    spent = dollars(usage, totals.price_per_1k_prompt_tokens, totals.price_per_1k_completion_tokens)
    tasks = [parse_translation(reply["text"], endpoint_settings["api_type"]) for reply in replies]
    translated = [task for task in tasks if task is not None]
    lines = [json.dumps({"id": f"seed_task_{i}", "instruction": task["instruction"],
                         "instances": [{"input": task["input"], "output": task["output"]}]}, ensure_ascii=False)
             for i, task in enumerate(translated)]
    files.write_atomically(path, "".join(line + "\n" for line in lines))
    print(f"Translated {len(translated)} of {len(seed_tasks)} seed tasks into {name} in {time.time() - start:.1f}s "
          f"with {len(batches)} requests ({len(seed_tasks) - len(translated)} replies not in the format); tokens "
          f"used {usage['prompt_tokens'] + usage['completion_tokens']:,} (prompt {usage['prompt_tokens']:,}, "
          f"completion {usage['completion_tokens']:,})" + (f", cost ${spent:.4f}" if cost else "")
          + f". Written to {path}; later runs in this output_dir reuse it at no cost.")
    if not translated:
        raise FruitlessRunError(f"No reply to the {len(prompts)} translation prompts was in the format; read them in "
                                f"{endpoint_settings['cache_dir'] or 'the server log'} or pass translated seed tasks "
                                "with --seed_tasks_path.")
    return translated


def note_seed_language(seed_tasks: list[dict], language: str, seed_tasks_path: str) -> None:
    """Say so when most seed tasks are not in `language`: the prompt shows them as they are."""
    sample = [task["instruction"] for task in seed_tasks[:20]]
    other = sum(not languages.is_in_language(instruction, language) for instruction in sample)
    if other > len(sample) / 2:
        print(f"note: {other} of the first {len(sample)} seed instructions in {seed_tasks_path} are not in "
              f"{languages.language_name(language)}; the prompts show them as they are. Pass seed tasks in that "
              f"language with --seed_tasks_path, or --translate_seed_tasks True to translate them once.")


# -- the loop ---------------------------------------------------------------------------------------


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
    language: str = "en",
    translate_seed_tasks: bool = False,
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    num_turns: int = 1,
    max_requests_without_new: int = 200,
) -> list[dict]:
    """Generate instructions until output_dir/regen.json holds at least `num_instructions_to_generate`.

    Arguments (the original's first):
        output_dir: where regen.json, the journal and the response cache go; an earlier run there is resumed.
            One run at a time: a second one on the same directory refuses to start.
        seed_tasks_path: JSONL of seed tasks ({"instruction", "instances": [{"input", "output"}], ...}).
        num_instructions_to_generate: stop once this many instructions are kept (the last request's all count).
        model_name: default gpt-3.5-turbo-instruct (completions) or gpt-4o-mini (chat); a directory for local.
        num_prompt_instructions: seed tasks shown in each prompt.
        request_batch_size: prompts per request (completions endpoint; chat sends one request per prompt, and so
            does a completions server that refuses a list of prompts, such as llama.cpp's or `transformers serve`).
        temperature, top_p: sampling settings.
        num_cpus: threads for ROUGE-L scoring.
        max_tokens: tokens to generate per prompt (the original's 3072); shrunk 20% per context-length error.
        logit_bias: e.g. '{"50256": -100}', the original's GPT-3 setting against <|endoftext|>; off by default.
        seed: fixes which seed tasks each prompt shows.
        clean: also drop merged tasks, empty/N-A outputs, no-input markers in other spellings, URL-only inputs.
        cache: replay and store raw responses in output_dir/responses.
        price_per_1k_prompt_tokens, price_per_1k_completion_tokens: dollars, to log the cost.
        max_requests: stop after this many requests in this run even if fewer instructions were kept.
        max_requests_without_new: stop after this many requests in a row that kept no new instruction (the teacher
            repeats itself: everything it writes is a near-duplicate or filtered); 0 never stops for that.
        language: ISO 639-1 code of the language to generate in (default en: the original's prompt and filters).
            Another language: the prompt asks for every task in it; lengths count its units (characters for zh,
            ja, th); tasks whose instruction or output is in another language are dropped as `language`;
            ROUGE-L scores its units (docs/languages.md).
        translate_seed_tasks: with --language, translate the seed tasks into it once through the same endpoint
            (one request per seed task at temperature 0; cost printed) and keep them in
            output_dir/seed_tasks.LANG.jsonl for later runs; without it the seed tasks are shown as given.
        num_turns: user turns per example. 1: Alpaca records, as the original. N > 1: each kept task grows by
            self-chat (the teacher writes a follow-up user turn from the conversation so far, then answers it)
            into a {"messages": [...]} conversation; the novelty filter runs on the first instruction
            (docs/conversations.md).
    Returns the kept instructions (also written to output_dir/regen.json). The run stops with an error after
    10 requests in a row without a single task in the prompt's format.
    """
    language = languages.check_language(language)
    if translate_seed_tasks and language == "en":
        raise FlagError("--translate_seed_tasks translates the seed tasks into --language; give one other than en.")
    seed_tasks = load_seed_tasks(seed_tasks_path)
    check_flags(len(seed_tasks), seed_tasks_path, num_prompt_instructions, num_cpus=num_cpus,
                num_instructions_to_generate=num_instructions_to_generate, request_batch_size=request_batch_size,
                max_concurrency=max_concurrency, num_turns=num_turns)
    logit_bias = parse_logit_bias(logit_bias)
    model_name = model_name or DEFAULT_MODEL_NAMES.get(api_type)
    check_settings(api_type, model_name, api_base, requests_per_minute=requests_per_minute,
                   tokens_per_minute=tokens_per_minute, max_retries=max_retries, retry_base_delay=retry_base_delay,
                   retry_max_delay=retry_max_delay, request_timeout=request_timeout, temperature=temperature,
                   top_p=top_p, max_response_bytes=max_response_bytes)
    print(f"Loaded {len(seed_tasks)} human-written seed instructions")
    endpoint_settings = dict(
        api_type=api_type, model_name=model_name, api_base=api_base, max_concurrency=max_concurrency,
        requests_per_minute=requests_per_minute, tokens_per_minute=tokens_per_minute, max_retries=max_retries,
        retry_base_delay=retry_base_delay, retry_max_delay=retry_max_delay, request_timeout=request_timeout,
        cache_dir=os.path.join(output_dir, "responses") if cache else None, max_response_bytes=max_response_bytes)
    decoding_args = OpenAIDecodingArguments(temperature=temperature, n=1, max_tokens=max_tokens, top_p=top_p,
                                            stop=STOP_SEQUENCES)
    totals = Totals(price_per_1k_prompt_tokens, price_per_1k_completion_tokens)

    with claimed_output_dir(output_dir):
        if translate_seed_tasks:
            seed_tasks = translated_seed_tasks(seed_tasks, language, output_dir, endpoint_settings,
                                               request_batch_size, totals)
            check_flags(len(seed_tasks), TRANSLATED_SEEDS_NAME.format(language=language), num_prompt_instructions)
        elif language != "en":
            note_seed_language(seed_tasks, language, seed_tasks_path)
        generated, first_request = load_generated(output_dir)
        if generated:
            print(f"Loaded {len(generated)} machine-generated instructions")
        run = Run(output_dir=output_dir, goal=num_instructions_to_generate,
                  num_prompt_instructions=num_prompt_instructions, api_type=api_type, language=language, clean=clean,
                  num_turns=num_turns, max_requests_without_new=max_requests_without_new,
                  pool=InstructionPool([conversations.first_instruction(t) for t in seed_tasks + generated],
                                       num_threads=num_cpus, language=language),
                  generated=generated, totals=totals, decoding_args=decoding_args,
                  progress=tqdm.tqdm(total=num_instructions_to_generate, initial=len(generated), unit="instr",
                                     desc="kept"))
        prompts_for = functools.partial(request_prompts, seed_tasks, num_prompt_instructions, request_batch_size,
                                        seed, language=language)
        last_request = first_request + max_requests - 1 if max_requests is not None else None
        try:
            if len(generated) < num_instructions_to_generate:
                asyncio.run(generate(run, endpoint_settings, prompts_for, first_request, last_request, logit_bias))
        finally:
            run.progress.close()
            sync_journal(run.journal_path)
            regen_path = os.path.join(output_dir, "regen.json")
            if totals.requests or generated:  # an endpoint that never answered leaves no empty regen.json
                write_regen_json(regen_path, generated)
            print(totals.summary(len(generated), regen_path))
    return generated


@dataclasses.dataclass
class Run:
    """What the steps of one generation run share: the settings that decide what is kept, the pool of instructions
    to be novel against, the instructions kept so far (regen.json's content) and the run's counts."""
    output_dir: str
    goal: int  # --num_instructions_to_generate
    num_prompt_instructions: int
    api_type: str
    language: str
    clean: bool
    num_turns: int
    max_requests_without_new: int
    pool: InstructionPool
    generated: list[dict]
    totals: Totals
    decoding_args: OpenAIDecodingArguments
    progress: tqdm.tqdm

    @property
    def journal_path(self) -> str:
        return os.path.join(self.output_dir, JOURNAL_NAME)


async def generate(run: Run, endpoint_settings: dict, prompts_for, first_request: int, last_request: int | None,
                   logit_bias: dict | None) -> None:
    """Send requests first_request, first_request + 1, ... (up to last_request) with `max_concurrency` in flight,
    and keep what each reply adds, in request order, until the goal is reached or the teacher has gone stale."""
    async with LLMEndpoint(**endpoint_settings) as endpoint:
        tqdm.tqdm.write(f"Generating with {endpoint.model_name} at {endpoint.api_base} ({run.api_type}), "
                        f"{endpoint.max_concurrency} requests in flight, from request {first_request}")
        results = complete_in_order(
            endpoint, prompts_for, run.decoding_args, first_request, last_request, logit_bias=logit_bias,
            should_launch=lambda unprocessed: worth_launching(run.totals, run.goal - len(run.generated), unprocessed))
        async with aclosing(results) as stream:
            async for request_index, _, result in stream:
                await keep_from_reply(run, endpoint, request_index, result)
                if len(run.generated) >= run.goal:
                    break
                if run.max_requests_without_new and run.totals.barren_in_a_row >= run.max_requests_without_new:
                    tqdm.tqdm.write(stale_teacher_message(run.totals, run.max_requests_without_new), file=sys.stderr)
                    break


async def keep_from_reply(run: Run, endpoint: LLMEndpoint, request_index: int, result: dict) -> None:
    """One reply's work: parse its tasks, filter them, keep the novel ones (grown into conversations with
    --num_turns), journal them with the request's counts and add them to regen.json's list, in one step that an
    interrupt cannot split. Raises FruitlessRunError after MAX_FRUITLESS_REQUESTS replies in a row without a task."""
    process_start = time.time()
    tasks, parsed, drops = parse_result(result, run.num_prompt_instructions, run.api_type, run.language)
    kept = keep_novel_tasks(tasks, run.pool, run.clean, drops)
    if run.num_turns > 1:  # each kept task becomes a conversation, before it is journaled
        kept, usage = await conversations.grow_conversations(endpoint, kept, run.num_turns, run.decoding_args,
                                                             run.api_type, request_index)
        result = {**result, "usage": {k: v + usage.get(k, 0) for k, v in result["usage"].items()}}
    with interrupts_deferred():  # regen.json, written from `generated`, equals the journal
        append_journal(run.journal_path, {"request_index": request_index, "kept": kept, "parsed": parsed,
                                          "dropped": dict(drops), "usage": result["usage"]})
        run.generated.extend(kept)
    run.progress.update(len(kept))
    run.totals.add(request_index, result, parsed, kept, drops, time.time() - process_start)
    raise_if_fruitless(run.totals, result, endpoint.api_base, run.output_dir)


COMMANDS = {"generate_instruction_following_data": generate_instruction_following_data}

def entry_point() -> None:
    """The command line of `python generate_instruction.py`."""
    cli.report_errors(lambda: cli.run_commands(COMMANDS, prog="python -m generate_instruction",
                                               flag_help=ENDPOINT_FLAGS), INTERRUPTED)
