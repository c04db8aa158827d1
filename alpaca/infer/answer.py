r"""Answer Alpaca instructions with a fine-tuned checkpoint, a base model plus a LoRA adapter, or any model behind an
OpenAI-compatible endpoint (vLLM, `transformers serve`, llama.cpp, Ollama, OpenAI).

Locally, each instruction (and optional input) is wrapped in the Alpaca prompt that `train.py` trained on
(`prompts.PROMPT_DICT`), the model continues it, and only the continuation after "### Response:" is returned.
Through an endpoint, `--api_type completions` sends that same prompt as text, and `--api_type chat` sends the
instruction as a user message (and the input as a message with role "input"), which the server turns into the same
prompt with the checkpoint's chat template (see `prompts.py`). Decoding is greedy unless `--do_sample` is given.

    # one instruction (the response goes to stdout)
    python inference.py --model_name_or_path output/alpaca --instruction "Give three tips for staying healthy."
    python inference.py --model_name_or_path output/alpaca --instruction "Translate to French." --input "Good morning"

    # a JSON list or JSONL file of {"instruction", "input"} records -> a JSON list with "output" and "generator"
    python inference.py --model_name_or_path output/alpaca --data_path eval.jsonl --output_path eval_out.json \
        --batch_size 16 --max_new_tokens 256

    # the same file through a served model: 8 requests in flight, responses cached beside the output
    python inference.py --api_base http://localhost:8000/v1 --model_name output/alpaca --api_type chat \
        --data_path eval.jsonl --output_path eval_out.json --max_concurrency 8

    # a base model plus a LoRA adapter written by `train.py --lora_r ...` (or pass the adapter directory alone
    # as --model_name_or_path: its adapter_config.json names the base model)
    python inference.py --model_name_or_path huggyllama/llama-7b --lora_path output/alpaca-lora --instruction "..."

    # interactive: type an instruction, then an optional input; an empty instruction or Ctrl-D ends
    python inference.py --model_name_or_path output/alpaca

    # sampling instead of greedy decoding
    python inference.py --model_name_or_path output/alpaca --instruction "Write a haiku." \
        --do_sample --temperature 0.7 --top_p 0.9 --seed 42

    # K sampled answers per instruction, for `judge.py preferences`: each record gets "outputs" (the K answers)
    # and "output" (the first, so the file still feeds judge.py); an endpoint is asked for n=K in one request,
    # or, where the server refuses n (transformers serve), K requests
    python inference.py --model_name_or_path output/alpaca --data_path eval.jsonl --output_path samples.json \
        --do_sample True --temperature 1.0 --num_samples 4

A prompt that does not fit the model's context together with --max_new_tokens is refused before anything is
generated (the error names each such record); nothing is truncated. Through an endpoint, the server's own limit
applies.
"""

import argparse
import asyncio
import json
import logging
import os
import pathlib
import sys

from alpaca import cli, files
from alpaca.errors import UsageError, UserError
from alpaca.llm.model import (  # noqa: F401  (inference.py's names since 2023; the loader lives in llm/model.py)
    CHAT_TEMPLATE_FIX,
    DTYPES,
    _eos_token_ids,
    _has_tokenizer,
    _pad_token_id,
    check_lora_adapter,
    check_prompt_lengths,
    context_length,
    generate_responses,
    is_lora_adapter,
    left_pad,
    load_model,
    prompt_ids,
    resolve_device,
    resolve_dtype,
    warn_if_not_servable,
)
from alpaca.llm.settings import ENDPOINT_FLAGS, dollars
from alpaca.prompts import conversation
from alpaca.prompts.alpaca import (
    INPUT_ROLE,
    format_prompt,
    is_alpaca_chat_template,
)

# torch and transformers are imported where a model is loaded: a mistyped flag or a bad data file is reported in
# a fraction of a second, and the endpoint mode never pays for them.

logger = logging.getLogger("inference")

def saved_chat_template(model_dir: str | os.PathLike) -> str | None:
    """The chat template a checkpoint directory carries (chat_template.jinja, else tokenizer_config.json's), if any."""
    directory = pathlib.Path(model_dir)
    if (directory / "chat_template.jinja").is_file():
        return (directory / "chat_template.jinja").read_text(encoding="utf-8")
    try:
        config = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return config.get("chat_template") if isinstance(config.get("chat_template"), str) else None


