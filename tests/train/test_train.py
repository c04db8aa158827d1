"""train.py in one process on the tiny LLaMA: preprocessing, tokens, collators, padding-free, LoRA, eval, resume."""

import copy
import json
import logging
import os
import pathlib
import random
import shutil
import socket
import subprocess
import sys
import types

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

import utils
from alpaca import cli
from alpaca.cli import MissingPathError, UsageError
from alpaca.train import setup as train_setup
from alpaca.train import sft as train
from alpaca.train.legacy_flags import translate_legacy_flags
from alpaca.train.sft import (
    IGNORE_INDEX,
    PROMPT_DICT,
    DataArguments,
    DataCollatorForSupervisedDataset,
    ModelArguments,
    SupervisedDataset,
    TrainingArguments,
    format_examples,
    load_model_and_tokenizer,
    make_supervised_data_module,
    missing_special_tokens,
    preprocess,
)

REPO = pathlib.Path(__file__).resolve().parents[2]
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


EDGE_CASES = [  # a literal [PAD] or </s> in the text, unicode, odd whitespace, a very long prompt
    {"instruction": "Repeat [PAD] twice.", "input": "[PAD] [PAD]", "output": "[PAD][PAD]"},
    {"instruction": "Traduis: café, naïve, 東京 🦙", "input": "", "output": "ok"},
    {"instruction": "Say nothing.", "input": "", "output": ""},
    {"instruction": "Spaces after   ", "input": "x</s>y", "output": "  two leading spaces"},
    {"instruction": "Newline first.", "input": "", "output": "\n\nafter two newlines </s> and more"},
    {"instruction": "Punctuation.", "input": "", "output": ":### Response: ### ::"},
    {"instruction": " ".join(WORDS * 5), "input": "x", "output": "never seen"},
]


class PublicSurfaceOnly:
    """A fast tokenizer's Rust backend that refuses to be serialized: preprocess must not read the tokenizer's
    internals (tokenizer.json's spelling of its model, normalizers and pre-tokenizer) to decide anything.
    `wrong_ids` makes its batch call drop each string's first token, as a misconfigured backend would."""

    def __init__(self, backend, wrong_ids: bool = False):
        object.__setattr__(self, "_backend", backend)
        object.__setattr__(self, "_wrong_ids", wrong_ids)

    def __getattr__(self, name):
        if name in ("to_str", "save", "__getstate__"):
            raise AssertionError(f"preprocess read the tokenizer's serialized internals (backend.{name})")
        if name == "encode_batch_fast" and self._wrong_ids:
            return lambda texts, **kwargs: [types.SimpleNamespace(ids=e.ids[1:])
                                            for e in self._backend.encode_batch_fast(texts, **kwargs)]
        return getattr(self._backend, name)

    def __setattr__(self, name, value):
        setattr(self._backend, name, value)


@pytest.fixture(scope="module")
def byte_level_bpe():
    """A byte-level BPE (the GPT-2 family) trained on the seed tasks and the templates; no model hub."""
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    lines = [json.loads(line)["instruction"] for line in (REPO / "seed_tasks.jsonl").read_text().splitlines()]
    bpe.train_from_iterator(lines + list(PROMPT_DICT.values()), vocab_size=600, special_tokens=["<s>", "</s>"],
                            show_progress=False)
    return bpe._tokenizer


TOKENIZER_FAMILIES = ["sentencepiece", "byte_level", "byte_level_bos"]


