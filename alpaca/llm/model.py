"""The one model loader: a local checkpoint (or a base model plus a LoRA adapter) in the right dtype on the right
device, with its tokenizer, pad token and context length checked, and the one local generation path (left-padded
batches, greedy or sampled, the Alpaca prompt or the chat template for conversations). inference.py, the in-process
`--api_type local` endpoint (a local judge or rater included) and `weight_diff.py recover --test_inference` all
load and generate through here.

torch and transformers are imported inside the functions: importing this module costs nothing until a model is
loaded.
"""

import json
import logging
import os
import pathlib

from alpaca import files
from alpaca.errors import DataError, MissingPathError, UsageError
from alpaca.prompts import conversation
from alpaca.prompts.alpaca import alpaca_chat_template, choose_bos_prefix, format_prompt, is_alpaca_chat_template

logger = logging.getLogger("inference")


def local_context_length(config, tokenizer) -> int:
    """Tokens the local model can attend over: its position limit. A tokenizer's `model_max_length` is only
    a fallback, since saved tokenizers may hold a training truncation length there, not the model's context."""
    for limit in (getattr(config, "max_position_embeddings", None), tokenizer.model_max_length):
        if limit and limit < 1e7:  # saved tokenizers without a limit report ~1e30
            return int(limit)
    return 2048


DTYPES = ("float32", "bfloat16", "float16")
CHAT_TEMPLATE_FIX = "python scripts/add_chat_template.py"


def resolve_device(device: str = "auto"):
    """`auto` means the GPU when one is visible, else the CPU."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(torch_dtype, device):
    """`auto` keeps the checkpoint's dtype on a GPU but uses float32 on CPU, where half precision is slow or missing."""
    import torch

    if isinstance(torch_dtype, torch.dtype):
        return torch_dtype
    if torch_dtype == "auto":
        return "auto" if device.type != "cpu" else torch.float32
    if torch_dtype not in DTYPES:
        raise UsageError(f"Unknown --torch_dtype {torch_dtype!r}: use one of auto, {', '.join(DTYPES)}.")
    return getattr(torch, torch_dtype)


def is_lora_adapter(path: str | os.PathLike | None) -> bool:
    """A peft adapter directory is recognised by its `adapter_config.json`."""
    return path is not None and (pathlib.Path(path) / "adapter_config.json").is_file()


def check_lora_adapter(lora_path: str) -> None:
    """Refuse, before loading anything, an adapter directory that is not one or that holds only pickled weights."""
    adapter = pathlib.Path(lora_path)
    if not is_lora_adapter(adapter):
        raise MissingPathError(
            f"--lora_path '{lora_path}' is not a LoRA adapter directory (no adapter_config.json in it). "
            "Pass the directory that train.py wrote with --lora_r, or drop --lora_path for a full checkpoint.")
    if not (adapter / "adapter_model.safetensors").is_file():
        found = "adapter_model.bin, a pickle that can run code when loaded" if (
            adapter / "adapter_model.bin").is_file() else "no adapter weights"
        raise MissingPathError(
            f"The LoRA adapter '{lora_path}' has no adapter_model.safetensors (found {found}); we load safetensors "
            "only: re-save it with peft's `model.save_pretrained(dir)`, which writes safetensors.")


def load_model(
    model_name_or_path: str,
    lora_path: str | None = None,
    device: str = "auto",
    torch_dtype="auto",
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
    if lora_path is not None:
        check_lora_adapter(lora_path)
    files.check_local_weights(model_name_or_path)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = resolve_device(device)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            model_name_or_path,
            dtype=resolve_dtype(torch_dtype, device),
            use_safetensors=True,
            trust_remote_code=trust_remote_code,
        )
    except OSError as error:
        raise MissingPathError(
            f"Could not load a model from '{model_name_or_path}': it is not a local checkpoint directory and could not "
            f"be fetched from the Hugging Face Hub. Pass the --output_dir that train.py wrote. ({error})"
        ) from error
    tokenizer_source = lora_path if _has_tokenizer(lora_path) else model_name_or_path
    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:  # ValueError: a directory with no tokenizer files at all
        raise MissingPathError(
            f"Could not load a tokenizer from '{tokenizer_source}'. train.py saves one next to the weights; copy the "
            f"tokenizer files of the model you fine-tuned into that directory. ({error})"
        ) from error
    warn_if_not_servable(tokenizer, tokenizer_source)

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


