"""inference.py on the tiny random LLaMA: its text is gibberish, but greedy decoding makes it deterministic."""

import json
import os
import subprocess
import sys

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from alpaca import cli
from alpaca.infer import answer as inference
from alpaca.infer.answer import format_prompt, generate_responses, load_model
from alpaca.train.sft import PROMPT_DICT

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
    # The records as given (a missing input becomes "", the format's "no input"), plus the answer and its generator.
    assert [{k: v for k, v in r.items() if k not in ("output", "generator")} for r in written] == \
        [{"input": "", **r} for r in records]
    assert [r["output"] for r in written] == one_by_one
    assert {r["generator"] for r in written} == {tiny_model_dir.name}
    assert output_path.read_text().startswith('[\n    {\n        "instruction"')  # jdump's indent=4 layout


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


@pytest.mark.slow
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


def test_cli_rejects_inconsistent_flags():
    for argv, message in [
        (["--model_name_or_path", "x", "--data_path", "a.json"], "--output_path"),
        (["--instruction", "Hi."], "exactly one of them"),
        (["--model_name_or_path", "x", "--api_base", "http://h/v1", "--model_name", "m"], "exactly one of them"),
        (["--api_base", "http://h/v1"], "needs --model_name"),
        (["--model_name_or_path", "x", "--model_name", "m"], "--model_name_or_path"),
        (["--api_base", "http://h/v1", "--model_name", "m", "--lora_path", "a"], "serve the adapter"),
        (["--model_name_or_path", "x", "--max_concurrency", "0"], "at least 1"),
    ]:
        with pytest.raises(cli.UsageError, match=message):
            inference.parse_args(argv)


@pytest.mark.parametrize("spelling, value", [("false", False), ("False", False), ("0", False), ("true", True),
                                             ("1", True)])
def test_boolean_flags_mean_what_they_say(spelling, value):
    args = inference.parse_args(["--model_name_or_path", "x", "--do_sample", spelling, "--trust_remote_code", spelling])
    assert args.do_sample is value and args.trust_remote_code is value
    assert inference.parse_args(["--model_name_or_path", "x", "--do_sample"]).do_sample is True


@pytest.mark.slow
def test_cli_contract_one_error_line_nothing_written_nothing_loaded(repo_dir, tmp_path):
    """Mistakes end in one `error:` line (exit 2 for usage, 1 for other user errors), write nothing, and come
    before any model is loaded: the model path given does not exist, so reaching it would be another error."""
    good = tmp_path / "good.json"
    good.write_text(json.dumps([{"instruction": "Hi."}]))
    malformed = tmp_path / "malformed.jsonl"
    malformed.write_text('{"instruction": "a"}\n{"instruction": \n')
    no_instruction = tmp_path / "no_instruction.json"
    no_instruction.write_text(json.dumps([{"instruction": "a"}, {"input": "b"}]))
    (tmp_path / "a-directory").mkdir()
    out = tmp_path / "out" / "answers.json"
    model = ["--model_name_or_path", str(tmp_path / "no-such-model")]
    cases = [
        ([*model, "--instruction", "Hi.", "--max_new_token", "3"], 2,
         "unknown flag --max_new_token (did you mean --max_new_tokens?)"),
        ([*model, "--instruction", "Hi.", "--do_sample", "maybe"], 2, "True or False"),
        ([*model, "--data_path", str(tmp_path / "missing.json"), "--output_path", str(out)], 1, "does not exist"),
        ([*model, "--data_path", str(malformed), "--output_path", str(out)], 1, "line 2"),
        ([*model, "--data_path", str(no_instruction), "--output_path", str(out)], 1, "record 1: field 'instruction'"),
        ([*model, "--data_path", str(good), "--output_path", str(tmp_path / "a-directory")], 1, "is a directory"),
    ]
    for argv, code, message in cases:
        result = _run_cli(repo_dir, *argv)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert result.returncode == code and len(errors) == 1 and message in errors[0], (argv, result.stderr)
        assert "Traceback" not in result.stderr and "no-such-model" not in result.stderr
        assert not (tmp_path / "out").exists()