def tokenizer_of_family(family: str, model_and_tokenizer, byte_level_bpe):
    """A tokenizer of each family train.py supports, as train.py leaves it ([PAD] added, model_max_length 256):
    SentencePiece BPE with <s> and a ▁ before the first word (LLaMA, Mistral), byte-level BPE without BOS (GPT-2)
    and with a post-processor that puts BOS in front (Llama 3, OPT)."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    if family == "sentencepiece":
        return copy.deepcopy(model_and_tokenizer[1])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=copy.deepcopy(byte_level_bpe), bos_token="<s>",
                                        eos_token="</s>", model_max_length=256, padding_side="right")
    if family == "byte_level_bos":
        tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", tokenizer.bos_token_id)])
    tokenizer.add_special_tokens(missing_special_tokens(tokenizer))
    return tokenizer


@pytest.mark.parametrize("family", TOKENIZER_FAMILIES)
def test_preprocess_equals_the_one_by_one_reference_in_each_tokenizer_family(model_and_tokenizer, byte_level_bpe,
                                                                               family):
    """Two batched calls of the public API (full texts, prompts) give exactly the original's one-by-one ids and
    masks, for every family, without reading the tokenizer's internals."""
    tokenizer = tokenizer_of_family(family, model_and_tokenizer, byte_level_bpe)
    assert (tokenizer("x")["input_ids"][0] == tokenizer.bos_token_id) == (family != "byte_level")
    tokenizer._tokenizer = PublicSurfaceOnly(tokenizer.backend_tokenizer)
    examples = make_examples(300, seed=1, max_output_words=60) + EDGE_CASES
    sources, targets = format_examples(examples, tokenizer)
    ours = preprocess(sources, targets, tokenizer)
    assert tokenizer.backend_tokenizer.truncation is None  # not left on for save_pretrained to write
    reference = reference_preprocess(sources, targets, tokenizer)
    assert len(ours["input_ids"]) == len(ours["labels"]) == len(examples)
    truncated = 0
    for key in ("input_ids", "labels"):
        for mine, theirs in zip(ours[key], reference[key], strict=True):
            assert mine.dtype == torch.long and mine.dim() == 1
            assert torch.equal(mine, theirs)
            truncated += len(mine) == tokenizer.model_max_length
    assert truncated > 0  # model_max_length=256 really cuts some examples
    assert all(labels[0] == IGNORE_INDEX for labels in ours["labels"])


def test_a_backend_that_disagrees_with_the_tokenizer_is_not_trusted(model_and_tokenizer, caplog):
    """preprocess reads ids through the Rust tokenizer's batch call, checked per chunk against the tokenizer's own
    call; when they differ it says so and the tokenizer's own call gives every id."""
    tokenizer = copy.deepcopy(model_and_tokenizer[1])
    tokenizer._tokenizer = PublicSurfaceOnly(tokenizer.backend_tokenizer, wrong_ids=True)
    sources, targets = format_examples(make_examples(40, seed=2) + EDGE_CASES, tokenizer)
    with caplog.at_level(logging.WARNING):
        ours = preprocess(sources, targets, tokenizer)
    reference = reference_preprocess(sources, targets, tokenizer)
    assert "disagrees with the tokenizer's own" in caplog.text
    for key in ("input_ids", "labels"):
        assert all(torch.equal(a, b) for a, b in zip(ours[key], reference[key], strict=True)), key


@pytest.mark.parametrize("spelling", ["metaspace", "prepend_and_replace", "metaspace_never_prepends"])
def test_preprocess_equals_the_reference_for_each_spelling_of_spaces(model_and_tokenizer, spelling):
    """Each way a SentencePiece-style tokenizer.json spells spaces and the leading ▁ (LLaMA-2's normalizers,
    Metaspace, Metaspace that never prepends) gives the original's ids and masks."""
    from tokenizers import normalizers, pre_tokenizers

    _, tokenizer = model_and_tokenizer
    tokenizer = copy.deepcopy(tokenizer)
    backend = tokenizer.backend_tokenizer
    if spelling == "prepend_and_replace":
        backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        backend.pre_tokenizer = None
    elif spelling == "metaspace_never_prepends":
        backend.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="never", split=False)
    sources, targets = format_examples(make_examples(120, seed=3), tokenizer)
    pairs = [(" leading space", " and one after</s>"), ("▁already spelled", "x</s>"), ("  two", "  more</s>"),
             ("tab\there ", "\n</s>"), ("東京 🦙", " ok</s>"), ("end with space ", "next</s>")]
    sources += [s for s, _ in pairs]
    targets += [t for _, t in pairs]
    ours, reference = preprocess(sources, targets, tokenizer), reference_preprocess(sources, targets, tokenizer)
    for key in ("input_ids", "labels"):
        assert all(torch.equal(a, b) for a, b in zip(ours[key], reference[key], strict=True)), key


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
    load = utils.load_alpaca_records
    assert load(write_json(tmp_path / "d.json", examples)) == load(str(jsonl)) == examples


@pytest.mark.parametrize("record, message", [
    ({"input": "", "output": "o"}, "record 2: field 'instruction' is missing"),
    ({"instruction": "i", "input": ""}, "record 2: field 'output' is missing"),
    ({"instruction": "i", "input": "", "output": 3}, "record 2: field 'output' must be a string, got int"),
    (["i", "", "o"], "record 2: expected an object"),
])
def test_bad_records_are_named(tmp_path, record, message):
    path = write_json(tmp_path / "bad.json", make_examples(2) + [record])
    with pytest.raises(ValueError, match=message):
        utils.load_alpaca_records(path)


