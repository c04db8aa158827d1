r"""Generate Alpaca-style responses from a fine-tuned checkpoint, or from a base model plus a LoRA adapter.

Each instruction (and optional input) is wrapped in the same Alpaca prompt that `train.py` trained on
(`PROMPT_DICT`), the model continues it, and only the continuation after "### Response:" is returned.
Decoding is greedy unless `--do_sample` is given.

    # one instruction (the response goes to stdout)
    python inference.py --model_name_or_path output/alpaca --instruction "Give three tips for staying healthy."
    python inference.py --model_name_or_path output/alpaca --instruction "Translate to French." --input "Good morning"

    # a JSON list or JSONL file of {"instruction", "input"} records -> a JSON list with an "output" field added
    python inference.py --model_name_or_path output/alpaca --data_path eval.jsonl --output_path eval_out.json \
        --batch_size 16 --max_new_tokens 256

    # a base model plus a LoRA adapter written by `train.py --lora_r ...` (or pass the adapter directory alone
    # as --model_name_or_path: its adapter_config.json names the base model)
    python inference.py --model_name_or_path huggyllama/llama-7b --lora_path output/alpaca-lora --instruction "..."

    # interactive: type an instruction, then an optional input; an empty instruction or Ctrl-D ends
    python inference.py --model_name_or_path output/alpaca

    # sampling instead of greedy decoding
    python inference.py --model_name_or_path output/alpaca --instruction "Write a haiku." \
        --do_sample --temperature 0.7 --top_p 0.9 --seed 42
"""

import argparse
import json
import logging
import os
import pathlib
import sys

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, PreTrainedTokenizerBase, set_seed

import utils
from prompts import format_prompt

logger = logging.getLogger("inference")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str = "auto") -> torch.device:
    """`auto` means the GPU when one is visible, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(torch_dtype: str | torch.dtype, device: torch.device) -> str | torch.dtype:
    """`auto` keeps the checkpoint's dtype on a GPU but uses float32 on CPU, where half precision is slow or missing."""
    if isinstance(torch_dtype, torch.dtype):
        return torch_dtype
    if torch_dtype == "auto":
        return "auto" if device.type != "cpu" else torch.float32
    if torch_dtype not in DTYPES:
        raise ValueError(f"Unknown --torch_dtype {torch_dtype!r}: use one of auto, {', '.join(DTYPES)}.")
    return DTYPES[torch_dtype]


def is_lora_adapter(path: str | os.PathLike | None) -> bool:
    """A peft adapter directory is recognised by its `adapter_config.json`."""
    return path is not None and (pathlib.Path(path) / "adapter_config.json").is_file()


def load_model(
    model_name_or_path: str,
    lora_path: str | None = None,
    device: str = "auto",
    torch_dtype: str | torch.dtype = "auto",
    trust_remote_code: bool = False,
):
    """Load a causal LM and its tokenizer for generation, in eval mode on `device`.

    `model_name_or_path` is a checkpoint directory (e.g. train.py's --output_dir) or a Hub id. With `lora_path`, a peft
    LoRA adapter is applied on top; `model_name_or_path` may also be an adapter directory on its own, whose
    adapter_config.json names the base model. The tokenizer comes from the adapter directory when it holds one (train.py
    saves it there, [PAD] included), else from the model. Returns (model, tokenizer); the tokenizer pads on the left.
    """
    if lora_path is None and is_lora_adapter(model_name_or_path):
        lora_path = model_name_or_path
        model_name_or_path = json.loads((pathlib.Path(lora_path) / "adapter_config.json").read_text())[
            "base_model_name_or_path"
        ]
        logger.info("%s is a LoRA adapter; loading its base model %s", lora_path, model_name_or_path)
    if lora_path is not None and not is_lora_adapter(lora_path):
        raise FileNotFoundError(
            f"--lora_path '{lora_path}' is not a LoRA adapter directory (no adapter_config.json in it). "
            "Pass the directory that train.py wrote with --lora_r, or drop --lora_path for a full checkpoint."
        )
    utils.check_local_weights(model_name_or_path)
    device = resolve_device(device)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            model_name_or_path,
            dtype=resolve_dtype(torch_dtype, device),
            use_safetensors=True,
            trust_remote_code=trust_remote_code,
        )
    except OSError as error:
        raise FileNotFoundError(
            f"Could not load a model from '{model_name_or_path}': it is not a local checkpoint directory and could not "
            f"be fetched from the Hugging Face Hub. Pass the --output_dir that train.py wrote. ({error})"
        ) from error
    tokenizer_source = lora_path if _has_tokenizer(lora_path) else model_name_or_path
    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:  # ValueError: a directory with no tokenizer files at all
        raise FileNotFoundError(
            f"Could not load a tokenizer from '{tokenizer_source}'. train.py saves one next to the weights; copy the "
            f"tokenizer files of the model you fine-tuned into that directory. ({error})"
        ) from error

    if lora_path is not None:
        from peft import PeftModel

        # train.py resizes the embeddings to len(tokenizer) before wrapping with LoRA: grown for [PAD], or shrunk
        # where the checkpoint had spare rows (OPT: 50272 rows for 50265 tokens). The adapter then carries
        # embeddings of that size, which only fit a base model resized the same way.
        if len(tokenizer) != model.get_input_embeddings().weight.shape[0]:
            model.resize_token_embeddings(len(tokenizer))
        model = PeftModel.from_pretrained(model, lora_path)
    model.to(device).eval()
    tokenizer.padding_side = "left"  # generation appends on the right, so prompts must end at the same column
    return model, tokenizer


