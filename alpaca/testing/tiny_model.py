"""Build a tiny LLaMA-style base model and tokenizer, offline and deterministically.

    python scripts/make_tiny_model.py --output_dir tiny-llama

The tests and the demo stand on it: no model hub is reachable here, so we train a small
SentencePiece model on the project's own text and pair it with a randomly initialised
`LlamaForCausalLM` (hidden size 64, 2 layers). Like the original LLaMA tokenizer it has
`<unk>`, `<s>` and `</s>` but no pad token, so `train.py` must add `[PAD]` exactly as it
does for LLaMA-7B. The directory loads with the ordinary `AutoTokenizer.from_pretrained`
and `AutoModelForCausalLM.from_pretrained`; the weights are safetensors.
"""

import argparse
import io
import json
import pathlib

import sentencepiece as spm
import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizer

from alpaca import REPO_ROOT

DEFAULT_CORPUS = (REPO_ROOT / "seed_tasks.jsonl", REPO_ROOT / "prompt.txt")

# The Alpaca prompt scaffolding, so that its words are single pieces in the tiny vocabulary too.
SCAFFOLD = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n### Input:\n### Response:\n"
)


def corpus_lines(paths: list[pathlib.Path]) -> list[str]:
    """Plain-text lines for SentencePiece: every string field of a JSONL file, or a text file's lines."""
    lines = SCAFFOLD.splitlines()
    for path in paths:
        text = path.read_text(encoding="utf-8")
        if path.suffix != ".jsonl":
            lines += text.splitlines()
            continue
        for raw in text.splitlines():
            lines += _strings(json.loads(raw)) if raw.strip() else []
    return [line.strip() for line in lines if line.strip()]


def _strings(value) -> list[str]:
    if isinstance(value, str):
        return value.splitlines()
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def train_sentencepiece(lines: list[str], vocab_size: int) -> bytes:
    """A BPE SentencePiece model with byte fallback (so no text is ever <unk>), LLaMA's special ids."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        hard_vocab_limit=False,  # a small corpus yields a smaller vocabulary instead of an error
        byte_fallback=True,
        character_coverage=1.0,
        split_digits=True,
        normalization_rule_name="identity",  # as LLaMA's: keep newlines and runs of spaces, which the
        remove_extra_whitespaces=False,  # Alpaca template and the converted fast tokenizer rely on
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,  # one thread keeps the result identical from run to run
        minloglevel=2,
    )
    return model.getvalue()


def make_tiny_model(
    output_dir: str,
    corpus: list[str] | None = None,
    vocab_size: int = 512,
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    seed: int = 0,
) -> pathlib.Path:
    """Write tokenizer + model to `output_dir` and return its path."""
    out = pathlib.Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [pathlib.Path(p) for p in corpus] if corpus else list(DEFAULT_CORPUS)
    (out / "tokenizer.model").write_bytes(train_sentencepiece(corpus_lines(paths), vocab_size))
    # Converts the SentencePiece model; LLaMA's tokenizer starts every sequence with <s>.
    tokenizer = LlamaTokenizer.from_pretrained(str(out), add_bos_token=True)
    tokenizer.save_pretrained(str(out))

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=4096,  # RoPE: no extra weights; room for the Self-Instruct prompt
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=None,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(str(out), safe_serialization=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True, help="directory to write the model and tokenizer to")
    parser.add_argument("--corpus", nargs="*", default=None,
                        help="text or JSONL files to train the tokenizer on (default: seed_tasks.jsonl, prompt.txt)")
    parser.add_argument("--vocab_size", type=int, default=512, help="SentencePiece vocabulary size")
    parser.add_argument("--hidden_size", type=int, default=64, help="model width")
    parser.add_argument("--num_hidden_layers", type=int, default=2, help="number of decoder layers")
    parser.add_argument("--seed", type=int, default=0, help="seed for the random weights")
    args = parser.parse_args()
    out = make_tiny_model(args.output_dir, args.corpus, args.vocab_size, args.hidden_size,
                          args.num_hidden_layers, args.seed)
    print(f"tiny model written to {out}")


if __name__ == "__main__":
    main()