def test_a_null_input_means_no_input(tmp_path, model_and_tokenizer):
    """One contract for every script (utils.load_alpaca_records): `"input": null` is no input, as a missing one."""
    _, tokenizer = model_and_tokenizer
    path = write_json(tmp_path / "null.json", [{"instruction": "Do X.", "input": None, "output": "Done."}])
    dataset = SupervisedDataset(path, tokenizer)
    no_input = SupervisedDataset([{"instruction": "Do X.", "output": "Done."}], tokenizer)
    assert torch.equal(dataset[0]["input_ids"], no_input[0]["input_ids"])


def test_a_json_file_with_a_byte_order_mark_loads(tmp_path):
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(make_examples(2)).encode())
    assert utils.load_alpaca_records(str(path)) == make_examples(2)


@pytest.mark.slow
def test_lora_target_modules_the_model_lacks_are_named(tiny_model_dir, tmp_path, caplog):
    data = write_json(tmp_path / "d.json", make_examples(8))
    with caplog.at_level(logging.WARNING, logger="train"):
        run_train(tiny_model_dir, data, tmp_path / "lora", "--max_steps", "1", "--lora_r", "2",
                  "--lora_target_modules", "q_proj", "out_proj")
    assert "--lora_target_modules out_proj: no such module in this model" in caplog.text and "o_proj" in caplog.text


def test_bad_files_are_named(tmp_path):
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_text(json.dumps(make_examples(1)[0]) + "\n{not json\n")
    with pytest.raises(ValueError, match="bad.jsonl, line 2"):  # before the model is loaded (it does not exist)
        run_train(tmp_path / "no-such-model", jsonl, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="missing.json"):
        run_train(tmp_path / "no-such-model", write_json(tmp_path / "d.json", make_examples(4)), tmp_path / "out",
                  "--eval_data_path", str(tmp_path / "missing.json"))
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(ValueError, match="holds no examples"):
        run_train(tmp_path / "no-such-model", tmp_path / "empty.json", tmp_path / "out")
    assert not (tmp_path / "out").exists()


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


@pytest.mark.parametrize("argv, message", [
    (["--no_cuda", "maybe"], "--no_cuda takes True or False, not 'maybe'"),
    (["--warmup_ratio", "three percent"], "--warmup_ratio must be a number in \\[0, 1\\), got 'three percent'"),
    (["--fsdp", "full_shard", "--fsdp_config", "{not json", "--fsdp_transformer_layer_cls_to_wrap", "X"],
     "--fsdp_config {not json: not valid JSON"),
])
def test_bad_legacy_flag_values_are_usage_errors(argv, message):
    with pytest.raises(cli.UserError, match=message):
        translate_legacy_flags(argv)


def test_legacy_booleans_are_read_as_every_script_reads_them():
    for spelling in ("false", "False", "0", "no", "off"):
        assert translate_legacy_flags(["--no_cuda", spelling, "--use_cpu", "True"])[0] == ["--use_cpu", "True"]
        assert translate_legacy_flags(["--fsdp", spelling, "--use_cpu", "True"])[0] == ["--use_cpu", "True"]


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

@pytest.mark.slow
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
    with pytest.raises(cli.OutputExistsError, match="already holds a trained model"):  # a second run keeps it
        run_train(tiny_model_dir, data, tmp_path / "out", "--num_train_epochs", "1")


@pytest.mark.slow
def test_checkpoints_save_the_models_length_limit_not_trainings(tiny_model_dir, tmp_path, caplog):
    """Data is cut at --model_max_length 128, but the saved tokenizers (checkpoint and final) say the model's 4096
    positions, so inference does not warn "Token indices sequence length is longer than the specified maximum"."""
    data = write_json(tmp_path / "d.json", make_examples(16))
    run_train(tiny_model_dir, data, tmp_path / "out", "--max_steps", "2", "--model_max_length", "128",
              "--save_strategy", "steps", "--save_steps", "2")
    assert max(len(ids) for ids in SupervisedDataset(make_examples(16), load_model_and_tokenizer(
        ModelArguments(model_name_or_path=str(tiny_model_dir)),
        TrainingArguments(output_dir="unused", model_max_length=128, use_cpu=True))[1]).input_ids) == 128
    for saved in (tmp_path / "out", tmp_path / "out" / "checkpoint-2"):
        tokenizer = AutoTokenizer.from_pretrained(saved)
        assert tokenizer.model_max_length == AutoModelForCausalLM.from_pretrained(saved).config.max_position_embeddings
        assert tokenizer.model_max_length == 4096
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert len(tokenizer(" ".join(WORDS * 20))["input_ids"]) > 128
    assert "longer than the specified maximum" not in caplog.text


