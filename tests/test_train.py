"""train.py in one process on the tiny LLaMA: preprocessing, tokens, collators, padding-free, LoRA, eval, resume."""

import json
import logging
import random
import shutil
import types

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

import train
from legacy_flags import translate_legacy_flags
from train import (
    IGNORE_INDEX,
    PROMPT_DICT,
    DataArguments,
    DataCollatorForSupervisedDataset,
    ModelArguments,
    SupervisedDataset,
    TrainingArguments,
    format_examples,
    load_examples,
    load_model_and_tokenizer,
    make_supervised_data_module,
    missing_special_tokens,
    preprocess,
)

WORDS = ("give three tips for staying healthy translate the sentence into french name a colour write short poem "
         "about sea summarise paragraph in one model data alpaca llama good morning weather is lovely today").split()


def make_examples(n: int, seed: int = 0, max_output_words: int = 40) -> list[dict]:
    """Alpaca-like records; about a third have an input."""
    rng = random.Random(seed)
    words = lambda lo, hi: " ".join(rng.choices(WORDS, k=rng.randint(lo, hi)))  # noqa: E731
    return [{"instruction": words(3, 12), "input": words(2, 10) if i % 3 == 0 else "",
             "output": words(1, max_output_words)} for i in range(n)]


def write_json(path, records) -> str:
    path.write_text(json.dumps(records))
    return str(path)


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_dir):
    return load_model_and_tokenizer(ModelArguments(model_name_or_path=str(tiny_model_dir)),
                                    TrainingArguments(output_dir="unused", model_max_length=256, use_cpu=True))


def run_train(tiny_model_dir, data_path, output_dir, *extra: str) -> dict:
    """train.train() in this process; returns the trainer_state.json it wrote."""
    train.train(["--model_name_or_path", str(tiny_model_dir), "--data_path", str(data_path),
                 "--output_dir", str(output_dir), "--per_device_train_batch_size", "4", "--logging_steps", "1",
                 "--report_to", "none", "--save_strategy", "no", "--use_cpu", "True", "--seed", "7", *extra])
    return json.loads((output_dir / "trainer_state.json").read_text())


# ----------------------------------------------------------------------------- tokenizer and embeddings

