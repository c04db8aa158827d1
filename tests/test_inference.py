"""inference.py on the tiny random LLaMA: its text is gibberish, but greedy decoding makes it deterministic."""

import json
import os
import subprocess
import sys

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

import inference
from inference import format_prompt, generate_responses, load_examples, load_model
from train import PROMPT_DICT

EXAMPLES = [
    {"instruction": "Give three tips for staying healthy."},
    {"instruction": "Translate the sentence into French.", "input": "The weather is lovely today, is it not?"},
    {"instruction": "Name a colour."},
    {"instruction": "Summarise the paragraph in one sentence.", "input": "Alpaca is a model fine-tuned from LLaMA."},
    {"instruction": "Write a short poem about the sea, its waves and the wind over them at night.", "input": ""},
]
NEW_TOKENS = 16


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_model(str(tiny_model_dir), device="cpu")


@pytest.fixture(scope="module")
def one_by_one(tiny) -> list[str]:
    """Greedy responses to EXAMPLES, each generated on its own (no padding at all)."""
    return [generate_responses(*tiny, [ex], batch_size=1, max_new_tokens=NEW_TOKENS)[0] for ex in EXAMPLES]


def reference_response_ids(model, tokenizer, example: dict, max_new_tokens: int = NEW_TOKENS) -> list[int]:
    """Plain unbatched greedy decoding of one prompt with the bare transformers API."""
    prompt_ids = tokenizer(format_prompt(example["instruction"], example.get("input", "")), return_tensors="pt")
    output = model.generate(**prompt_ids, max_new_tokens=max_new_tokens, do_sample=False,
                            pad_token_id=tokenizer.eos_token_id)
    return output[0, prompt_ids["input_ids"].shape[1]:].tolist()


def test_prompt_uses_the_alpaca_templates_from_train():
    assert format_prompt("Do X.") == PROMPT_DICT["prompt_no_input"].format(instruction="Do X.")
    assert format_prompt("Do X.", "some text") == PROMPT_DICT["prompt_input"].format(instruction="Do X.",
                                                                                       input="some text")
    assert format_prompt("Do X.", "").endswith("### Response:")


def test_greedy_is_deterministic_and_returns_only_the_response(tiny):
    model, tokenizer = tiny
    first = generate_responses(model, tokenizer, EXAMPLES[:2], max_new_tokens=NEW_TOKENS)
    second = generate_responses(model, tokenizer, EXAMPLES[:2], max_new_tokens=NEW_TOKENS)
    assert first == second and all(first)
    for example, response in zip(EXAMPLES[:2], first, strict=True):
        new_ids = reference_response_ids(model, tokenizer, example)
        assert response == tokenizer.decode(new_ids, skip_special_tokens=True).strip()
        assert "### Instruction:" not in response and example["instruction"] not in response


def test_batched_left_padded_equals_one_at_a_time(tiny, one_by_one):
    model, tokenizer = tiny
    assert tokenizer.pad_token is None  # left padding must fall back to another token without resizing the model
    vocab_rows = model.get_input_embeddings().weight.shape[0]
    for batch_size in (2, 5):
        assert generate_responses(model, tokenizer, EXAMPLES, batch_size=batch_size,
                                  max_new_tokens=NEW_TOKENS) == one_by_one
    assert model.get_input_embeddings().weight.shape[0] == vocab_rows
    # Sorting by length inside must not reorder the answers: reversed input, reversed output.
    assert generate_responses(model, tokenizer, EXAMPLES[::-1], batch_size=2,
                              max_new_tokens=NEW_TOKENS) == one_by_one[::-1]


def test_generation_stops_at_eos_and_the_response_is_cut_there(tiny):
    model, tokenizer = tiny
    example = EXAMPLES[0]
    new_ids = reference_response_ids(model, tokenizer, example)
    # Declare the 4th generated token an end-of-sequence token (where it first appears).
    stop_at = next(pos for pos in range(3, len(new_ids)) if new_ids[pos] not in new_ids[:pos])
    saved = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, new_ids[stop_at]]
    try:
        # Batched with a longer prompt that does not stop early: the finished row is padded, then cut at eos.
        responses = generate_responses(model, tokenizer, [example, EXAMPLES[4]], batch_size=2,
                                       max_new_tokens=NEW_TOKENS)
    finally:
        model.generation_config.eos_token_id = saved
    assert responses[0] == tokenizer.decode(new_ids[:stop_at], skip_special_tokens=True).strip()


