import hashlib

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from alpaca.testing.tiny_model import make_tiny_model


def test_tiny_model_loads_with_auto_classes_like_llama(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert (tiny_model_dir / "model.safetensors").exists()
    assert not list(tiny_model_dir.glob("*.bin"))
    assert model.config.hidden_size <= 64 and model.config.num_hidden_layers == 2
    # Like LLaMA's: <s> first, no pad token, so train.py has to add [PAD].
    assert tokenizer.pad_token is None
    ids = tokenizer("Give three tips for staying healthy.").input_ids
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == "Give three tips for staying healthy."
    assert len(tokenizer) == model.config.vocab_size
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), model.config.vocab_size)


def test_tiny_model_builds_byte_identically(tmp_path, tiny_model_dir):
    rebuilt = make_tiny_model(str(tmp_path / "again"))
    for name in ("model.safetensors", "tokenizer.model", "tokenizer.json"):
        digest = [hashlib.sha256((d / name).read_bytes()).hexdigest() for d in (tiny_model_dir, rebuilt)]
        assert digest[0] == digest[1], name


def test_unknown_characters_fall_back_to_bytes(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = "Ünïcödé ☃ 東京"
    ids = tokenizer(text).input_ids
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_newlines_and_spaces_survive_like_llama(tiny_model_dir):
    # The Alpaca template is built from "\n\n### ...": the tokenizer must not fold whitespace.
    # The SentencePiece model itself must agree with its fast conversion (LLaMA's normalises nothing).
    import sentencepiece as spm

    text = "### Instruction:\nSort  these.\n\n### Response:"
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert tokenizer.decode(tokenizer(text).input_ids, skip_special_tokens=True) == text
    sentencepiece = spm.SentencePieceProcessor(model_file=str(tiny_model_dir / "tokenizer.model"))
    assert sentencepiece.decode(sentencepiece.encode(text)) == text