def test_a_prompt_longer_than_the_context_is_refused_before_generating(tiny, monkeypatch):
    model, tokenizer = tiny
    context = model.config.max_position_embeddings
    monkeypatch.setattr(model, "generate", lambda *a, **k: pytest.fail("generated before the length check"))
    huge = {"instruction": "Summarise this. " + "word " * context, "input": ""}
    with pytest.raises(cli.DataError, match=r"record 1 \(\d[\d,]+ prompt tokens\).*Nothing was generated"):
        generate_responses(model, tokenizer, [EXAMPLES[0], huge], max_new_tokens=NEW_TOKENS)
    # The limit is the prompt plus --max_new_tokens: a prompt that fits alone is refused with too many new tokens.
    prompt_tokens = len(tokenizer(format_prompt(EXAMPLES[0]["instruction"]))["input_ids"])
    with pytest.raises(cli.DataError, match="record 0"):
        generate_responses(model, tokenizer, [EXAMPLES[0]], max_new_tokens=context - prompt_tokens + 1)
    inference.check_prompt_lengths([prompt_tokens], context, context - prompt_tokens)  # exactly full: allowed


def test_a_pickled_lora_adapter_is_refused(tmp_path, tiny_model_dir):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tiny_model_dir)}))
    (adapter / "adapter_model.bin").write_bytes(b"not unpickled")
    with pytest.raises(cli.MissingPathError, match="adapter_model.bin, a pickle"):
        load_model(str(adapter), device="cpu")
    with pytest.raises(cli.MissingPathError, match="adapter_model.bin, a pickle"):
        load_model(str(tiny_model_dir), lora_path=str(adapter), device="cpu")


# ----------------------------------------------------------------------------- answers through an endpoint

ENDPOINT_RECORDS = [{"instruction": "Name a colour.", "input": None, "id": 0},
                    {"instruction": "Translate.", "input": "Bonjour", "id": 1},
                    {"instruction": "Name a colour.", "input": "", "id": 2}]


def _answer_by_echo(path: str, prompt: str, body: dict) -> tuple[str, str]:
    return f"  answer to {prompt.splitlines()[0][:30]}  ", "stop"


@pytest.mark.parametrize("api_type", ["chat", "completions"])
def test_endpoint_mode_writes_the_local_format_one_prompt_per_request(openai_server, tmp_path, api_type, caplog):
    openai_server.responder = _answer_by_echo
    data = tmp_path / "eval.json"
    data.write_text(json.dumps(ENDPOINT_RECORDS))
    out = tmp_path / "answers.json"
    argv = ["--api_base", openai_server.url, "--model_name", "served-alpaca", "--api_type", api_type,
            "--data_path", str(data), "--output_path", str(out), "--max_new_tokens", "7", "--max_concurrency", "3",
            "--price_per_1k_prompt_tokens", "1", "--price_per_1k_completion_tokens", "2"]
    with caplog.at_level("INFO", logger="inference"):
        inference.main(argv)
    bodies = openai_server.bodies()
    assert len(bodies) == 3 and all(b["max_tokens"] == 7 and b["temperature"] == 0.0 for b in bodies)
    if api_type == "chat":
        assert sorted(json.dumps(b["messages"]) for b in bodies) == sorted(json.dumps(inference.chat_messages(
            {"input": r["input"] or "", **{k: v for k, v in r.items() if k != "input"}})) for r in ENDPOINT_RECORDS)
        assert {"role": "input", "content": "Bonjour"} in [m for b in bodies for m in b["messages"]]
    else:  # one prompt per request, as a string: transformers serve and llama.cpp reject lists
        assert sorted(b["prompt"] for b in bodies) == sorted(format_prompt(r["instruction"], r["input"])
                                                             for r in ENDPOINT_RECORDS)
    written = json.loads(out.read_text())
    assert [{k: v for k, v in r.items() if k not in ("output", "generator")} for r in written] == \
        [{**r, "input": r["input"] or ""} for r in ENDPOINT_RECORDS]
    first_lines = [inference.chat_messages(r)[0]["content"] if api_type == "chat" else PROMPT_DICT["prompt_input"]
                   for r in written]
    assert [r["output"] for r in written] == [f"answer to {line.splitlines()[0][:30]}" for line in first_lines]
    assert {r["generator"] for r in written} == {"served-alpaca"}
    assert "3 responses from" in caplog.text and "(0 from the cache)" in caplog.text and "cost $" in caplog.text

    # A re-run (after a crash, or to rewrite the file) is answered from the cache beside the output.
    caplog.clear()
    out.unlink()
    with caplog.at_level("INFO", logger="inference"):
        inference.main([*argv, "--generator", "my-model"])
    assert len(openai_server.bodies()) == 3 and "(3 from the cache)" in caplog.text
    assert [r["output"] for r in json.loads(out.read_text())] == [r["output"] for r in written]
    assert {r["generator"] for r in json.loads(out.read_text())} == {"my-model"}