def check_served_template(model_name: str) -> None:
    """When the served model's name is a local checkpoint directory (transformers serve and vLLM name it by its
    path), check before any request that chat requests will become Alpaca prompts there."""
    if not os.path.isdir(model_name):
        return
    template = saved_chat_template(model_name)
    if template is None:
        raise UserError(
            f"'{model_name}' has no chat template, so the server cannot turn chat requests into Alpaca prompts "
            f"(transformers serve answers HTTP 500). Add it with `{CHAT_TEMPLATE_FIX} {model_name}` and restart the "
            "server, or use --api_type completions.")
    if not is_alpaca_chat_template(template):
        logger.warning("'%s' has a chat template that is not the Alpaca one: a model fine-tuned by train.py would get "
                       "prompts in another format. `%s %s --overwrite True` replaces it.", model_name,
                       CHAT_TEMPLATE_FIX, model_name)


def chat_messages(example: dict) -> list[dict]:
    """The chat request for an example: the instruction as the user message, a non-empty input as a message with
    role "input" (which survives servers that flatten content parts; see prompts.py); a conversation record's
    messages up to its last user turn."""
    if conversation.is_conversation(example):
        return conversation.prompt_messages(example["messages"])
    messages = [{"role": "user", "content": example["instruction"]}]
    if example.get("input"):
        messages.append({"role": INPUT_ROLE, "content": example["input"]})
    return messages


async def _answer_through_endpoint(examples: list[dict], args: argparse.Namespace,
                                   progress: bool) -> list[list[str]]:
    """Responses of the endpoint to `examples`, in order, `--num_samples` per example: one request per example
    (servers such as transformers serve and llama.cpp take one prompt per completions request) asking for n
    answers, or n requests where the server refuses `n` (transformers serve: HTTP 400); `--max_concurrency` in
    flight, every response cached before it is used, a usage (and cost) line at the end."""
    import dataclasses

    from tqdm.auto import tqdm

    from alpaca.llm.client import LLMEndpoint, LLMError, OpenAIDecodingArguments

    decoding = OpenAIDecodingArguments(max_tokens=args.max_new_tokens,
                                       temperature=args.temperature if args.do_sample else 0.0,
                                       top_p=args.top_p if args.do_sample else 1.0)
    samples = getattr(args, "num_samples", 1)
    totals = {"requests": 0, "cached": 0, "prompt_tokens": 0, "completion_tokens": 0}
    takes_n = samples == 1  # whether one request may carry n=samples: the first example finds out
    settings = dict(api_type=args.api_type, model_name=args.model_name, api_base=args.api_base,
                    requests_per_minute=args.requests_per_minute, tokens_per_minute=args.tokens_per_minute,
                    request_timeout=args.request_timeout, cache_dir=args.cache_dir,
                    max_response_bytes=args.max_response_bytes)

    async def ask(endpoint: LLMEndpoint, example: dict, n: int, tag: str) -> dict:
        decoding_n = dataclasses.replace(decoding, n=n)
        if args.api_type == "chat":  # the messages replace the one user message build_request would send
            messages = chat_messages(example)
            return await endpoint.complete([conversation.message_texts(messages[-1])[0]], decoding_n, tag,
                                           messages=messages)
        prompt = format_prompt(example["instruction"], example["input"])
        # The prompt as a string, not the one-element list build_request makes: transformers serve and llama.cpp's
        # server reject lists.
        return await endpoint.complete([prompt], decoding_n, tag, prompt=prompt)

    try:
        if not takes_n and examples:
            # One request for n answers, not retried, tells whether the server takes n: transformers serve refuses
            # it on completions (HTTP 400) and ignores it on chat (one choice). Any failure means n requests per
            # example, which also meet (with retries) whatever else went wrong.
            try:
                async with LLMEndpoint(**settings, max_retries=0) as probe:
                    await ask(probe, examples[0], samples, "")
                takes_n = True
            except LLMError as error:
                logger.warning("%s did not answer n=%d in one request (%s); asking for the %d answers of each "
                               "example in %d requests instead.", args.api_base, samples, error, samples, samples)
        async with LLMEndpoint(**settings, max_concurrency=args.max_concurrency,
                               max_retries=args.max_retries) as endpoint:

            async def answer(index: int) -> tuple[int, list[dict]]:
                example = examples[index]
                if takes_n:
                    return index, [await ask(endpoint, example, samples, "")]
                # One answer per request, each its own place in the cache (a sampled answer is not a replay).
                return index, list(await asyncio.gather(*(ask(endpoint, example, 1, f"sample {j}")
                                                          for j in range(samples))))

            tasks = [asyncio.create_task(answer(index)) for index in range(len(examples))]
            responses: list[list[str]] = [[] for _ in examples]
            try:
                for finished in tqdm(asyncio.as_completed(tasks), total=len(tasks), desc="answering",
                                     unit="example", disable=not progress):
                    index, results = await finished
                    for result in results:
                        responses[index] += [choice["text"].strip() for choice in result["choices"]]
                        totals["requests"] += 1
                        totals["cached"] += result["cached"]
                        if not result["cached"]:
                            totals["prompt_tokens"] += result["usage"]["prompt_tokens"]
                            totals["completion_tokens"] += result["usage"]["completion_tokens"]
                    responses[index] = (responses[index] + [""] * samples)[:samples]  # a server with no choice
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
    except LLMError as error:  # a bad key, an unknown model, retries spent: the client's sentence says what to do
        raise UserError(str(error)) from error
    logger.info("%s", usage_line(totals, args))
    repeated = sum(len(set(answers)) == 1 for answers in responses) if samples > 1 else 0
    if repeated * 2 > len(responses):
        logger.warning("%d of %d examples got %d identical answers: the server does not seem to sample. "
                       "transformers serve samples only when the checkpoint's generation_config.json says "
                       "\"do_sample\": true, whatever the temperature.", repeated, len(responses), samples)
    return responses