@pytest.mark.slow
@pytest.mark.parametrize("stop_at_step, saved", [(3, "checkpoint-2"), (1, None)])
def test_ctrl_c_says_what_was_saved_and_how_to_resume(tiny_model_dir, tmp_path, capsys, monkeypatch, stop_at_step,
                                                      saved):
    """Ctrl-C during the training steps (a KeyboardInterrupt in a step, as the signal raises it) exits 130 with one
    sentence naming the last checkpoint and the flag that continues from it, or saying that nothing was saved."""
    class InterruptedTrainer(train.SupervisedTrainer):
        def training_step(self, *args, **kwargs):
            if self.state.global_step == stop_at_step:
                raise KeyboardInterrupt
            return super().training_step(*args, **kwargs)

    monkeypatch.setattr(train, "SupervisedTrainer", InterruptedTrainer)
    out = tmp_path / "out"
    code, err = run_main(["--model_name_or_path", str(tiny_model_dir), "--data_path",
                          write_json(tmp_path / "d.json", make_examples(40)), "--output_dir", str(out),
                          "--max_steps", "8", "--save_strategy", "steps", "--save_steps", "2", "--report_to", "none",
                          "--per_device_train_batch_size", "2"], capsys)
    assert code == 130
    if saved:
        assert one_error_line(err) == (f"error: training interrupted at step {stop_at_step}; the last checkpoint is "
                                       f"{out / saved}. Continue from it with the same command and "
                                       "--resume_from_checkpoint True.")
    else:
        assert one_error_line(err) == (f"error: training interrupted at step {stop_at_step}, before its first "
                                       f"checkpoint: nothing was saved in {out}. Run the same command again to start "
                                       "afresh (--save_steps sets how often a checkpoint is written).")


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
    assert AutoTokenizer.from_pretrained(out / "merged").model_max_length == 4096  # the model's, not training's


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
    with pytest.raises(UsageError, match="leaves no training data"):
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
    with pytest.raises(UsageError, match="--merge_lora True needs LoRA"):
        run_train(tiny_model_dir, data, tmp_path / "x", "--merge_lora", "True")
    code, err = run_main(["--model_name_or_path", str(tiny_model_dir), "--data_path", data, "--output_dir",
                          str(tmp_path / "x"), "--fsdp", "full_shard auto_wrap"], capsys)  # no torchrun
    assert code == 2 and err[-1] == ("error: --fsdp shards the model across processes: launch with torchrun "
                                     "--nproc_per_node=N (N GPUs).")
    assert any(line.startswith("legacy flag: --fsdp") for line in err) and not any("usage:" in line for line in err)
    with pytest.raises(UsageError, match="not both"):  # the held-out examples would be lost from training for nothing
        run_train(tiny_model_dir, data, tmp_path / "x", "--val_set_size", "2", "--eval_data_path", data)
    with pytest.raises(UsageError, match="leaves no training data"):
        run_train(tiny_model_dir, data, tmp_path / "x", "--val_set_size", "4")
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------- user mistakes: one sentence, exit 1

class ReachedModelLoading(Exception):
    """Raised where train.train would load the model: every check before it has passed."""


@pytest.fixture
def stop_at_model_loading(monkeypatch):
    def stop(*args, **kwargs):
        raise ReachedModelLoading
    monkeypatch.setattr(train, "load_model_and_tokenizer", stop)