def _has_tokenizer(path: str | None) -> bool:
    if path is None:
        return False
    return any((pathlib.Path(path) / name).is_file() for name in ("tokenizer.json", "tokenizer.model", "vocab.json"))


def _pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id to left-pad prompts with. Padding is masked out, so eos or unk serve when there is no pad token."""
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id):
        if token_id is not None:
            return token_id
    raise ValueError("The tokenizer has no pad, eos or unk token to pad batches with; use --batch_size 1.")


def _eos_token_ids(model, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Every id that ends a response: the tokenizer's eos and any the model's generation config lists."""
    ids = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids += configured if isinstance(configured, list) else [] if configured is None else [configured]
    return sorted(set(ids))


def left_pad(sequences: list[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-align token id lists into (input_ids, attention_mask), both (batch, longest) LongTensors."""
    longest = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), longest), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, ids in enumerate(sequences):
        input_ids[row, longest - len(ids):] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, longest - len(ids):] = 1
    return input_ids, attention_mask


@torch.no_grad()
def generate_responses(
    model,
    tokenizer: PreTrainedTokenizerBase,
    examples: list[dict],
    batch_size: int = 8,
    max_new_tokens: int = 256,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 50,
    progress: bool = False,
) -> list[str]:
    """The model's response to each example ({"instruction", optional "input"}), in the order given.

    Prompts are sorted by length and generated `batch_size` at a time, left-padded with an attention mask, so greedy
    batched output equals one-at-a-time output. A response is the new tokens up to the first eos, decoded without
    special tokens and stripped: the prompt is never echoed.
    """
    prompts = [format_prompt(ex["instruction"], ex.get("input") or "") for ex in examples]
    encoded = [tokenizer(prompt, add_special_tokens=True)["input_ids"] for prompt in prompts]
    eos_ids = _eos_token_ids(model, tokenizer)
    sampling = dict(temperature=temperature, top_p=top_p, top_k=top_k) if do_sample else {}
    generation_config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        pad_token_id=_pad_token_id(tokenizer),
        eos_token_id=eos_ids or None,
        bos_token_id=tokenizer.bos_token_id,
        **sampling,
    )
    device = next(model.parameters()).device
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))  # similar lengths batch with little padding
    responses: list[str] = [""] * len(encoded)
    batches = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
    for batch in tqdm(batches, desc="generating", unit="batch", disable=not progress):
        input_ids, attention_mask = left_pad([encoded[i] for i in batch], generation_config.pad_token_id)
        output = model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                                generation_config=generation_config)
        for row, index in enumerate(batch):
            new_tokens = output[row, input_ids.shape[1]:].tolist()
            cut = next((pos for pos, token in enumerate(new_tokens) if token in eos_ids), len(new_tokens))
            responses[index] = tokenizer.decode(new_tokens[:cut], skip_special_tokens=True).strip()
    return responses


def load_examples(path: str) -> list[dict]:
    """Records from a JSON list or a JSONL file, each checked to have a string "instruction" (and "input", if any)."""
    records = utils.load_records(path)
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise ValueError(f"{path}: record {index} is a {type(record).__name__}, not an object with an instruction.")
        if not isinstance(record.get("instruction"), str) or not record["instruction"].strip():
            raise ValueError(f"{path}: record {index} has no 'instruction' string; every record needs one.")
        if record.get("input") is not None and not isinstance(record["input"], str):
            raise ValueError(f"{path}: record {index} has a non-string 'input' ({type(record['input']).__name__}).")
    return records


def write_outputs(records: list[dict], path: str) -> None:
    """Write the records as a JSON list with utils.jdump (indent 4, the Alpaca data files' format)."""
    utils.jdump(records, path)


def interactive(model, tokenizer, **generation_kwargs) -> None:
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
        example = {"instruction": instruction, "input": example_input}
        print(generate_responses(model, tokenizer, [example], batch_size=1, **generation_kwargs)[0], flush=True)


def str2bool(value: str | bool) -> bool:
    """argparse type for HfArgumentParser-style booleans: `--flag`, `--flag True`, `--flag false`."""
    if isinstance(value, bool):
        return value
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {value!r}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model = parser.add_argument_group("model")
    model.add_argument("--model_name_or_path", required=True,
                       help="checkpoint directory written by train.py (or a Hub id); may also be a LoRA adapter dir")
    model.add_argument("--lora_path", default=None, help="LoRA adapter directory to apply on top of the model")
    model.add_argument("--device", default="auto", help="cuda, cuda:1, cpu, ...; auto = cuda if available, else cpu")
    model.add_argument("--torch_dtype", default="auto", choices=["auto", *DTYPES],
                       help="weight dtype; auto = the checkpoint's on GPU, float32 on CPU")
    model.add_argument("--trust_remote_code", type=str2bool, nargs="?", const=True, default=False,
                       help="allow model code shipped with the checkpoint to run (off by default)")
    data = parser.add_argument_group("what to answer (neither --instruction nor --data_path: interactive)")
    data.add_argument("--instruction", default=None, help="one instruction; its response is printed")
    data.add_argument("--input", default="", help="optional input (context) for --instruction")
    data.add_argument("--data_path", default=None, help="JSON list or JSONL of records with instruction[, input]")
    data.add_argument("--output_path", default=None, help="where to write the records with responses (JSON list)")
    data.add_argument("--output_field", default="output",
                      help="field the response is written to; e.g. 'generated' keeps a reference 'output' intact")
    data.add_argument("--batch_size", type=int, default=8, help="prompts generated together in file mode")
    gen = parser.add_argument_group("decoding")
    gen.add_argument("--max_new_tokens", type=int, default=256, help="most tokens generated per response")
    gen.add_argument("--do_sample", type=str2bool, nargs="?", const=True, default=False,
                     help="sample instead of greedy decoding")
    gen.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (with --do_sample)")
    gen.add_argument("--top_p", type=float, default=1.0, help="nucleus sampling mass (with --do_sample)")
    gen.add_argument("--top_k", type=int, default=50, help="sample from the k likeliest tokens (with --do_sample)")
    gen.add_argument("--seed", type=int, default=42, help="random seed, for reproducible sampling")
    args = parser.parse_args(argv)
    if args.instruction is not None and args.data_path is not None:
        parser.error("give either --instruction or --data_path, not both")
    if (args.data_path is None) != (args.output_path is None):
        parser.error("--data_path and --output_path go together: where to read the examples and where to write them")
    if args.batch_size < 1 or args.max_new_tokens < 1:
        parser.error("--batch_size and --max_new_tokens must be at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    set_seed(args.seed)
    examples = load_examples(args.data_path) if args.data_path else None  # bad data fails before the model loads
    model, tokenizer = load_model(args.model_name_or_path, args.lora_path, args.device, args.torch_dtype,
                                  args.trust_remote_code)
    generation_kwargs = dict(max_new_tokens=args.max_new_tokens, do_sample=args.do_sample,
                             temperature=args.temperature, top_p=args.top_p, top_k=args.top_k)
    if args.instruction is not None:
        example = {"instruction": args.instruction, "input": args.input}
        print(generate_responses(model, tokenizer, [example], batch_size=1, **generation_kwargs)[0])
    elif examples is not None:
        if any(args.output_field in record for record in examples):
            logger.warning("Some records already have %r; it is overwritten (see --output_field).", args.output_field)
        responses = generate_responses(model, tokenizer, examples, batch_size=args.batch_size, progress=True,
                                       **generation_kwargs)
        answered = [{**record, args.output_field: answer} for record, answer in zip(examples, responses, strict=True)]
        write_outputs(answered, args.output_path)
        logger.info("wrote %d responses to %s", len(responses), args.output_path)
    else:
        interactive(model, tokenizer, **generation_kwargs)


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError) as error:  # a wrong path or a bad data file: one line, no traceback
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