def warn_if_not_servable(tokenizer, source: str) -> None:
    """inference.py formats prompts itself, but serving engines use the checkpoint's chat template: say when the
    checkpoint has none, or another one, and how to add ours."""
    if is_alpaca_chat_template(tokenizer.chat_template):
        return
    what = "no chat template" if tokenizer.chat_template is None else "a chat template that is not the Alpaca one"
    # A base model (nothing train.py wrote: no training_args.bin, no adapter) was never meant to take Alpaca
    # prompts from a server; saying so at every load of it is noise the user cannot act on.
    fine_tuned = any((pathlib.Path(source) / name).is_file() for name in ("training_args.bin", "adapter_config.json"))
    say = logger.warning if fine_tuned else logger.debug
    say("%s has %s (saved before train.py wrote one?). inference.py is unaffected, but a serving engine (vLLM, "
        "transformers serve, llama.cpp) would format its prompts wrongly: add the template with `%s %s`.",
        source, what, CHAT_TEMPLATE_FIX, source)


def _has_tokenizer(path: str | None) -> bool:
    if path is None:
        return False
    return any((pathlib.Path(path) / name).is_file() for name in ("tokenizer.json", "tokenizer.model", "vocab.json"))


def _pad_token_id(tokenizer) -> int:
    """The id to left-pad prompts with. Padding is masked out, so eos or unk serve when there is no pad token."""
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id):
        if token_id is not None:
            return token_id
    raise UsageError("The tokenizer has no pad, eos or unk token to pad batches with; use --batch_size 1.")


def _eos_token_ids(model, tokenizer) -> list[int]:
    """Every id that ends a response: the tokenizer's eos and any the model's generation config lists."""
    ids = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids += configured if isinstance(configured, list) else [] if configured is None else [configured]
    return sorted(set(ids))


def context_length(model, tokenizer) -> int:
    """Tokens the model attends over: its position limit (the tokenizer's model_max_length is only a fallback, since
    train.py saves its training truncation length there)."""
    return local_context_length(model.config, tokenizer)


def check_prompt_lengths(lengths: list[int], context: int, max_new_tokens: int) -> None:
    """Refuse, before any generation, the examples whose prompt plus `max_new_tokens` exceeds the context.

    Nothing is truncated: a cut instruction or input would be answered as a different task without a word.
    """
    too_long = [(index, n) for index, n in enumerate(lengths) if n + max_new_tokens > context]
    if not too_long:
        return
    shown = ", ".join(f"record {index} ({n:,} prompt tokens)" for index, n in too_long[:5])
    more = f" and {len(too_long) - 5} more" if len(too_long) > 5 else ""
    raise DataError(
        f"{len(too_long)} prompt(s) do not fit the model's context of {context:,} tokens with --max_new_tokens "
        f"{max_new_tokens}: {shown}{more}. Nothing was generated; shorten or remove them, or lower --max_new_tokens.")


def left_pad(sequences: list[list[int]], pad_token_id: int):
    """Right-align token id lists into (input_ids, attention_mask), both (batch, longest) LongTensors."""
    import torch

    longest = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), longest), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, ids in enumerate(sequences):
        input_ids[row, longest - len(ids):] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, longest - len(ids):] = 1
    return input_ids, attention_mask


def prompt_ids(tokenizer, examples: list[dict]) -> list[list[int]]:
    """The prompt token ids of each example: the Alpaca prompt tokenized with special tokens, as train.py does, or
    a conversation record's messages up to its last user turn through the Alpaca chat template, as train.py and
    serving engines tokenize conversations (the current template, whatever the checkpoint carries)."""
    template = None
    ids = []
    for example in examples:
        if conversation.is_conversation(example):
            template = template or alpaca_chat_template(choose_bos_prefix(tokenizer) or "none")
            ids.append(tokenizer.apply_chat_template(conversation.prompt_messages(example["messages"]),
                                                     chat_template=template, add_generation_prompt=True,
                                                     return_dict=True)["input_ids"])
        else:
            prompt = format_prompt(example["instruction"], example.get("input") or "")
            ids.append(tokenizer(prompt, add_special_tokens=True, truncation=False)["input_ids"])
    return ids


def generate_responses(
    model,
    tokenizer,
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
    special tokens and stripped: the prompt is never echoed. Prompts too long for the context are refused first.
    """
    import torch
    from tqdm.auto import tqdm
    from transformers import GenerationConfig

    encoded = prompt_ids(tokenizer, examples)
    check_prompt_lengths([len(ids) for ids in encoded], context_length(model, tokenizer), max_new_tokens)
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
        with torch.no_grad():
            output = model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                                    generation_config=generation_config)
        for row, index in enumerate(batch):
            new_tokens = output[row, input_ids.shape[1]:].tolist()
            cut = next((pos for pos, token in enumerate(new_tokens) if token in eos_ids), len(new_tokens))
            responses[index] = tokenizer.decode(new_tokens[:cut], skip_special_tokens=True).strip()
    return responses


# ----------------------------------------------------------------------------- answers through an endpoint
