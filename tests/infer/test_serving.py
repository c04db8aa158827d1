"""Serving a checkpoint with existing engines: the repair command for old checkpoints (their chat template),
train.py and weight_diff.py keeping the template, and a `transformers serve` round trip on loopback. The template
itself: tests/prompts/test_chat_template.py."""

import json
import pathlib
import shutil

import pytest
from transformers import AutoTokenizer

from alpaca.infer import answer as inference
from alpaca.prompts.alpaca import (
    alpaca_chat_template,
    format_prompt,
    is_alpaca_chat_template,
)
from alpaca.train import sft as train
from conftest import DEMO, post_json, run_script

REPO = pathlib.Path(__file__).resolve().parents[2]
# ----------------------------------------------------------------------------- old checkpoints

def test_add_chat_template_repairs_an_old_checkpoint(tmp_path, tiny_model_dir, capsys):
    from add_chat_template import add_chat_template

    old = tmp_path / "old"
    shutil.copytree(tiny_model_dir, old)
    assert not (old / "chat_template.jinja").exists()
    before = {p.name: p.read_bytes() for p in old.iterdir()}
    add_chat_template(str(old))
    assert "checked on demo_alpaca.json" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in old.iterdir() if p.name != "chat_template.jinja"} == before
    assert AutoTokenizer.from_pretrained(old).chat_template == alpaca_chat_template("bos_space")
    add_chat_template(str(old))
    assert "already has the Alpaca chat template" in capsys.readouterr().out

    foreign = tmp_path / "foreign"
    shutil.copytree(old, foreign)
    (foreign / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    refused = run_script(["scripts/add_chat_template.py", str(foreign)])
    assert refused.returncode == 1 and refused.stderr.count("error:") == 1 and "--overwrite True" in refused.stderr
    assert (foreign / "chat_template.jinja").read_text() == "{{ messages[0]['content'] }}"
    config = json.loads((foreign / "tokenizer_config.json").read_text())
    (foreign / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": "{{ 'old' }}"}))
    add_chat_template(str(foreign), overwrite=True)
    assert is_alpaca_chat_template((foreign / "chat_template.jinja").read_text())
    assert json.loads((foreign / "tokenizer_config.json").read_text()) == config  # no stale copy left behind

    older = tmp_path / "older"  # a template of ours from an earlier version is brought up to date unasked
    shutil.copytree(old, older)
    (older / "chat_template.jinja").write_text(alpaca_chat_template("bos_space").replace("-%}", "%}", 1))
    assert is_alpaca_chat_template((older / "chat_template.jinja").read_text())
    add_chat_template(str(older))
    assert (older / "chat_template.jinja").read_text() == alpaca_chat_template("bos_space")

    (tmp_path / "no-tokenizer").mkdir()
    missing = run_script(["scripts/add_chat_template.py", str(tmp_path / "no-tokenizer")])
    assert missing.returncode == 1 and missing.stderr.startswith("error: ") and "Traceback" not in missing.stderr


def test_inference_names_the_repair_command_for_a_checkpoint_without_template(tmp_path, tiny_model_dir, caplog):
    old = shutil.copytree(tiny_model_dir, tmp_path / "old")
    (old / "training_args.bin").write_bytes(b"")  # a fine-tune saved before train.py wrote the template
    with caplog.at_level("WARNING", logger="inference"):
        inference.load_model(str(old), device="cpu")
    assert f"python scripts/add_chat_template.py {old}" in caplog.text
    repaired = tmp_path / "repaired"
    shutil.copytree(old, repaired)
    (repaired / "chat_template.jinja").write_text(alpaca_chat_template("bos_space"))
    caplog.clear()
    with caplog.at_level("WARNING", logger="inference"):
        inference.load_model(str(repaired), device="cpu")
    assert "add_chat_template" not in caplog.text


def test_endpoint_chat_mode_refuses_a_served_directory_without_template(tmp_path, tiny_model_dir):
    data = tmp_path / "eval.json"
    data.write_text(json.dumps([{"instruction": "Hi."}]))
    result = run_script(["inference.py", "--api_base", "http://127.0.0.1:9/v1", "--model_name", str(tiny_model_dir),
                   "--data_path", str(data), "--output_path", str(tmp_path / "out.json")])
    assert result.returncode == 1 and result.stderr.count("error:") == 1
    assert f"python scripts/add_chat_template.py {tiny_model_dir}" in result.stderr
    assert not (tmp_path / "out.json").exists()


# ----------------------------------------------------------------------------- what train.py and weight_diff write

@pytest.mark.slow
def test_train_lora_merge_and_weight_diff_keep_the_template(tmp_path, tiny_model_dir):
    """One short LoRA run writes the template into the adapter directory and the merged checkpoint (a full
    fine-tune saves through the same tokenizer); weight_diff's diff and recovered model carry it on."""
    data = tmp_path / "data.json"
    data.write_text(json.dumps(DEMO[:8]))
    out = tmp_path / "lora"
    train.train(["--model_name_or_path", str(tiny_model_dir), "--data_path", str(data), "--output_dir", str(out),
                 "--use_cpu", "True", "--max_steps", "1", "--per_device_train_batch_size", "4", "--lora_r", "4",
                 "--lora_target_modules", "q_proj", "v_proj", "--merge_lora", "True", "--save_strategy", "no",
                 "--report_to", "none", "--model_max_length", "128"])
    expected = alpaca_chat_template("bos_space")
    for directory in (out, out / "merged"):
        assert (directory / "chat_template.jinja").read_text() == expected, directory

    from alpaca.weights import diff as weight_diff

    weight_diff.make_diff(path_raw=str(tiny_model_dir), path_tuned=str(out / "merged"), path_diff=str(tmp_path / "d"))
    weight_diff.recover(path_raw=str(tiny_model_dir), path_diff=str(tmp_path / "d"), path_tuned=str(tmp_path / "r"),
                        test_inference=False)
    assert (tmp_path / "r" / "chat_template.jinja").read_text() == expected


# ----------------------------------------------------------------------------- transformers serve on loopback

SERVED_EXAMPLES = [{"instruction": "Give three tips for staying healthy.", "input": ""},
                   {"instruction": "Translate the sentence into French.", "input": "The weather is nice today."}]
NEW_TOKENS = 12


@pytest.mark.slow
def test_transformers_serve_answers_as_inference_does(served):
    api_base, model_dir = served
    model, tokenizer = inference.load_model(str(model_dir), device="cpu")
    expected = inference.generate_responses(model, tokenizer, SERVED_EXAMPLES, max_new_tokens=NEW_TOKENS)
    assert all(expected)
    for example, answer in zip(SERVED_EXAMPLES, expected, strict=True):
        chat = post_json(f"{api_base}/chat/completions", {"model": str(model_dir), "messages": inference.chat_messages(
            example), "max_tokens": NEW_TOKENS, "temperature": 0})
        assert chat["choices"][0]["message"]["content"].strip() == answer
        completion = post_json(f"{api_base}/completions", {"model": str(model_dir), "prompt": format_prompt(
            example["instruction"], example["input"]), "max_tokens": NEW_TOKENS, "temperature": 0})
        assert completion["choices"][0]["text"].strip() == answer


@pytest.mark.slow
@pytest.mark.parametrize("api_type", ["chat", "completions"])
def test_inference_through_the_served_model_writes_what_local_inference_writes(served, tmp_path, api_type):
    api_base, model_dir = served
    data = tmp_path / "eval.jsonl"
    data.write_text("".join(json.dumps(example) + "\n" for example in SERVED_EXAMPLES))
    common = ["--data_path", str(data), "--max_new_tokens", str(NEW_TOKENS)]
    local = run_script(["inference.py", "--model_name_or_path", str(model_dir), "--output_path",
                        str(tmp_path / "local.json"), *common])
    assert local.returncode == 0, local.stderr
    remote = run_script(["inference.py", "--api_base", api_base, "--model_name", str(model_dir), "--api_type", api_type,
                   "--output_path", str(tmp_path / "served.json"), "--max_concurrency", "2", *common])
    assert remote.returncode == 0, remote.stderr
    assert "2 responses from" in remote.stderr
    assert json.loads((tmp_path / "served.json").read_text()) == json.loads((tmp_path / "local.json").read_text())


@pytest.mark.slow
def test_the_generator_runs_against_the_served_checkpoint(served, tmp_path):
    """The README's loop: the fine-tuned model, served, as the Self-Instruct generator's LLM through the chat
    endpoint (its prompt becomes an Alpaca instruction). A tiny random model writes no usable tasks; the run must
    still complete its requests and write regen.json."""
    api_base, model_dir = served
    result = run_script(["-m", "generate_instruction", "generate_instruction_following_data", "--output_dir",
                   str(tmp_path / "gen"), "--api_base", api_base, "--api_type", "chat", "--model_name",
                   str(model_dir), "--request_batch_size", "1", "--max_requests", "2", "--max_tokens", "16",
                   "--num_instructions_to_generate", "5", "--max_concurrency", "2"], timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "from 2 requests" in result.stdout + result.stderr
    assert isinstance(json.loads((tmp_path / "gen" / "regen.json").read_text()), list)


@pytest.mark.slow
def test_num_samples_through_transformers_serve_falls_back_to_k_requests(served, tmp_path):
    """transformers serve ignores `n` on chat (one choice): inference.py --num_samples asks K requests per
    instruction. It also ignores the temperature unless the checkpoint's generation_config.json says do_sample:
    inference.py says so when the answers come back identical."""
    api_base, model_dir = served
    data = tmp_path / "eval.jsonl"
    data.write_text("".join(json.dumps(example) + "\n" for example in SERVED_EXAMPLES))
    result = run_script(["inference.py", "--api_base", api_base, "--model_name", str(model_dir), "--api_type", "chat",
                   "--data_path", str(data), "--output_path", str(tmp_path / "samples.json"), "--max_new_tokens",
                   str(NEW_TOKENS), "--do_sample", "True", "--temperature", "1.5", "--num_samples", "3"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "did not answer n=3 in one request" in result.stderr and "6 responses from" in result.stderr
    written = json.loads((tmp_path / "samples.json").read_text())
    assert all(len(r["outputs"]) == 3 and r["output"] == r["outputs"][0] for r in written)
    assert all(len(set(r["outputs"])) == 1 for r in written) and "does not seem to sample" in result.stderr