def usage_line(totals: dict, args: argparse.Namespace) -> str:
    """One line: requests sent and replayed from the cache, tokens paid for, and their cost when prices are given."""
    from alpaca.llm.client import redact_credentials

    line = (f"{totals['requests']} responses from {redact_credentials(args.api_base)} "
            f"({totals['cached']} from the cache); "
            f"{totals['prompt_tokens']:,} prompt + {totals['completion_tokens']:,} completion tokens")
    if args.price_per_1k_prompt_tokens is None and args.price_per_1k_completion_tokens is None:
        return line
    cost = dollars(totals, args.price_per_1k_prompt_tokens, args.price_per_1k_completion_tokens)
    return f"{line}; cost ${cost:.4f}"


# ----------------------------------------------------------------------------- files and the command line

def write_outputs(records: list[dict], path: str) -> None:
    """Write the records as a JSON list (files.jdump's format: indent 4, the Alpaca data files'), atomically."""
    files.write_atomically(path, json.dumps(records, indent=4, default=str))


def check_output_path(path: str, inputs: list[str] = ()) -> None:
    """An output path that cannot be written is refused before any work."""
    target = pathlib.Path(path)
    if target.is_dir():
        raise UserError(f"--output_path '{path}' is a directory; give a file name, e.g. {target / 'answers.json'}.")
    files.check_output_file(path, inputs=inputs, flag="--output_path")


def generator_name(args: argparse.Namespace) -> str:
    """The `generator` written into each record: --generator, else the checkpoint's directory name (the adapter's,
    for LoRA), also when a server names the model by its path, else the served model's name."""
    if args.generator:
        return args.generator
    name = args.model_name if args.api_base else args.lora_path or args.model_name_or_path
    return pathlib.Path(name).resolve().name if os.path.isdir(name) else name