def run_main(argv: list[str], capsys) -> tuple[int, list[str]]:
    """train.train(argv) as `python train.py` runs it, through cli.report_errors: (exit code, stderr lines)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        cli.report_errors(lambda: train.train(argv), sigterm_as_interrupt=False)
    return exited.value.code, capsys.readouterr().err.splitlines()


def one_error_line(err: list[str]) -> str:
    """The single `error:` line of stderr; fails on a traceback or on several error lines."""
    errors = [line for line in err if line.startswith("error: ")]
    assert len(errors) == 1 and not any("Traceback" in line for line in err), err
    return errors[0]


def pickled_model_dir(tmp_path):
    """A model directory that train.py refuses to load (pickled weights only): reaching it is an error of its own."""
    model = tmp_path / "pickled-model"
    model.mkdir(exist_ok=True)
    (model / "pytorch_model.bin").write_bytes(b"never unpickled")
    return model


def test_data_mistakes_are_one_sentence_before_the_model_loads(tmp_path, capsys, stop_at_model_loading):
    good = make_examples(3)
    cases = {  # file name, content, what the sentence says
        "missing field": ("a.json", json.dumps(good[:1] + [{"instruction": "i", "input": ""}]),
                          "a.json, record 1: field 'output' is missing"),
        "not UTF-8": ("b.json", b'[{"instruction": "caf\xe9", "output": "o"}]', "b.json is not UTF-8 text"),
        "a JSON object": ("c.json", json.dumps(good[0], indent=2),
                          "c.json holds a single JSON object (keys: instruction, input, output); expected a JSON list"),
        "malformed JSONL": ("d.jsonl", json.dumps(good[0]) + "\n{oops\n", "d.jsonl, line 2: not valid JSON"),
        "no examples": ("e.json", "[]", "e.json holds no examples"),
    }
    for name, content, message in cases.values():
        path = tmp_path / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        for flag in ("--data_path", "--eval_data_path"):
            data = str(path) if flag == "--data_path" else write_json(tmp_path / "good.json", good)
            argv = ["--model_name_or_path", "unused", "--data_path", data, "--output_dir", str(tmp_path / "out")]
            code, err = run_main(argv + (["--eval_data_path", str(path)] if flag == "--eval_data_path" else []), capsys)
            assert code == 1 and message in one_error_line(err), (name, flag)
    assert not (tmp_path / "out").exists()


def test_command_line_and_model_mistakes_are_one_sentence(tmp_path, capsys):
    data = write_json(tmp_path / "d.json", make_examples(3))
    argv = ["--model_name_or_path", str(pickled_model_dir(tmp_path)), "--data_path", data,
            "--output_dir", str(tmp_path / "out")]
    code, err = run_main(argv + ["--lerning_rate", "1e-3"], capsys)
    assert code == 2 and one_error_line(err) == ("error: unknown flag --lerning_rate (did you mean --learning_rate?); "
                                                 "`python train.py --help` lists the flags.")
    code, err = run_main(argv + ["--bf16", "maybe"], capsys)
    assert code == 2 and "argument --bf16: takes True or False, not 'maybe'" in one_error_line(err)
    code, err = run_main(argv, capsys)  # the refused pickle
    assert code == 1 and "No *.safetensors weights" in one_error_line(err) and "pytorch_model.bin" in err[-1]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("typo, meant", [("--max_step", "--max_steps"), ("--learning_rat", "--learning_rate"),
                                         ("--data_pat", "--data_path"), ("--per_device_train_batch", None)])
def test_flag_names_must_be_exact(tmp_path, capsys, stop_at_model_loading, typo, meant):
    """argparse takes any unambiguous prefix of a flag by default (`--max_step 5` ran as --max_steps 5): train.py
    takes exact names only, suggests the closest, and exits 2 before anything is loaded."""
    data = write_json(tmp_path / "d.json", make_examples(3))
    argv = ["--model_name_or_path", "unused", "--data_path", data, "--output_dir", str(tmp_path / "out"), typo, "5"]
    code, err = run_main(argv, capsys)
    assert code == 2
    line = one_error_line(err)
    assert line.startswith(f"error: unknown flag {typo}") and line.endswith("`python train.py --help` lists the flags.")
    if meant:
        assert f"(did you mean {meant}?)" in line


@pytest.mark.parametrize("argv, message", [
    (["--max_steps", "five"], "--max-steps: invalid int value: 'five'"),
    (["--fsdp", "full_shard", "--fsdp_config", "{not json", "--fsdp_transformer_layer_cls_to_wrap", "X"],
     "--fsdp_config {not json: not valid JSON"),
    (["--warmup_ratio", "lots"], "--warmup_ratio must be a number in [0, 1), got 'lots'."),
    (["--no_cuda", "maybe"], "--no_cuda takes True or False, not 'maybe'."),
    (["--lora_r", "-1"], "--lora_r must be >= 0"),
])
def test_every_command_line_mistake_exits_2(tmp_path, capsys, stop_at_model_loading, argv, message):
    data = write_json(tmp_path / "d.json", make_examples(3))
    code, err = run_main(["--model_name_or_path", "unused", "--data_path", data, "--output_dir", str(tmp_path / "o"),
                          *argv], capsys)
    assert code == 2 and message in one_error_line(err)


@pytest.mark.parametrize("spelling, value", [("false", False), ("False", False), ("0", False), ("no", False),
                                             ("true", True), ("TRUE", True), ("1", True)])
def test_booleans_are_read_as_every_script_reads_them(tmp_path, spelling, value):
    _, _, args, _ = train.parse_args(["--data_path", "d.json", "--output_dir", str(tmp_path), "--use_cpu", "True",
                                      "--overwrite_output_dir", spelling, "--group_by_length", spelling])
    assert args.overwrite_output_dir is value
    assert (args.train_sampling_strategy == "group_by_length") is value


def test_an_output_dir_holding_a_model_is_refused_unless_resuming_or_overwriting(tmp_path, capsys,
                                                                                 stop_at_model_loading):
    data = write_json(tmp_path / "d.json", make_examples(3))
    out = tmp_path / "out"
    (out / "checkpoint-2").mkdir(parents=True)
    (out / "model.safetensors").write_bytes(b"a trained model")
    argv = ["--model_name_or_path", "unused", "--data_path", data, "--output_dir", str(out)]
    for extra in ([], ["--overwrite_output_dir", "false"], ["--resume_from_checkpoint", "False"],
                  ["--resume_from_checkpoint", str(tmp_path / "elsewhere" / "checkpoint-1")]):
        code, err = run_main(argv + extra, capsys)
        assert code == 1 and one_error_line(err) == (
            f"error: --output_dir {out} already holds a trained model or checkpoints (checkpoint-2, "
            "model.safetensors). Pass --resume_from_checkpoint True to continue that run, --overwrite_output_dir True "
            "to replace it, or another --output_dir."), extra
    assert (out / "model.safetensors").read_bytes() == b"a trained model"
    for allowed in (["--overwrite_output_dir", "True"], ["--resume_from_checkpoint", "True"],
                    ["--resume_from_checkpoint", str(out / "checkpoint-2")]):
        with pytest.raises(ReachedModelLoading):
            train.train(argv + allowed)
    for empty in (tmp_path / "empty", tmp_path / "absent"):  # nothing to lose: no flag needed
        (tmp_path / "empty").mkdir(exist_ok=True)
        with pytest.raises(ReachedModelLoading):
            train.train(["--model_name_or_path", "unused", "--data_path", data, "--output_dir", str(empty)])
    with pytest.raises(MissingPathError, match="--resume_from_checkpoint True continues from the last checkpoint-N"):
        train.train(["--model_name_or_path", "unused", "--data_path", data, "--output_dir", str(tmp_path / "empty"),
                     "--resume_from_checkpoint", "True"])
    with pytest.raises(cli.OutputExistsError, match="is a file"):
        train.train(["--model_name_or_path", "unused", "--data_path", data, "--output_dir", data])


def test_a_hub_id_without_a_hub_is_refused_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingPathError, match="no local model directory 'tiny-llama', and the Hugging Face Hub is "
                                               "switched off \\(HF_HUB_OFFLINE is set\\)"):
        utils.check_local_weights("tiny-llama", cache_dir=str(tmp_path))
    snapshot = tmp_path / "models--org--tiny" / "snapshots" / "abc123"  # a model downloaded before: loads offline
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (tmp_path / "models--org--tiny" / "refs").mkdir()
    (tmp_path / "models--org--tiny" / "refs" / "main").write_text("abc123")
    utils.check_local_weights("org/tiny", cache_dir=str(tmp_path))
    utils.check_local_weights(str(tmp_path / "no" / "such" / "dir"))  # no Hub id: from_pretrained fails offline
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        assert utils.hub_reachable(f"http://127.0.0.1:{port}")
    assert not utils.hub_reachable(f"http://127.0.0.1:{port}", timeout=2)  # closed now


# ----------------------------------------------------------------------------- the command-line contract

def run_script(repo_dir, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python train.py ARGS` in a subprocess, as a user runs it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "train.py", *args], cwd=repo_dir, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow  # a fresh Python per case: the in-process tests above cover the same, fast
@pytest.mark.parametrize("case", ["unknown flag", "false boolean", "missing data file", "malformed data file"])
def test_the_command_line_contract(repo_dir, tmp_path, case):
    """Exit code, one `error:` line, nothing written, and no model loaded before the check (the model directory
    holds only pickled weights: reaching it would be another error)."""
    data = write_json(tmp_path / "d.json", make_examples(3))
    out = tmp_path / "out"
    args = {"--model_name_or_path": str(pickled_model_dir(tmp_path)), "--data_path": data, "--output_dir": str(out)}
    extra, expected_code, message = {
        "unknown flag": (["--num_train_epoks", "1"], 2, "unknown flag --num_train_epoks (did you mean "
                                                        "--num_train_epochs?)"),
        "false boolean": (["--overwrite_output_dir", "false"], 1, f"--output_dir {out} already holds a trained model"),
        "missing data file": (["--data_path", str(tmp_path / "nope.json")], 1, "nope.json' does not exist"),
        "malformed data file": (["--data_path", str(tmp_path / "bad.json")], 1, "bad.json is not valid JSON"),
    }[case]
    (tmp_path / "bad.json").write_text(json.dumps(make_examples(2))[:-3])
    if case == "false boolean":
        out.mkdir()
        (out / "model.safetensors").write_bytes(b"a trained model")
    before = sorted(out.rglob("*")) if out.exists() else None
    result = run_script(repo_dir, *[s for flag, value in args.items() for s in (flag, value)], *extra)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == expected_code and len(errors) == 1, result.stderr[-3000:]
    assert message in errors[0] and "Traceback" not in result.stderr
    assert (sorted(out.rglob("*")) if out.exists() else None) == before  # nothing written


@pytest.mark.slow  # a fresh Python per case: the in-process tests above cover the same, fast
def test_a_hub_id_that_is_no_local_directory_fails_in_one_sentence(repo_dir, tmp_path):
    """No local tiny-llama, and the Hub unreachable (a closed loopback port stands in for it): one sentence at once,
    not a minute of retries and a 100-line OSError."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    result = subprocess.run(
        [sys.executable, "train.py", "--model_name_or_path", "tiny-llama", "--data_path",
         write_json(tmp_path / "d.json", make_examples(3)), "--output_dir", str(tmp_path / "out")],
        cwd=repo_dir, env={**env, "HF_ENDPOINT": f"http://127.0.0.1:{closed}", "HF_HOME": str(tmp_path / "hf")},
        capture_output=True, text=True, timeout=300)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == 1 and errors == [
        f"error: There is no local model directory 'tiny-llama', and the Hugging Face Hub (http://127.0.0.1:{closed}) "
        "could not be reached to fetch it as a Hub id: pass the directory of a local checkpoint, or check the "
        "network."], result.stderr[-3000:]


