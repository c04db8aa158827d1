"""train_dpo.py on the tiny LLaMA: DPO moves the model toward the chosen answers, the output loads, diffs and
resumes like train.py's, LoRA uses the adapter-off reference, and mistakes are one sentence."""

import json
import random
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from alpaca import cli
from alpaca.prompts.alpaca import format_prompt
from alpaca.train import dpo
from alpaca.train import sft as train

WORDS = "stone lantern harbor meadow copper violin orchard glacier pepper candle ribbon".split()
LIKED = "river"  # the hidden preference: chosen answers say it, rejected ones never do


def make_pairs(n: int, seed: int = 0) -> list[dict]:
    """Preference pairs whose chosen answer repeats LIKED and whose rejected answer lacks it."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        instruction = f"Describe the {rng.choice(WORDS)} and the {rng.choice(WORDS)}."
        pairs.append({"prompt": format_prompt(instruction), "instruction": instruction, "input": "",
                      "chosen": " ".join([LIKED] * 3 + rng.sample(WORDS, 3)) + ".",
                      "rejected": " ".join(rng.sample(WORDS, 6)) + "."})
    return pairs


def make_conversation_pairs(n: int, seed: int = 1) -> list[dict]:
    """Pairs whose prompt is a conversation of one to three user turns (a system message, inputs as a role and as
    a second text part), ending with the user turn the two answers answer."""
    rng = random.Random(seed)
    pairs = []
    for i, pair in enumerate(make_pairs(n, seed)):
        messages = [{"role": "system", "content": "You answer in lists."}] if i % 2 else []
        for _ in range(i % 3):
            messages += [{"role": "user", "content": f"Name a {rng.choice(WORDS)}."},
                         {"role": "assistant", "content": " ".join(rng.sample(WORDS, 2)) + "."}]
        if i % 4 == 3:
            messages += [{"role": "user", "content": [{"type": "text", "text": pair["instruction"]},
                                                      {"type": "text", "text": rng.choice(WORDS)}]}]
        else:
            messages += [{"role": "user", "content": pair["instruction"]}]
            if i % 4 == 1:
                messages.append({"role": "input", "content": rng.choice(WORDS)})
        pairs.append({"messages": messages, "chosen": pair["chosen"], "rejected": pair["rejected"]})
    return pairs


def write_jsonl(path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def run_dpo(model_dir, data, out, *extra: str) -> dict:
    """train_dpo in this process; returns the trainer_state.json it wrote."""
    dpo.train_dpo(["--model_name_or_path", str(model_dir), "--data_path", str(data), "--output_dir", str(out),
                   "--use_cpu", "True", "--report_to", "none", "--logging_steps", "1", "--save_strategy", "no",
                   "--per_device_train_batch_size", "4", "--model_max_length", "128", "--seed", "0", *extra])
    return json.loads((out / "trainer_state.json").read_text())


def liked_words(model_dir, n: int = 6, **load) -> int:
    """How often the model, greedy, says LIKED in answers to held-out instructions."""
    from alpaca.infer.answer import generate_responses, load_model

    model, tokenizer = load_model(str(model_dir), device="cpu", **load)
    examples = [{"instruction": p["instruction"]} for p in make_pairs(n, seed=99)]
    return sum(r.split().count(LIKED) for r in generate_responses(model, tokenizer, examples, max_new_tokens=8))


# ----------------------------------------------------------------------------- training runs

@pytest.mark.slow
def test_dpo_raises_the_margin_and_the_output_loads_serves_and_diffs(tiny_model_dir, tmp_path):
    from alpaca.weights import diff as weight_diff

    data = write_jsonl(tmp_path / "prefs.jsonl", make_pairs(16))
    out = tmp_path / "dpo"
    state = run_dpo(tiny_model_dir, data, out, "--max_steps", "8", "--learning_rate", "1e-3", "--beta", "0.1",
                    "--eval_data_path", data, "--eval_strategy", "steps", "--eval_steps", "8", "--eval_on_start",
                    "True")
    evals = [e for e in state["log_history"] if "eval_loss" in e]
    before, after = evals[0], evals[-1]
    # At the start the model is its reference: every reward is 0 and the loss is log 2.
    assert before["eval_rewards/margins"] == pytest.approx(0, abs=1e-5)
    assert before["eval_loss"] == pytest.approx(0.6931, abs=1e-3)
    assert after["eval_rewards/margins"] > 1.0 and after["eval_loss"] < 0.4
    assert after["eval_rewards/accuracies"] == 1.0
    steps = [e for e in state["log_history"] if "loss" in e]
    assert len(steps) == 8 and all(e["real_tokens_per_second"] > 0 for e in steps)  # throughput.py's line
    # The output is an ordinary checkpoint with the Alpaca chat template: inference.py, servers, weight_diff.py.
    assert (out / "chat_template.jinja").is_file() and (out / "model.safetensors").is_file()
    assert liked_words(out) > liked_words(tiny_model_dir) + 3
    weight_diff.make_diff(str(tiny_model_dir), str(out), str(tmp_path / "diff"))
    weight_diff.recover(str(tiny_model_dir), str(tmp_path / "diff"), str(tmp_path / "recovered"),
                        test_inference=False)
    tuned, recovered = load_file(out / "model.safetensors"), load_file(tmp_path / "recovered" / "model.safetensors")
    assert tuned.keys() == recovered.keys() and all(torch.equal(tuned[k], recovered[k]) for k in tuned)


@pytest.mark.slow
def test_lora_dpo_trains_the_adapter_against_the_adapter_off_reference(tiny_model_dir, tmp_path, caplog):
    data = write_jsonl(tmp_path / "prefs.jsonl", make_pairs(16))
    out = tmp_path / "lora"
    caplog.set_level("INFO")
    state = run_dpo(tiny_model_dir, data, out, "--max_steps", "8", "--learning_rate", "2e-2", "--lora_r", "8",
                    "--lora_alpha", "16", "--lora_dropout", "0.0", "--lora_target_modules", "all-linear")
    assert "reference: the model with its LoRA adapter off" in caplog.text
    margins = [e["rewards/margins"] for e in state["log_history"] if "rewards/margins" in e]
    assert margins[0] == pytest.approx(0, abs=1e-5) and margins[-1] > 0.5  # the adapter starts at zero: no margin
    assert (out / "adapter_config.json").is_file() and not (out / "model.safetensors").exists()
    assert liked_words(out) > liked_words(tiny_model_dir)  # inference.py loads the adapter directory on its own


@pytest.mark.slow
def test_resume_from_checkpoint_equals_an_uninterrupted_run(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "prefs.jsonl", make_pairs(24))
    common = ("--max_steps", "6", "--learning_rate", "1e-3", "--save_strategy", "steps", "--save_steps", "3")
    whole = run_dpo(tiny_model_dir, data, tmp_path / "whole", *common)
    checkpoint = tmp_path / "interrupted" / "checkpoint-3"
    shutil.copytree(tmp_path / "whole" / "checkpoint-3", checkpoint)
    resumed = run_dpo(tiny_model_dir, data, tmp_path / "resumed", *common, "--resume_from_checkpoint", str(checkpoint))
    losses = [[e["loss"] for e in s["log_history"] if "loss" in e] for s in (whole, resumed)]
    assert resumed["global_step"] == whole["global_step"] == 6
    assert losses[1][3:] == pytest.approx(losses[0][3:], abs=1e-6)  # steps 4-6 redone from the checkpoint
    weights = [load_file(tmp_path / run / "model.safetensors") for run in ("whole", "resumed")]
    for name, tensor in weights[0].items():
        torch.testing.assert_close(weights[1][name], tensor, rtol=0, atol=1e-6)


def prepared_dataset(model_dir, data, out, monkeypatch):
    """train_dpo up to training: the dataset TRL tokenized (prompt_ids, chosen_ids, rejected_ids) and the
    tokenizer, as train_dpo loaded them."""
    from trl import DPOTrainer

    class Prepared(Exception):
        pass

    seen = {}

    def stop(trainer, *args, **kwargs):
        seen.update(dataset=trainer.train_dataset, tokenizer=trainer.processing_class)
        raise Prepared

    monkeypatch.setattr(DPOTrainer, "train", stop)
    with pytest.raises(Prepared):
        run_dpo(model_dir, data, out, "--model_max_length", "512")
    return seen["dataset"], seen["tokenizer"]


def test_conversation_prompts_tokenize_as_train_py_tokenizes_the_conversation(tiny_model_dir, tmp_path,
                                                                            monkeypatch):
    """prompt + chosen (and + rejected) as TRL tokenizes a pair is, token for token, train.py's tokenization of the
    conversation with that answer as its last assistant turn; the answer starts where train.py's labels of that
    turn start. Alpaca pairs in the same file keep train.py's ids for prompt + output."""
    conversations, alpaca = make_conversation_pairs(8), make_pairs(3, seed=5)
    pairs = conversations[:4] + alpaca + conversations[4:]
    data = write_jsonl(tmp_path / "prefs.jsonl", pairs)
    dataset, tokenizer = prepared_dataset(tiny_model_dir, data, tmp_path / "out", monkeypatch)
    examples = []
    for pair in pairs:
        for answer in ("chosen", "rejected"):
            if "messages" in pair:
                examples.append({"messages": pair["messages"] + [{"role": "assistant", "content": pair[answer]}]})
            else:
                examples.append({"instruction": pair["instruction"], "input": "", "output": pair[answer]})
    reference = train.SupervisedDataset(examples, tokenizer)  # train.py's preprocessing, mixed file and all
    assert len(dataset) == len(pairs) and len(reference) == 2 * len(pairs)
    for i, row in enumerate(dataset):
        for j, answer in enumerate(("chosen", "rejected")):
            expected = reference[2 * i + j]
            assert row["prompt_ids"] + row[f"{answer}_ids"] == expected["input_ids"].tolist(), (i, answer)
            start = len(row["prompt_ids"])  # where TRL's loss starts is where train.py's labels of the answer start
            labels = expected["labels"].tolist()
            assert labels[start - 1] == train.IGNORE_INDEX and labels[start:] == row[f"{answer}_ids"], (i, answer)