def test_endpoint_mode_fatal_errors_are_one_sentence(openai_server, tmp_path):
    from alpaca.testing.openai_server import auth_error

    openai_server.push(auth_error())
    data = tmp_path / "eval.json"
    data.write_text(json.dumps(ENDPOINT_RECORDS[:1]))
    with pytest.raises(cli.UserError, match="refused the API key"):
        inference.main(["--api_base", openai_server.url, "--model_name", "m", "--data_path", str(data),
                        "--output_path", str(tmp_path / "answers.json")])
    assert not (tmp_path / "answers.json").exists()


@pytest.mark.slow
def test_cli_mistakes_print_one_line(repo_dir, tmp_path):
    result = _run_cli(repo_dir, "--model_name_or_path", str(tmp_path / "no-such-model"), "--instruction", "Hi.")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: Could not load a model from '{tmp_path}")


# ----------------------------------------------------------------------------- several samples per instruction

def test_num_samples_writes_k_answers_per_record_reproducibly(tmp_path, tiny_model_dir):
    data = tmp_path / "eval.json"
    data.write_text(json.dumps(EXAMPLES[:3]))
    argv = ["--model_name_or_path", str(tiny_model_dir), "--data_path", str(data), "--max_new_tokens", "8",
            "--do_sample", "True", "--temperature", "1.5", "--top_k", "0", "--num_samples", "3", "--batch_size", "4",
            "--device", "cpu"]
    inference.main([*argv, "--output_path", str(tmp_path / "a.json")])
    inference.main([*argv, "--output_path", str(tmp_path / "b.json")])
    written = json.loads((tmp_path / "a.json").read_text())
    assert written == json.loads((tmp_path / "b.json").read_text())  # the seed makes the samples reproducible
    assert [r["instruction"] for r in written] == [ex["instruction"] for ex in EXAMPLES[:3]]
    assert all(len(r["outputs"]) == 3 and r["output"] == r["outputs"][0] for r in written)
    assert all(len(set(r["outputs"])) > 1 for r in written)  # three draws, not one answer three times
    single = tmp_path / "single.json"
    one = argv.index("--num_samples")
    inference.main([*argv[:one], *argv[one + 2:], "--output_path", str(single)])  # without --num_samples
    assert "outputs" not in json.loads(single.read_text())[0]


def test_num_samples_needs_sampling():
    with pytest.raises(cli.UsageError, match="--num_samples 4 needs --do_sample True"):
        inference.parse_args(["--model_name_or_path", "m", "--instruction", "x", "--num_samples", "4"])
    with pytest.raises(cli.UsageError, match="--num_samples must be at least 1"):
        inference.parse_args(["--model_name_or_path", "m", "--instruction", "x", "--num_samples", "0"])


def _numbered_answers():
    """A responder whose every answer is new: answer 1, answer 2, ... (a sampling server)."""
    count = iter(range(1, 10**6))
    return lambda path, prompt, body: (f"answer {next(count)}", "stop")