# Runs `python train.py ARGV` for each ARGV in one fresh Python (runpy, as the interpreter runs a script) and prints,
# per run: the exit code, stderr, and whether torch / transformers had been imported when it exited.
_RUN_TRAIN_PY_AND_REPORT = """
import contextlib, io, json, runpy, sys
reports = []
for argv in json.loads(sys.argv[1]):
    sys.argv, err = ["train.py", *argv], io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            runpy.run_path("train.py", run_name="__main__")
            code = 0
        except SystemExit as exit:
            code = exit.code
    reports.append(dict(code=code, err=err.getvalue(), torch="torch" in sys.modules,
                        transformers="transformers" in sys.modules))
print(json.dumps(reports))
"""


def test_path_mistakes_are_reported_before_torch_is_imported(repo_dir, tmp_path):
    """A mistyped model or data path costs a second, not the 17-58 s of importing torch, transformers and
    DeepSpeed: train.py checks the paths in argv first. Counted, not timed: torch is not in sys.modules when the
    sentence is printed and the process exits."""
    data = write_json(tmp_path / "d.json", make_examples(3))
    (tmp_path / "bad.json").write_text("[{")
    (tmp_path / "a_file").write_text("")
    model = str(tmp_path / "tiny-llama-missing")  # a path: no Hub id, whatever the network
    cases = [  # argv, exit code, the sentence
        (["--model_name_or_path", "tiny-llama-missing", "--data_path", data, "--output_dir", str(tmp_path / "o")], 1,
         "error: There is no local model directory 'tiny-llama-missing', and the Hugging Face Hub is switched off "
         "(HF_HUB_OFFLINE is set) and its cache does not hold it: pass the directory of a local checkpoint."),
        (["--model_name_or_path", model, "--data_path", str(tmp_path / "missing.json")], 1,
         f"error: Data file '{tmp_path / 'missing.json'}' does not exist or is not a file."),
        (["--model_name_or_path", model, "--output_dir", str(tmp_path / "o")], 2,
         "error: --data_path is required: a JSON list or JSONL of {instruction, input, output} records."),
        (["--model_name_or_path", model, "--data_path", data, "--eval_data_path", str(tmp_path / "bad.json")], 1,
         f"error: {tmp_path / 'bad.json'} is not valid JSON"),
        (["--model_name_or_path", model, "--data_path", data, "--output_dir", str(tmp_path / "a_file")], 1,
         f"error: --output_dir {tmp_path / 'a_file'} is a file; give a directory (it is created if missing)."),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", _RUN_TRAIN_PY_AND_REPORT, json.dumps([c[0] for c in cases])],
                            cwd=repo_dir, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    for (argv, code, sentence), report in zip(cases, json.loads(result.stdout.splitlines()[-1]), strict=True):
        assert report["code"] == code and report["err"].splitlines() == [report["err"].splitlines()[0]], report
        assert report["err"].startswith(sentence), report
        assert not report["torch"] and not report["transformers"], argv


def test_the_early_path_check_passes_what_train_accepts(tmp_path, stop_at_model_loading, tiny_model_dir):
    """check_paths refuses nothing train() would take: good paths, --flag=value, a typo it leaves to parse_args."""
    data = write_json(tmp_path / "d.json", make_examples(3))
    good = ["--model_name_or_path", str(tiny_model_dir), f"--data_path={data}", "--output_dir", str(tmp_path / "o")]
    train_setup.check_paths(good)
    with pytest.raises(ReachedModelLoading):
        train.train(good)
    train_setup.check_paths(["--help"])
    train_setup.check_paths(["--data_pth", data])  # the parser names the typo: "did you mean --data_path?"
    with pytest.raises(UsageError, match="unknown flag --data_pth \\(did you mean --data_path\\?\\)"):
        train.train(["--data_pth", data])


def test_the_deepspeed_ops_still_to_compile_are_announced(tmp_path, monkeypatch):
    """train.py says what happens before DeepSpeed's silent first-use compile, and only then."""
    pytest.importorskip("deepspeed")
    from torch.utils.cpp_extension import _get_build_directory

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    offload = {"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu"}}}
    args = types.SimpleNamespace(deepspeed="ds.json", hf_deepspeed_config=types.SimpleNamespace(config=offload))
    notices = train_setup.deepspeed_build_notices(args)
    assert [n.split()[3] for n in notices] == ["cpu_adam", "deepspeed_shm_comm"]
    cpu_adam = pathlib.Path(_get_build_directory("cpu_adam", verbose=False))
    assert notices[0] == ("DeepSpeed compiles its cpu_adam op on this first use: minutes, once; later runs reuse "
                          f"{cpu_adam}.")
    (cpu_adam / "lock").touch()  # a build killed half-way: torch would wait for it forever
    assert f"delete {cpu_adam / 'lock'}" in train_setup.deepspeed_build_notices(args)[0]
    (cpu_adam / "cpu_adam.so").write_bytes(b"built")
    assert [n.split()[3] for n in train_setup.deepspeed_build_notices(args)] == ["deepspeed_shm_comm"]
    args.hf_deepspeed_config.config = {"zero_optimization": {"stage": 2}}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert train_setup.deepspeed_build_notices(args) == []  # no offload, on a GPU: nothing compiles
    assert train_setup.deepspeed_build_notices(types.SimpleNamespace(deepspeed=None)) == []