def test_missing_pad_token_is_added_with_mean_initialised_rows(tiny_model_dir, model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    raw = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    raw_rows = raw.get_input_embeddings().weight.shape[0]
    assert AutoTokenizer.from_pretrained(tiny_model_dir).pad_token is None
    assert tokenizer.pad_token == "[PAD]" and tokenizer.pad_token_id == raw_rows
    assert tokenizer.padding_side == "right" and tokenizer.model_max_length == 256  # not the saved ~1e30, not left
    for new, old in ((model.get_input_embeddings(), raw.get_input_embeddings()),
                     (model.get_output_embeddings(), raw.get_output_embeddings())):
        assert new.weight.shape[0] == len(tokenizer) == raw_rows + 1
        torch.testing.assert_close(new.weight[:-1], old.weight, rtol=0, atol=0)
        torch.testing.assert_close(new.weight[-1], old.weight.mean(dim=0), rtol=0, atol=0)


def test_empty_or_absent_special_tokens_count_as_missing():
    tokenizer = types.SimpleNamespace(pad_token=None, eos_token="", bos_token="<s>", unk_token="<unk>")
    assert missing_special_tokens(tokenizer) == {"pad_token": "[PAD]", "eos_token": "</s>"}
    complete = types.SimpleNamespace(pad_token="<pad>", eos_token="</s>", bos_token="<s>", unk_token="<unk>")
    assert missing_special_tokens(complete) == {}


# ----------------------------------------------------------------------------- preprocessing

def reference_preprocess(sources, targets, tokenizer) -> dict:
    """The rule, one example at a time, as the 2023 code tokenized: each string alone, padding="longest",
    truncated to model_max_length; the prompt's non-pad tokens are masked."""
    input_ids, labels = [], []
    for source, target in zip(sources, targets, strict=True):
        def tokenize(text):
            return tokenizer(text, return_tensors="pt", padding="longest", max_length=tokenizer.model_max_length,
                             truncation=True).input_ids[0]
        full, prompt = tokenize(source + target), tokenize(source)
        source_len = int(prompt.ne(tokenizer.pad_token_id).sum())
        label = full.clone()
        label[:source_len] = IGNORE_INDEX
        input_ids.append(full)
        labels.append(label)
    return dict(input_ids=input_ids, labels=labels)


@pytest.mark.parametrize("read_prompt_off_full_text", [True, False])
def test_preprocess_equals_the_one_by_one_reference(model_and_tokenizer, monkeypatch, read_prompt_off_full_text):
    _, tokenizer = model_and_tokenizer
    assert train._prompt_is_a_token_prefix(tokenizer)  # the fast path is taken for a LLaMA-style tokenizer
    if not read_prompt_off_full_text:
        monkeypatch.setattr(train, "_prompt_is_a_token_prefix", lambda tokenizer: False)
    examples = make_examples(300, seed=1, max_output_words=60)
    examples += [  # edge cases: a literal [PAD] or </s> in the text, unicode, odd whitespace, a very long prompt
        {"instruction": "Repeat [PAD] twice.", "input": "[PAD] [PAD]", "output": "[PAD][PAD]"},
        {"instruction": "Traduis: café, naïve, 東京 🦙", "input": "", "output": "ok"},
        {"instruction": "Say nothing.", "input": "", "output": ""},
        {"instruction": "Spaces after   ", "input": "x</s>y", "output": "  two leading spaces"},
        {"instruction": "Newline first.", "input": "", "output": "\n\nafter two newlines </s> and more"},
        {"instruction": "Punctuation.", "input": "", "output": ":### Response: ### ::"},
        {"instruction": " ".join(WORDS * 5), "input": "x", "output": "never seen"},
    ]
    sources, targets = format_examples(examples, tokenizer)
    ours, reference = preprocess(sources, targets, tokenizer), reference_preprocess(sources, targets, tokenizer)
    assert len(ours["input_ids"]) == len(ours["labels"]) == len(examples)
    truncated = 0
    for key in ("input_ids", "labels"):
        for mine, theirs in zip(ours[key], reference[key], strict=True):
            assert mine.dtype == torch.long and mine.dim() == 1
            assert torch.equal(mine, theirs)
            truncated += len(mine) == tokenizer.model_max_length
    assert truncated > 0  # model_max_length=256 really cuts some examples
    assert all(labels[0] == IGNORE_INDEX for labels in ours["labels"])


def test_prompt_length_is_read_off_only_at_a_clean_token_boundary(model_and_tokenizer):
    _, tokenizer = model_and_tokenizer
    text = "Below is an instruction that describes a task."
    encoding = tokenizer.backend_tokenizer.encode(text)
    ends = {end for start, end in encoding.offsets[1:]}  # after <s>
    inside = [c for start, end in encoding.offsets[1:] for c in range(start + 1, end)]
    assert inside and len(ends) > 3
    for chars in sorted(ends)[:-1]:  # a token ends at `chars`: the prefix's own tokens are the ones before it
        assert train._tokens_before(encoding, chars) == len(tokenizer(text[:chars])["input_ids"])
    assert all(train._tokens_before(encoding, c) is None for c in inside)  # one token spans the cut
    assert train._tokens_before(encoding, len(text)) is None  # nothing after the end: as when truncation cut it


def test_prompt_templates_and_target(model_and_tokenizer):
    _, tokenizer = model_and_tokenizer
    sources, targets = format_examples([{"instruction": "Do X.", "input": "", "output": "Done."},
                                        {"instruction": "Do X.", "input": "on Y", "output": "Done."},
                                        {"instruction": "Do X.", "output": "Done."}], tokenizer)
    assert sources == [PROMPT_DICT["prompt_no_input"].format(instruction="Do X."),
                       PROMPT_DICT["prompt_input"].format(instruction="Do X.", input="on Y"),
                       PROMPT_DICT["prompt_no_input"].format(instruction="Do X.")]
    assert targets == ["Done.</s>"] * 3


def test_examples_whose_prompt_fills_max_length_are_dropped_and_counted(model_and_tokenizer, caplog):
    _, tokenizer = model_and_tokenizer
    examples = make_examples(10) + [{"instruction": " ".join(WORDS * 8), "input": "", "output": "lost"}] * 2
    with caplog.at_level(logging.WARNING, logger="train"):
        dataset = SupervisedDataset(examples, tokenizer)
    assert len(dataset) == 10 and "Dropped 2 of 12 examples" in caplog.text
    assert dataset.lengths == [len(item["input_ids"]) for item in dataset]
    assert all((item["labels"] != IGNORE_INDEX).any() for item in dataset)


def test_collator_pads_right_and_masks(model_and_tokenizer):
    _, tokenizer = model_and_tokenizer
    dataset = SupervisedDataset(make_examples(4), tokenizer)
    batch = DataCollatorForSupervisedDataset(tokenizer)([dataset[i] for i in range(4)])
    pad = tokenizer.pad_token_id
    for row, item in enumerate(dataset):
        n = len(item["input_ids"])
        assert torch.equal(batch["input_ids"][row, :n], item["input_ids"])
        assert torch.equal(batch["labels"][row, :n], item["labels"])
        assert (batch["input_ids"][row, n:] == pad).all() and (batch["labels"][row, n:] == IGNORE_INDEX).all()
        assert batch["attention_mask"][row].sum() == n and batch["attention_mask"].dtype == torch.bool


# ----------------------------------------------------------------------------- data files

def test_json_list_and_jsonl_load_the_same(tmp_path):
    examples = make_examples(5)
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("\n".join(json.dumps(e) for e in examples) + "\n\n")
    assert load_examples(write_json(tmp_path / "d.json", examples)) == load_examples(str(jsonl)) == examples


@pytest.mark.parametrize("record, message", [
    ({"input": "", "output": "o"}, "record 2: field 'instruction' is missing"),
    ({"instruction": "i", "input": ""}, "record 2: field 'output' is missing"),
    ({"instruction": "i", "input": None, "output": "o"}, "record 2: field 'input' must be a string, got NoneType"),
    ({"instruction": "i", "input": "", "output": 3}, "record 2: field 'output' must be a string, got int"),
    (["i", "", "o"], "record 2: expected an object"),
])
def test_bad_records_are_named(tmp_path, record, message):
    path = write_json(tmp_path / "bad.json", make_examples(2) + [record])
    with pytest.raises(ValueError, match=message):
        load_examples(path)


def test_a_json_file_with_a_byte_order_mark_loads(tmp_path):
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(make_examples(2)).encode())
    assert load_examples(str(path)) == make_examples(2)