@pytest.mark.parametrize("server", ["takes n", "rejects n", "ignores n"])
@pytest.mark.parametrize("api_type", ["chat", "completions"])
def test_num_samples_through_an_endpoint_uses_n_or_k_requests(tmp_path, monkeypatch, api_type, server):
    from alpaca.testing.openai_server import OpenAIServer

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key-123")
    data = tmp_path / "eval.json"
    data.write_text(json.dumps(EXAMPLES[:3]))
    argv = ["--model_name", "served-alpaca", "--api_type", api_type, "--data_path", str(data),
            "--output_path", str(tmp_path / "samples.json"), "--do_sample", "True", "--num_samples", "3",
            "--max_concurrency", "2"]
    server_takes_n = server == "takes n"
    with OpenAIServer(responder=_numbered_answers(), reject_n=server == "rejects n",
                      ignore_n=server == "ignores n") as server:
        inference.main(["--api_base", server.url, *argv])
        bodies = server.bodies()
        written = json.loads((tmp_path / "samples.json").read_text())
        if server_takes_n:  # one request per record, asking for 3 answers
            assert len(bodies) == 3 and all(b["n"] == 3 for b in bodies)
        else:  # the refused probe, then 3 requests per record
            assert [b["n"] for b in bodies].count(3) == 1 and len(bodies) == 1 + 3 * 3
        assert all(len(r["outputs"]) == 3 and r["output"] == r["outputs"][0] for r in written)
        answers = [a for r in written for a in r["outputs"]]
        assert len(set(answers)) == 9 and all(a.startswith("answer ") for a in answers)
        (tmp_path / "samples.json").unlink()
        inference.main(["--api_base", server.url, *argv])  # a re-run: every answer from the cache, in place
        assert len(server.bodies()) == len(bodies) + (0 if server_takes_n else 1)  # (the probe is asked again)
        assert json.loads((tmp_path / "samples.json").read_text()) == written


# Runs `python inference.py ARGV` in a fresh Python (runpy, as the interpreter runs a script) and prints the exit
# code, stderr, and whether torch / transformers had been imported when it exited.
_RUN_INFERENCE_PY_AND_REPORT = """
import contextlib, io, json, runpy, sys
sys.argv, err = ["inference.py", *json.loads(sys.argv[1])], io.StringIO()
with contextlib.redirect_stderr(err):
    try:
        runpy.run_path("inference.py", run_name="__main__")
        code = 0
    except SystemExit as exit:
        code = exit.code
print(json.dumps(dict(code=code, err=err.getvalue(), torch="torch" in sys.modules,
                      transformers="transformers" in sys.modules)))
"""


@pytest.mark.parametrize("flag", ["--model_name_or_path", "--lora_path"])
def test_a_missing_model_path_is_one_sentence_before_torch_is_imported(repo_dir, tmp_path, tiny_model_dir, flag):
    """The newcomer's `inference.py --model_name_or_path demo_out/nope` with the Hub off: our sentence, not the Hub
    library's "Repo id must be in the form ...", and before the seconds of importing torch and transformers."""
    data = tmp_path / "d.json"
    data.write_text('[{"instruction": "Say hi."}]')
    model = ["--model_name_or_path", str(tiny_model_dir)] if flag == "--lora_path" else []
    argv = [*model, flag, "demo_out/nope", "--data_path", str(data), "--output_path", str(tmp_path / "o.json")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = subprocess.run([sys.executable, "-c", _RUN_INFERENCE_PY_AND_REPORT, json.dumps(argv)], cwd=repo_dir,
                            env=env, capture_output=True, text=True, timeout=120)
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["code"] == 1 and report["err"].count("\n") == 1, report
    assert report["err"].startswith("error: There is no local model directory 'demo_out/nope', and the Hugging Face "
                                    "Hub is switched off (HF_HUB_OFFLINE is set)"), report
    assert not report["torch"] and not report["transformers"]