# ----------------------------------------------------------------------------- a pinned loss

# Measured with torch 2.13.0 (CPU), transformers 5.23.0, tokenizers 0.23.3, sentencepiece 0.2.3, with 1 and 2 threads
# alike. Dividing each micro-batch by its own label tokens instead (the Trainer before 4.46) gives 6.2510, 6.1723,
# 6.0833: 6e-4 to 1.3e-3 away, so the 1e-4 tolerance catches it.
PINNED_LOSSES = [6.2504, 6.1735, 6.0845]
# The text the pinned run's tokenizer is trained on, here rather than read from the repository's files, so that
# editing prompt.txt or the seed tasks does not move the pinned numbers.
PINNED_CORPUS = " ".join(WORDS) + "\nBelow is an instruction that describes a task. Write a response.\n"


@pytest.fixture(scope="module")
def pinned_model_dir(tmp_path_factory) -> pathlib.Path:
    from alpaca.testing.tiny_model import make_tiny_model

    corpus = tmp_path_factory.mktemp("pinned-corpus") / "corpus.txt"
    corpus.write_text(PINNED_CORPUS)
    return make_tiny_model(str(tmp_path_factory.mktemp("pinned-llama")), corpus=[str(corpus)], seed=0)


@pytest.mark.slow
def test_the_loss_of_a_few_steps_is_pinned(pinned_model_dir, tmp_path):
    """Three optimizer steps of 2 micro-batches of 4, seeded, on the CPU: the logged losses to the 4th decimal.

    The loss is the sum of the token losses of an optimizer step divided by its number of label tokens (the
    Trainer's num_items_in_batch, transformers >= 4.46); an upgrade that normalises otherwise (the mean of each
    micro-batch's mean, per sequence, counting pads or the prompt) moves these numbers by far more than 1e-4.
    If a deliberate change moves them, re-pin them with the reason in the commit message."""
    data = write_json(tmp_path / "d.json", make_examples(24, seed=11))
    state = run_train(pinned_model_dir, data, tmp_path / "out", "--max_steps", "3", "--learning_rate", "1e-3",
                      "--gradient_accumulation_steps", "2", "--lr_scheduler_type", "constant")
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert losses == pytest.approx(PINNED_LOSSES, abs=1e-4)


