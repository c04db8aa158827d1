"""Tokenizing conversation records (`messages`) for supervised fine-tuning.

The checkpoint's Alpaca chat template (alpaca/prompts/alpaca.py) renders a conversation and marks every assistant
turn, its eos included, with {% generation %}; `apply_chat_template(..., return_assistant_tokens_mask=True)` turns
that into a mask over the token ids, and the labels are the ids under that mask, IGNORE_INDEX elsewhere. So the
loss covers every answer and nothing a user or system wrote, and the ids are those an engine serving the checkpoint
sees. Alpaca records in the same file keep train.py's own preprocessing; the two are merged in file order.
"""

import logging
from collections.abc import Callable, Sequence

import torch

from alpaca.errors import DataError
from alpaca.prompts.alpaca import is_alpaca_chat_template
from alpaca.prompts.conversation import is_conversation

logger = logging.getLogger(__name__)

CHUNK = 512  # conversations rendered and tokenized per apply_chat_template call


def check_chat_template(tokenizer) -> None:
    """DataError unless the tokenizer carries the Alpaca chat template (train.py attaches it when one reproduces
    the tokenizer's prompt ids): without it a conversation has no rendering that serving engines share."""
    if not is_alpaca_chat_template(tokenizer.chat_template):
        raise DataError("Conversation records need the Alpaca chat template, and none reproduces this tokenizer's "
                        "prompt ids (train.py warned above); convert them to Alpaca records or use another "
                        "tokenizer.")


def tokenize_conversations(conversations: Sequence[list[dict]], tokenizer,
                           ignore_index: int) -> dict[str, list[torch.Tensor]]:
    """dict(input_ids, labels): one int64 tensor [tokens] per conversation, labels = ids on assistant tokens and
    `ignore_index` elsewhere. A conversation longer than model_max_length is cut there, and after its last assistant
    token (later tokens teach nothing)."""
    check_chat_template(tokenizer)
    input_ids, labels = [], []
    for start in range(0, len(conversations), CHUNK):
        batch = tokenizer.apply_chat_template(list(conversations[start:start + CHUNK]), tokenize=True,
                                              return_dict=True, return_assistant_tokens_mask=True)
        for ids, mask in zip(batch["input_ids"], batch["assistant_masks"], strict=True):
            ids = torch.tensor(ids[:tokenizer.model_max_length], dtype=torch.int64)
            mask = torch.tensor(mask[:tokenizer.model_max_length], dtype=torch.bool)
            end = int(mask.nonzero().max()) + 1 if mask.any() else len(ids)
            input_ids.append(ids[:end])
            labels.append(torch.where(mask, ids, ignore_index)[:end])
    return dict(input_ids=input_ids, labels=labels)


def tokenize_records(examples: Sequence[dict], tokenizer, tokenize_alpaca: Callable[[list[dict]], dict],
                     ignore_index: int) -> dict[str, list[torch.Tensor]]:
    """dict(input_ids, labels) for a mix of Alpaca and conversation records, in the order given: Alpaca records
    through `tokenize_alpaca` (train.py's preprocessing), conversations through their chat template."""
    chats = [i for i, example in enumerate(examples) if is_conversation(example)]
    if not chats:
        return tokenize_alpaca(list(examples))
    alpaca = [i for i, example in enumerate(examples) if not is_conversation(example)]
    parts = [(chats, tokenize_conversations([examples[i]["messages"] for i in chats], tokenizer, ignore_index))]
    if alpaca:
        parts.append((alpaca, tokenize_alpaca([examples[i] for i in alpaca])))
    merged = {"input_ids": [None] * len(examples), "labels": [None] * len(examples)}
    for indices, tokenized in parts:
        for key in merged:
            for index, tensor in zip(indices, tokenized[key], strict=True):
                merged[key][index] = tensor
    logger.info(f"{len(chats)} conversations tokenized with the chat template, {len(alpaca)} Alpaca records")
    return merged