def test_a_conversation_prompt_renders_as_the_chat_template_in_every_tokenizer_family(tiny_model_dir,
                                                                                      byte_level_bpe):
    """TRL tokenizes prompt + answer + eos with the tokenizer's special tokens; for each tokenizer family that is the
    template's rendering of the conversation with the answer, tokenized as engines and train.py tokenize it."""
    from conftest import KINDS, make_tokenizer, train_like

    for kind in KINDS:
        tokenizer = train_like(make_tokenizer(kind, tiny_model_dir, byte_level_bpe))
        for pair in make_conversation_pairs(8):
            text = dpo.prompt_text(pair, tokenizer.eos_token) + pair["chosen"] + tokenizer.eos_token
            messages = pair["messages"] + [{"role": "assistant", "content": pair["chosen"]}]
            assert tokenizer(text)["input_ids"] == tokenizer.apply_chat_template(messages, tokenize=True,
                                                                                 return_dict=True)["input_ids"], kind


def test_conversation_prompts_need_the_alpaca_chat_template_as_train_py_does(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = None  # as train.py leaves a tokenizer no Alpaca template reproduces
    assert len(dpo.as_dataset(make_pairs(2), tokenizer)) == 2  # Alpaca prompts are text: no template needed
    with pytest.raises(cli.DataError, match="^Conversation records need the Alpaca chat template"):
        dpo.as_dataset(make_pairs(1) + make_conversation_pairs(1), tokenizer)


@pytest.mark.slow
def test_dpo_trains_on_a_file_mixing_conversation_and_alpaca_prompts(tiny_model_dir, tmp_path):
    pairs = make_conversation_pairs(8) + make_pairs(8)
    random.Random(0).shuffle(pairs)
    data = write_jsonl(tmp_path / "prefs.jsonl", pairs)
    state = run_dpo(tiny_model_dir, data, tmp_path / "dpo", "--max_steps", "6", "--learning_rate", "1e-3",
                    "--model_max_length", "256")
    margins = [e["rewards/margins"] for e in state["log_history"] if "rewards/margins" in e]
    assert margins[0] == pytest.approx(0, abs=1e-5) and margins[-1] > margins[0]


# ----------------------------------------------------------------------------- mistakes

@pytest.mark.parametrize("line, message", [
    ({"prompt": "p", "chosen": "a"}, "line 2: field 'rejected' is missing"),
    ({"prompt": "p", "chosen": 3, "rejected": "b"}, "line 2: field 'chosen' must be a string"),
    ({"prompt": " ", "chosen": "a", "rejected": "b"}, "line 2: field 'prompt' is empty"),
    (["p", "a", "b"], "line 2: expected an object"),
    ({"chosen": "a", "rejected": "b"}, "line 2: field 'prompt' is missing; every pair needs prompt \\(or messages\\)"),
    ({"messages": [{"role": "user", "content": "Hi."}], "chosen": "a"}, "line 2: field 'rejected' is missing"),
    ({"prompt": "p", "messages": [{"role": "user", "content": "Hi."}], "chosen": "a", "rejected": "b"},
     "line 2: give the prompt once, as 'prompt' .* or as 'messages'"),
    ({"messages": [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "a"}], "chosen": "a",
      "rejected": "b"}, "line 2: the messages end with an assistant turn; a pair's messages end with the user turn"),
    ({"messages": [{"role": "user", "content": "Hi."}, {"role": "user", "content": "Again."}], "chosen": "a",
      "rejected": "b"}, "line 2, message 1: a user message cannot come here"),
    ({"messages": [{"role": "system", "content": "Be brief."}], "chosen": "a", "rejected": "b"},
     "line 2: the conversation has no user turn"),
    ({"messages": "Hi.", "chosen": "a", "rejected": "b"}, "line 2: field 'messages' must be a non-empty list"),
])
def test_bad_pairs_are_named_by_file_and_line(tmp_path, line, message):
    path = write_jsonl(tmp_path / "prefs.jsonl", [make_pairs(1)[0], line])
    with pytest.raises(cli.DataError, match=f"prefs.jsonl, {message}"):
        dpo.load_preferences(path)
    listed = tmp_path / "prefs.json"
    listed.write_text(json.dumps([make_pairs(1)[0], line]))
    with pytest.raises(cli.DataError, match=f"prefs.json, {message.replace('line 2', 'record 1')}"):
        dpo.load_preferences(str(listed))