def test_lora_target_modules_the_model_lacks_are_named(tiny_model_dir, tmp_path, caplog):
    data = write_json(tmp_path / "d.json", make_examples(8))
    with caplog.at_level(logging.WARNING, logger="train"):
        run_train(tiny_model_dir, data, tmp_path / "lora", "--max_steps", "1", "--lora_r", "2",
                  "--lora_target_modules", "q_proj", "out_proj")
    assert "--lora_target_modules out_proj: no such module in this model" in caplog.text and "o_proj" in caplog.text


def test_bad_files_are_named(tmp_path):
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_text(json.dumps(make_examples(1)[0]) + "\n{not json\n")
    with pytest.raises(ValueError, match="bad.jsonl, line 2"):
        load_examples(str(jsonl))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_examples(str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match="bad.jsonl, line 2"):  # before the model is loaded (it does not exist)
        run_train(tmp_path / "no-such-model", jsonl, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="missing.json"):
        run_train(tmp_path / "no-such-model", write_json(tmp_path / "d.json", make_examples(4)), tmp_path / "out",
                  "--eval_data_path", str(tmp_path / "missing.json"))
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(ValueError, match="holds no examples"):
        load_examples(str(tmp_path / "empty.json"))


# ----------------------------------------------------------------------------- legacy flags and configs

def test_legacy_flags_are_translated_with_one_notice_each():
    argv, notices = translate_legacy_flags([
        "--evaluation_strategy", "no", "--warmup_ratio=0.03", "--group_by_length", "True", "--no_cuda",
        "--fsdp", "full_shard auto_wrap", "--fsdp_transformer_layer_cls_to_wrap", "LlamaDecoderLayer",
        "--tf32", "True", "--bf16", "True"])
    assert argv[:6] == ["--eval_strategy", "no", "--warmup_steps", "0.03", "--train_sampling_strategy",
                        "group_by_length"]
    assert argv[argv.index("--use_cpu") + 1] == "True" and argv[argv.index("--bf16") + 1] == "True"
    assert "--tf32" not in argv  # no GPU here: transformers 5 would raise on --tf32 True
    assert argv[argv.index("--fsdp") + 1] == "--fsdp_config"  # a bare --fsdp is True
    config = json.loads(argv[argv.index("--fsdp_config") + 1])
    assert config == {"reshard_after_forward": True, "transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"]}
    assert len(notices) == 7  # six flags, and no --use_cpu on a machine without a GPU (--no_cuda already gave it)
    assert sum("no GPU found" in n for n in notices) == 0
    argv, notices = translate_legacy_flags(["--bf16", "True", "--group_by_length", "False"])
    assert argv == ["--bf16", "True", "--use_cpu", "True"] and len(notices) == 2