def test_sampling_is_reproducible_with_a_seed(tiny):
    model, tokenizer = tiny
    kwargs = dict(max_new_tokens=NEW_TOKENS, do_sample=True, temperature=1.5, top_k=0, top_p=1.0)
    torch.manual_seed(0)
    first = generate_responses(model, tokenizer, EXAMPLES[:1] * 4, batch_size=4, **kwargs)
    torch.manual_seed(0)
    assert generate_responses(model, tokenizer, EXAMPLES[:1] * 4, batch_size=4, **kwargs) == first
    assert len(set(first)) > 1  # sampling at a high temperature does not give four identical answers


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_file_mode_keeps_the_records_and_adds_outputs(tmp_path, one_by_one, tiny_model_dir, suffix):
    records = [dict(ex, id=i) for i, ex in enumerate(EXAMPLES)]
    data_path = tmp_path / f"eval{suffix}"
    if suffix == ".json":
        data_path.write_text(json.dumps(records, indent=2))
    else:
        data_path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    output_path = tmp_path / "out" / "responses.json"
    inference.main(["--model_name_or_path", str(tiny_model_dir), "--data_path", str(data_path),
                    "--output_path", str(output_path), "--batch_size", "2", "--max_new_tokens", str(NEW_TOKENS),
                    "--device", "cpu"])
    written = json.loads(output_path.read_text())
    assert [{k: v for k, v in r.items() if k != "output"} for r in written] == records
    assert [r["output"] for r in written] == one_by_one
    assert output_path.read_text().startswith('[\n    {\n        "instruction"')  # jdump's indent=4 layout