def test_flags_are_train_pys_plus_dpos(tmp_path):
    model_args, data_args, args, notices = dpo.parse_args(
        ["--model_name_or_path", "m", "--data_path", "d.jsonl", "--output_dir", str(tmp_path), "--beta", "0.3",
         "--lora_r", "4", "--model_max_length", "300", "--trust_remote_code", "false", "--no_cuda", "True"])
    assert args.beta == 0.3 and args.lora_r == 4 and args.max_length == 300 and args.use_cpu
    assert not args.bf16 and not args.gradient_checkpointing and args.learning_rate == 1e-6  # train.py's, DPO's lr
    assert model_args.trust_remote_code is False and any("--no_cuda" in n for n in notices)
    with pytest.raises(cli.UsageError, match="--data_path is required: a JSON list or JSONL of {prompt, chosen"):
        dpo.parse_args(["--model_name_or_path", "m", "--output_dir", str(tmp_path)])
    with pytest.raises(cli.UsageError, match=r"--bta \(did you mean --beta\?\); `python train_dpo.py --help`"):
        dpo.parse_args(["--data_path", "d", "--output_dir", str(tmp_path), "--bta", "0.1"])


def test_a_too_small_max_length_is_one_sentence_not_num_samples_0(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "prefs.jsonl", make_pairs(4))
    with pytest.raises(cli.DataError, match="prompt fills --model_max_length 16.*raise --model_max_length"):
        run_dpo(tiny_model_dir, data, tmp_path / "out", "--max_steps", "1", "--model_max_length", "16")


@pytest.mark.slow  # a fresh Python per case
@pytest.mark.parametrize("case", ["missing field", "unknown flag", "no such file"])
def test_the_command_line_contract(repo_dir, tiny_model_dir, tmp_path, case):
    data = write_jsonl(tmp_path / "prefs.jsonl", [make_pairs(1)[0], {"prompt": "p", "chosen": "a"}])
    argv = {"missing field": ["--data_path", data],
            "unknown flag": ["--data_path", data, "--betta", "0.1"],
            "no such file": ["--data_path", str(tmp_path / "nope.jsonl")]}[case]
    result = subprocess.run([sys.executable, "train_dpo.py", "--model_name_or_path", str(tiny_model_dir),
                             "--output_dir", str(tmp_path / "out"), *argv], cwd=repo_dir, capture_output=True,
                            text=True, timeout=120)
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    expected = {"missing field": (1, "prefs.jsonl, line 2: field 'rejected' is missing"),
                "unknown flag": (2, "unknown flag --betta (did you mean --beta?)"),
                "no such file": (1, "nope.jsonl' does not exist")}[case]
    assert result.returncode == expected[0] and expected[1] in lines[0]
    assert not (tmp_path / "out").exists()  # refused before any work