def test_legacy_layer_class_merges_into_a_given_fsdp_config(repo_dir):
    argv, _ = translate_legacy_flags(["--fsdp", "--fsdp_config", str(repo_dir / "configs" / "fsdp_llama.json"),
                                      "--fsdp_transformer_layer_cls_to_wrap", "OPTDecoderLayer"])
    config = json.loads(argv[argv.index("--fsdp_config") + 1])
    assert config["transformer_layer_cls_to_wrap"] == ["OPTDecoderLayer"] and config["version"] == 2


def test_configs_load_and_name_real_classes(repo_dir):
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer
    from transformers.models.opt.modeling_opt import OPTDecoderLayer

    deepspeed = json.loads((repo_dir / "configs" / "default_offload_opt_param.json").read_text())
    zero = deepspeed["zero_optimization"]
    assert zero["stage"] == 3 and zero["offload_optimizer"]["device"] == zero["offload_param"]["device"] == "cpu"
    assert zero["stage3_gather_16bit_weights_on_model_save"] is True  # output_dir is an ordinary checkpoint
    assert deepspeed["train_micro_batch_size_per_gpu"] == "auto" and deepspeed["optimizer"]["params"]["lr"] == "auto"
    for name, layer in (("fsdp_llama.json", LlamaDecoderLayer), ("fsdp_opt.json", OPTDecoderLayer)):
        args = TrainingArguments(output_dir="unused", use_cpu=True, fsdp=True,
                                 fsdp_config=str(repo_dir / "configs" / name))
        assert args.fsdp_plugin_args["transformer_cls_names_to_wrap"] == layer.__name__
        assert args.fsdp_plugin_args["state_dict_type"] == "FULL_STATE_DICT"
        assert args.fsdp_plugin_args["fsdp_version"] == 2


# ----------------------------------------------------------------------------- padding-free

def test_padding_free_loss_equals_padded_loss(model_and_tokenizer, tmp_path):
    model, tokenizer = model_and_tokenizer
    model.config.use_cache = False
    data_args = DataArguments(data_path=write_json(tmp_path / "d.json", make_examples(8, seed=3)))
    dataset = make_supervised_data_module(tokenizer, data_args)["train_dataset"]
    instances = [dataset[i] for i in range(8)]
    padded = make_supervised_data_module(tokenizer, data_args)["data_collator"](instances)
    flat = make_supervised_data_module(tokenizer, data_args, padding_free=True)["data_collator"](instances)
    assert flat["input_ids"].shape == (1, sum(dataset.lengths)) and tokenizer.pad_token_id not in flat["input_ids"]
    assert (flat["position_ids"][0] == 0).sum() == 8
    # The Trainer passes the number of label tokens of the whole step; the loss is their mean in both layouts.
    num_items = int((padded["labels"][:, 1:] != IGNORE_INDEX).sum())
    assert num_items == int((flat["labels"][:, 1:] != IGNORE_INDEX).sum())
    with torch.no_grad():
        logits = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits
        by_hand = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                    padded["labels"][:, 1:].reshape(-1), reduction="sum") / num_items
        loss_padded = model(**padded, num_items_in_batch=torch.tensor(num_items)).loss
        loss_flat = model(**flat, num_items_in_batch=torch.tensor(num_items)).loss
        loss_flat_mean = model(**flat).loss
    assert abs(loss_padded - by_hand) < 1e-5
    assert abs(loss_flat - loss_padded) < 1e-4 and abs(loss_flat_mean - loss_padded) < 1e-4