def interactive(answer) -> None:
    """A read-respond loop on stdin: an instruction, then an optional input; an empty instruction or EOF ends it."""
    print("Type an instruction (an empty line or Ctrl-D quits).", file=sys.stderr)
    while True:
        try:
            instruction = input("Instruction: ").strip()
            if not instruction:
                return
            example_input = input("Input (optional, Enter to skip): ").strip()
        except EOFError:
            return
        print("\n\n".join(answer([{"instruction": instruction, "input": example_input}])[0]), flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)  # --max_new_token is a typo, not --max_new_tokens
    model = parser.add_argument_group("a local model")
    model.add_argument("--model_name_or_path", default=None,
                       help="checkpoint directory written by train.py (or a Hub id); may also be a LoRA adapter dir")
    model.add_argument("--lora_path", default=None, help="LoRA adapter directory to apply on top of the model")
    model.add_argument("--device", default="auto", help="cuda, cuda:1, cpu, ...; auto = cuda if available, else cpu")
    model.add_argument("--torch_dtype", default="auto", choices=["auto", *DTYPES],
                       help="weight dtype; auto = the checkpoint's on GPU, float32 on CPU")
    model.add_argument("--trust_remote_code", type=cli.argparse_bool, nargs="?", const=True, default=False,
                       help="allow model code shipped with the checkpoint to run (off by default)")
    endpoint = parser.add_argument_group("or a model behind an OpenAI-compatible endpoint (key: OPENAI_API_KEY)")
    endpoint.add_argument("--api_base", default=None, help=ENDPOINT_FLAGS["api_base"])
    endpoint.add_argument("--model_name", default=None,
                          help="the served model's name (for transformers serve and vLLM: the path it was given)")
    endpoint.add_argument("--api_type", default="chat", choices=["chat", "completions"],
                          help="chat: instruction and input as messages, formatted by the server's chat template; "
                               "completions: the Alpaca prompt as text")
    endpoint.add_argument("--max_concurrency", type=int, default=8, help=ENDPOINT_FLAGS["max_concurrency"])
    endpoint.add_argument("--max_retries", type=int, default=8, help=ENDPOINT_FLAGS["max_retries"])
    endpoint.add_argument("--request_timeout", type=float, default=600.0, help=ENDPOINT_FLAGS["request_timeout"])
    endpoint.add_argument("--requests_per_minute", type=float, default=None,
                          help=ENDPOINT_FLAGS["requests_per_minute"])
    endpoint.add_argument("--tokens_per_minute", type=float, default=None, help=ENDPOINT_FLAGS["tokens_per_minute"])
    endpoint.add_argument("--cache_dir", default=None,
                          help="response cache (a re-run is free); default: OUTPUT_PATH.cache beside --output_path")
    endpoint.add_argument("--max_response_bytes", type=int, default=16 * 2**20,
                          help=ENDPOINT_FLAGS["max_response_bytes"])
    endpoint.add_argument("--price_per_1k_prompt_tokens", type=float, default=None, help="dollars, for the cost line")
    endpoint.add_argument("--price_per_1k_completion_tokens", type=float, default=None,
                          help="dollars, for the cost line")
    data = parser.add_argument_group("what to answer (neither --instruction nor --data_path: interactive)")
    data.add_argument("--instruction", default=None, help="one instruction; its response is printed")
    data.add_argument("--input", default="", help="optional input (context) for --instruction")
    data.add_argument("--data_path", default=None, help="JSON list or JSONL of records with instruction[, input]")
    data.add_argument("--output_path", default=None, help="where to write the records with responses (JSON list)")
    data.add_argument("--output_field", default="output",
                      help="field the response is written to; e.g. 'generated' keeps a reference 'output' intact")
    data.add_argument("--generator", default=None,
                      help="name written to each record's 'generator' field (default: the model's name)")
    data.add_argument("--batch_size", type=int, default=8, help="prompts generated together (local model)")
    gen = parser.add_argument_group("decoding")
    gen.add_argument("--max_new_tokens", type=int, default=256, help="most tokens generated per response")
    gen.add_argument("--do_sample", type=cli.argparse_bool, nargs="?", const=True, default=False,
                     help="sample instead of greedy decoding")
    gen.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (with --do_sample)")
    gen.add_argument("--top_p", type=float, default=1.0, help="nucleus sampling mass (with --do_sample)")
    gen.add_argument("--top_k", type=int, default=50, help="sample from the k likeliest tokens (local, --do_sample)")
    gen.add_argument("--seed", type=int, default=42, help="random seed, for reproducible sampling")
    gen.add_argument("--num_samples", type=int, default=1,
                     help="answers per instruction (with --do_sample); above 1, each record gets them all in "
                          "'outputs' and the first in 'output' (the input of `judge.py preferences`)")
    args = parser.parse_args(argv)
    problems = [
        ((args.model_name_or_path is None) == (args.api_base is None),
         "give --model_name_or_path (a local model) or --api_base (a served one), exactly one of them"),
        (args.api_base is not None and not args.model_name, "--api_base needs --model_name, the served model's name"),
        (args.api_base is None and args.model_name is not None,
         "--model_name names a served model (with --api_base); a local checkpoint is --model_name_or_path"),
        (args.api_base is not None and args.lora_path is not None,
         "--lora_path applies to a local model; serve the adapter instead (README, Serving)"),
        (args.instruction is not None and args.data_path is not None, "give either --instruction or --data_path"),
        ((args.data_path is None) != (args.output_path is None),
         "--data_path and --output_path go together: where to read the examples and where to write them"),
        (min(args.batch_size, args.max_new_tokens, args.max_concurrency, args.num_samples) < 1,
         "--batch_size, --max_new_tokens, --max_concurrency and --num_samples must be at least 1"),
        (args.num_samples > 1 and not args.do_sample,
         f"--num_samples {args.num_samples} needs --do_sample True: greedy decoding writes the same answer every "
         "time"),
    ]
    for failed, message in problems:
        if failed:
            parser.error(message)
    if args.api_base is not None and args.cache_dir is None and args.output_path is not None:
        args.cache_dir = f"{args.output_path}.cache"
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    for chatty in ("httpx", "httpx2"):  # a line per request would bury the progress bar
        logging.getLogger(chatty).setLevel(logging.WARNING)
    # Everything the user gave is checked before a model loads or a request is sent.
    if args.api_base is not None:
        from alpaca.llm.client import check_settings

        check_settings(args.api_type, args.model_name, args.api_base, max_concurrency=args.max_concurrency,
                       max_retries=args.max_retries, request_timeout=args.request_timeout,
                       requests_per_minute=args.requests_per_minute, tokens_per_minute=args.tokens_per_minute,
                       temperature=args.temperature, top_p=args.top_p, max_response_bytes=args.max_response_bytes)
    if args.output_path is not None:
        check_output_path(args.output_path, [args.data_path] if args.data_path else [])
    examples = (files.load_alpaca_records(args.data_path, require_output=False, conversations=True)
                if args.data_path else None)
    if examples and args.api_base is not None and args.api_type == "completions" and any(
            map(conversation.is_conversation, examples)):
        raise UsageError(f"{args.data_path} holds conversation records, which --api_type completions cannot "
                             "send (the server's eos text is needed between turns): use --api_type chat.")
    if args.lora_path is not None:
        check_lora_adapter(args.lora_path)
    if args.api_base is not None and args.api_type == "chat":
        check_served_template(args.model_name)

    samples = args.num_samples
    if args.api_base is not None:
        def answer(batch: list[dict], progress: bool = False) -> list[list[str]]:
            return asyncio.run(_answer_through_endpoint(batch, args, progress))
    else:
        from transformers import set_seed

        set_seed(args.seed)
        model, tokenizer = load_model(args.model_name_or_path, args.lora_path, args.device, args.torch_dtype,
                                      args.trust_remote_code)
        generation_kwargs = dict(max_new_tokens=args.max_new_tokens, do_sample=args.do_sample,
                                 temperature=args.temperature, top_p=args.top_p, top_k=args.top_k)

        def answer(batch: list[dict], progress: bool = False) -> list[list[str]]:
            # Each example `samples` times in a row: generate_responses keeps equal prompts in one batch, and every
            # row of a sampled batch draws its own answer.
            responses = generate_responses(model, tokenizer, [ex for ex in batch for _ in range(samples)],
                                           batch_size=args.batch_size, progress=progress, **generation_kwargs)
            return [responses[i:i + samples] for i in range(0, len(responses), samples)]

    if args.instruction is not None:
        print("\n\n".join(answer([{"instruction": args.instruction, "input": args.input}])[0]))
    elif examples is not None:
        generator = generator_name(args)
        if any(args.output_field in record or "generator" in record for record in examples):
            logger.warning("Some records already have %r or 'generator'; they are overwritten (see --output_field).",
                           args.output_field)
        responses = answer(examples, progress=True)
        answered = []
        for record, answers in zip(examples, responses, strict=True):
            answered.append({**record, args.output_field: answers[0]})
            if samples > 1:  # "outputs": all K answers; "output" keeps the first, for judge.py
                answered[-1][f"{args.output_field}s"] = answers
            answered[-1]["generator"] = generator
        write_outputs(answered, args.output_path)
        logger.info("wrote %d responses from %s to %s", len(responses), generator, args.output_path)
    else:
        interactive(answer)


def entry_point() -> None:
    """The command line of `python inference.py`."""
    cli.report_errors(main)