def test_bad_data_files_name_the_problem(tmp_path):
    cases = {
        "missing.json": (None, "does not exist"),
        "bad.jsonl": ('{"instruction": "a"}\n{"instruction": "b",\n', "line 2"),
        "bad.json": ('[{"instruction": "a"},\n {"instruction": }]', "line 2"),
        "no_instruction.json": (json.dumps([{"instruction": "a"}, {"input": "b"}]), "record 1 has no 'instruction'"),
        "bad_input.jsonl": ('{"instruction": "a", "input": 3}\n', "record 0 has a non-string 'input'"),
        "object.json": ('[1]', "record 0 is a int"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        if content is not None:
            path.write_text(content)
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            load_examples(str(path))


def test_missing_model_paths_give_clear_errors(tmp_path, tiny_model_dir):
    with pytest.raises(FileNotFoundError, match="Could not load a model from"):
        load_model(str(tmp_path / "no-such-checkpoint"), device="cpu")
    with pytest.raises(FileNotFoundError, match="not a LoRA adapter directory"):
        load_model(str(tiny_model_dir), lora_path=str(tmp_path), device="cpu")
    no_tokenizer = tmp_path / "no-tokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        (no_tokenizer / name).write_bytes((tiny_model_dir / name).read_bytes())
    with pytest.raises(FileNotFoundError, match="Could not load a tokenizer"):
        load_model(str(no_tokenizer), device="cpu")
    (tmp_path / "pickled").mkdir()
    (tmp_path / "pickled" / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="safetensors only"):
        load_model(str(tmp_path / "pickled"), device="cpu")


def _logits(model, tokenizer, text: str) -> torch.Tensor:
    with torch.no_grad():
        return model(**tokenizer(text, return_tensors="pt")).logits


def test_lora_adapter_loads_on_the_base_and_matches_the_merged_model(tmp_path, tiny, one_by_one, tiny_model_dir):
    base_model, tokenizer = tiny
    torch.manual_seed(0)
    peft_model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    assert all(p.abs().sum() > 0 for n, p in peft_model.named_parameters() if "lora_B" in n)
    peft_model.save_pretrained(tmp_path / "adapter")
    merged = peft_model.merge_and_unload()
    merged.save_pretrained(tmp_path / "merged")
    tokenizer.save_pretrained(tmp_path / "merged")

    adapted, _ = load_model(str(tiny_model_dir), lora_path=str(tmp_path / "adapter"), device="cpu")
    reloaded_merged, _ = load_model(str(tmp_path / "merged"), device="cpu")
    text = format_prompt(EXAMPLES[1]["instruction"], EXAMPLES[1]["input"])
    assert not torch.allclose(_logits(adapted, tokenizer, text), _logits(base_model, tokenizer, text), atol=1e-3)
    torch.testing.assert_close(_logits(adapted, tokenizer, text), _logits(reloaded_merged, tokenizer, text),
                               atol=1e-5, rtol=1e-5)
    from_adapter = generate_responses(adapted, tokenizer, EXAMPLES, batch_size=5, max_new_tokens=NEW_TOKENS)
    assert from_adapter == generate_responses(reloaded_merged, tokenizer, EXAMPLES, max_new_tokens=NEW_TOKENS)
    assert from_adapter != one_by_one  # the base model's answers


def test_adapter_dir_alone_loads_its_base_with_the_added_pad_token(tmp_path, tiny_model_dir):
    # As train.py does for LLaMA: add [PAD], grow the embeddings, then train LoRA; the adapter dir keeps the tokenizer.
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.add_special_tokens({"pad_token": "[PAD]"})
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.resize_token_embeddings(len(tokenizer))
    torch.manual_seed(1)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    tokenizer.save_pretrained(tmp_path / "adapter")

    loaded, loaded_tokenizer = load_model(str(tmp_path / "adapter"), device="cpu")
    assert loaded_tokenizer.pad_token == "[PAD]" and loaded_tokenizer.padding_side == "left"
    text = format_prompt(EXAMPLES[0]["instruction"])
    torch.testing.assert_close(_logits(loaded, loaded_tokenizer, text), _logits(peft_model, tokenizer, text))
    responses = generate_responses(loaded, loaded_tokenizer, EXAMPLES, batch_size=5, max_new_tokens=NEW_TOKENS)
    assert responses == [generate_responses(loaded, loaded_tokenizer, [ex], max_new_tokens=NEW_TOKENS)[0]
                         for ex in EXAMPLES]


def test_adapter_of_a_base_with_spare_embedding_rows_loads(tmp_path, tiny_model_dir):
    """OPT-style checkpoints have more embedding rows than tokens; training shrinks them to len(tokenizer) (and
    adds [PAD]), so the base must be resized to the adapter's size, down as well as up."""
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    base.resize_token_embeddings(base.config.vocab_size + 8)  # spare rows, as OPT ships them
    base.save_pretrained(tmp_path / "base")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.save_pretrained(tmp_path / "base")
    tokenizer.add_special_tokens({"pad_token": "[PAD]"})
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    model.resize_token_embeddings(len(tokenizer))  # what train.py's smart_tokenizer_and_embedding_resize does
    torch.manual_seed(1)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    tokenizer.save_pretrained(tmp_path / "adapter")

    loaded, loaded_tokenizer = load_model(str(tmp_path / "base"), lora_path=str(tmp_path / "adapter"), device="cpu")
    assert loaded.get_input_embeddings().weight.shape[0] == len(tokenizer)
    text = format_prompt(EXAMPLES[0]["instruction"])
    torch.testing.assert_close(_logits(loaded, loaded_tokenizer, text), _logits(peft_model, tokenizer, text))


def _run_cli(repo_dir, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.run([sys.executable, "inference.py", *args], cwd=repo_dir, input=stdin, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_cli_single_instruction_prints_the_response(repo_dir, one_by_one, tiny_model_dir):
    example = EXAMPLES[1]
    result = _run_cli(repo_dir, "--model_name_or_path", str(tiny_model_dir), "--instruction", example["instruction"],
                      "--input", example["input"], "--max_new_tokens", str(NEW_TOKENS))
    assert result.returncode == 0, result.stderr
    assert result.stdout == one_by_one[1] + "\n"  # the response alone on stdout; logs go to stderr


@pytest.mark.slow
def test_cli_interactive_reads_instructions_until_an_empty_line(repo_dir, one_by_one, tiny_model_dir):
    first, second = EXAMPLES[0], EXAMPLES[3]
    stdin = f"{first['instruction']}\n\n{second['instruction']}\n{second['input']}\n\nnever answered\n"
    result = _run_cli(repo_dir, "--model_name_or_path", str(tiny_model_dir), "--max_new_tokens", str(NEW_TOKENS),
                      stdin=stdin)
    assert result.returncode == 0, result.stderr
    assert one_by_one[0] in result.stdout and one_by_one[3] in result.stdout
    assert result.stdout.count("Instruction: ") == 3  # the third prompt reads the empty line and quits


def test_cli_rejects_inconsistent_flags(capsys):
    with pytest.raises(SystemExit):
        inference.parse_args(["--model_name_or_path", "x", "--data_path", "a.json"])
    assert "--output_path" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_mistakes_print_one_line(repo_dir, tmp_path):
    result = _run_cli(repo_dir, "--model_name_or_path", str(tmp_path / "no-such-model"), "--instruction", "Hi.")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: Could not load a model from '{tmp_path}")