@pytest.mark.slow
def test_padding_free_training_logs_the_same_losses(tiny_model_dir, tmp_path, caplog):
    data = write_json(tmp_path / "d.json", make_examples(32, seed=5))
    common = ("--max_steps", "4", "--learning_rate", "1e-3", "--include_num_input_tokens_seen", "True")
    padded = run_train(tiny_model_dir, data, tmp_path / "padded", *common)
    with caplog.at_level(logging.WARNING, logger="train"):
        flat = run_train(tiny_model_dir, data, tmp_path / "flat", *common, "--padding_free", "True")
    assert caplog.text.count("no variable-length kernel") == 1
    assert flat["num_input_tokens_seen"] < padded["num_input_tokens_seen"]  # no pad tokens were processed
    losses = [[entry["loss"] for entry in state["log_history"] if "loss" in entry] for state in (padded, flat)]
    assert len(losses[0]) == 4 and max(abs(a - b) for a, b in zip(*losses, strict=True)) < 1e-4


# ----------------------------------------------------------------------------- training runs

def test_train_writes_a_checkpoint_that_auto_classes_load(tiny_model_dir, tmp_path):
    data = write_json(tmp_path / "d.json", make_examples(24))
    state = run_train(tiny_model_dir, data, tmp_path / "out", "--num_train_epochs", "1", "--learning_rate", "1e-3")
    assert state["global_step"] == 6 and all(e["loss"] > 0 for e in state["log_history"] if "loss" in e)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert tokenizer.pad_token == "[PAD]" and model.get_input_embeddings().weight.shape[0] == len(tokenizer)
    assert model.config.use_cache  # turned off for training only
    # Tokenizing with truncation must not leave it switched on in the saved tokenizer.json (other tools read it).
    assert json.loads((tmp_path / "out" / "tokenizer.json").read_text())["truncation"] is None
    raw = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert not torch.equal(model.model.layers[0].mlp.up_proj.weight, raw.model.layers[0].mlp.up_proj.weight)


def test_group_by_length_uses_the_precomputed_lengths(tiny_model_dir, tmp_path, monkeypatch, model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    dataset = SupervisedDataset(make_examples(40), tokenizer)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, per_device_train_batch_size=4,
                             train_sampling_strategy="group_by_length", report_to="none")
    trainer = train.SupervisedTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                                      data_collator=DataCollatorForSupervisedDataset(tokenizer))
    monkeypatch.setattr(SupervisedDataset, "__getitem__", lambda self, i: pytest.fail("sampler read the dataset"))
    sampler = trainer._get_train_sampler()
    assert sampler.lengths is dataset.lengths
    order = list(sampler)
    assert sorted(order) == list(range(40))
    def real_token_share(order):
        batches = [[dataset.lengths[i] for i in order[k:k + 4]] for k in range(0, 40, 4)]
        return sum(map(sum, batches)) / sum(4 * max(b) for b in batches)

    assert real_token_share(order) > real_token_share(range(40)) + 0.05
    assert dataset.lengths[order[0]] == max(dataset.lengths)  # the longest batch first: an OOM shows at once


@pytest.mark.slow
def test_old_group_by_length_flag_trains(tiny_model_dir, tmp_path):
    data = write_json(tmp_path / "d.json", make_examples(16))
    state = run_train(tiny_model_dir, data, tmp_path / "out", "--max_steps", "2", "--group_by_length", "True")
    assert state["global_step"] == 2


@pytest.mark.slow
def test_lora_train_merge_and_reload(tiny_model_dir, tmp_path):
    from peft import PeftModel

    data = write_json(tmp_path / "d.json", make_examples(24))
    out = tmp_path / "lora"
    run_train(tiny_model_dir, data, out, "--max_steps", "5", "--learning_rate", "5e-2", "--lora_r", "4",
              "--lora_alpha", "8", "--lora_dropout", "0.0", "--lora_target_modules", "q_proj", "v_proj",
              "--merge_lora", "True")
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert not (out / "model.safetensors").exists()  # the adapter alone, not a second copy of the base
    adapter = load_file(out / "adapter_model.safetensors")
    lora_b = [t for name, t in adapter.items() if "lora_B" in name]
    assert lora_b and all(t.abs().max() > 0 for t in lora_b)  # trained away from the zero init
    assert not any("k_proj" in name for name in adapter)

    tokenizer = AutoTokenizer.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    base.resize_token_embeddings(len(tokenizer))
    with_adapter = PeftModel.from_pretrained(base, out).eval()
    merged = AutoModelForCausalLM.from_pretrained(out / "merged").eval()
    raw = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ids = tokenizer([PROMPT_DICT["prompt_no_input"].format(instruction="Name a colour.")], return_tensors="pt")
    with torch.no_grad():
        logits_adapter = with_adapter(**ids).logits
        logits_merged = merged(**ids).logits
        logits_raw = raw(**ids).logits
    torch.testing.assert_close(logits_merged, logits_adapter, rtol=1e-5, atol=1e-5)
    assert (logits_merged[..., :-1] - logits_raw).abs().max() > 1e-3  # the raw model has no [PAD] row
    assert AutoTokenizer.from_pretrained(out / "merged").pad_token == "[PAD]"


@pytest.mark.slow
def test_val_set_size_and_eval_data_path_log_eval_loss(tiny_model_dir, tmp_path):
    data = write_json(tmp_path / "d.json", make_examples(30))
    state = run_train(tiny_model_dir, data, tmp_path / "val", "--max_steps", "4", "--val_set_size", "6",
                      "--eval_strategy", "steps", "--eval_steps", "2", "--per_device_eval_batch_size", "4")
    evals = [e for e in state["log_history"] if "eval_loss" in e]
    assert [e["step"] for e in evals] == [2, 4] and all(e["eval_loss"] > 0 for e in evals)
    held_out = write_json(tmp_path / "eval.json", make_examples(5, seed=9))
    run_train(tiny_model_dir, data, tmp_path / "evalfile", "--max_steps", "2", "--eval_data_path", held_out)
    metrics = json.loads((tmp_path / "evalfile" / "eval_results.json").read_text())  # evaluated once, at the end
    assert metrics["eval_loss"] > 0 and metrics["eval_samples"] == 5
    with pytest.raises(ValueError, match="leaves no training data"):
        make_supervised_data_module(None, DataArguments(data_path=data, val_set_size=30))


@pytest.mark.slow
def test_resume_from_checkpoint_equals_an_uninterrupted_run(tiny_model_dir, tmp_path):
    data = write_json(tmp_path / "d.json", make_examples(40))
    common = ("--max_steps", "6", "--learning_rate", "1e-3", "--save_strategy", "steps", "--save_steps", "3")
    whole = run_train(tiny_model_dir, data, tmp_path / "whole", *common)
    checkpoint = tmp_path / "interrupted" / "checkpoint-3"
    shutil.copytree(tmp_path / "whole" / "checkpoint-3", checkpoint)
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    state["log_history"][0]["from_checkpoint"] = True  # shows that the resumed run did start from here
    (checkpoint / "trainer_state.json").write_text(json.dumps(state))
    resumed = run_train(tiny_model_dir, data, tmp_path / "resumed", *common,
                        "--resume_from_checkpoint", str(checkpoint))
    assert resumed["log_history"][0].get("from_checkpoint")
    assert resumed["global_step"] == whole["global_step"] == 6
    losses = [[e["loss"] for e in s["log_history"] if "loss" in e] for s in (whole, resumed)]
    assert len(losses[1]) == 6 and losses[1][3:] == pytest.approx(losses[0][3:], abs=1e-6)  # steps 4-6 redone
    weights = [load_file(tmp_path / run / "model.safetensors") for run in ("whole", "resumed")]
    for name, tensor in weights[0].items():
        torch.testing.assert_close(weights[1][name], tensor, rtol=0, atol=1e-6)


def test_bad_arguments_are_explained(tiny_model_dir, tmp_path, capsys):
    data = write_json(tmp_path / "d.json", make_examples(4))
    with pytest.raises(SystemExit):
        run_train(tiny_model_dir, data, tmp_path / "x", "--merge_lora", "True")
    with pytest.raises(SystemExit):
        run_train(tiny_model_dir, data, tmp_path / "x", "--fsdp", "full_shard auto_wrap")  # no torchrun
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == ("train.py: error: --fsdp shards the model across processes: launch with torchrun "
                                    "--nproc_per_node=N (N GPUs).") and "usage:" not in err
    with pytest.raises(SystemExit):  # the held-out examples would be lost from training for nothing
        run_train(tiny_model_dir, data, tmp_path / "x", "--val_set_size", "2", "--eval_data_path", data)
    assert "not both" in capsys.readouterr().err
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(FileNotFoundError, match="No \\*.safetensors weights .*pytorch_model.bin"):
        run_train(pickled, data, tmp_path / "x")
