"""Conversations (issue 23): the Alpaca chat template on several turns and its assistant mask, per tokenizer family;
its Python twin; train.py on `messages` records (labels = the template's mask), alone or mixed with Alpaca records;
the errors for malformed conversations."""

import copy
import json
import random

import pytest
import torch
from jinja2.exceptions import TemplateError
from test_train import make_examples, run_train, write_json

from alpaca import files
from alpaca.cli import DataError, UsageError
from alpaca.infer import answer as inference
from alpaca.prompts.alpaca import INPUT_ROLE, alpaca_chat_template, format_prompt
from alpaca.prompts.conversation import check_messages, format_conversation, prompt_messages, turns
from alpaca.train.sft import IGNORE_INDEX, DataArguments, SupervisedDataset, make_supervised_data_module
from conftest import DEMO, KINDS, make_tokenizer, post_json, run_script, train_like

WORDS = ("give three tips for staying healthy translate the sentence into french name a colour write short poem "
         "déjà vu 日本語 ünïcödé 😀 ### Response: {instruction} {{ jinja }}").split(" ")
HEADERS = {"user": "### Instruction:\n", INPUT_ROLE: "### Input:\n", "assistant": "### Response:"}


@pytest.fixture(scope="module", params=list(KINDS))
def family(request, tiny_model_dir, byte_level_bpe):  # noqa: F811
    return request.param, train_like(make_tokenizer(request.param, tiny_model_dir, byte_level_bpe))


def random_text(rng: random.Random, allow_empty: bool = False) -> str:
    text = rng.choice(["", " ", "\n", ". ", "!"]) + " ".join(rng.choices(WORDS, k=rng.randint(1, 8)))
    text += rng.choice(["", " ", "\n", "...", "  "])
    return "" if allow_empty and rng.random() < 0.1 else text


def random_conversation(rng: random.Random, end_with_assistant: bool = True) -> list[dict]:
    """An optional system message, then 1-4 turns; some user turns carry an input (as a role or a text part)."""
    messages = [{"role": "system", "content": random_text(rng)}] if rng.random() < 0.3 else []
    for _ in range(rng.randint(1, 4)):
        instruction = "x" + random_text(rng)  # never blank: a user turn holds an instruction
        how = rng.choice(["plain", "plain", "role", "parts"])
        if how == "parts":
            messages.append({"role": "user", "content": [{"type": "text", "text": instruction},
                                                         {"type": "text", "text": random_text(rng)}]})
        else:
            messages.append({"role": "user", "content": instruction})
        if how == "role":
            messages.append({"role": INPUT_ROLE, "content": random_text(rng)})
        messages.append({"role": "assistant", "content": random_text(rng, allow_empty=True)})
    return messages if end_with_assistant else messages[:-1]


def content_spans(rendered: str, messages: list[dict], eos: str) -> list[tuple[str, int, int]]:
    """(role, start, end) of every message's text in the rendered conversation, found header by header; an
    assistant span includes its eos. Also checks the layout the docs describe."""
    spans, cursor = [], 0
    for message in messages:
        role = message["role"]
        texts = [message["content"]] if isinstance(message["content"], str) else [
            part["text"] for part in message["content"]]
        if role == "system":
            cursor = rendered.index(texts[0])  # after the BOS text only
            assert cursor <= len("<s> ")
        for number, text in enumerate(texts):
            if role != "system":
                header = HEADERS[INPUT_ROLE if number == 1 else role]
                cursor = rendered.index(header, cursor) + len(header)
            assert rendered.startswith(text, cursor), (role, text, rendered[cursor:cursor + 40])
            end = cursor + len(text)
            if role == "assistant":
                assert rendered.startswith(eos, end)
                end += len(eos)
            spans.append((role, cursor, end))
            cursor = end
    return spans


def test_the_assistant_mask_holds_every_reply_and_its_eos_and_no_user_or_system_text(family):
    kind, tokenizer = family
    rng = random.Random(23)
    for _ in range(40):
        messages = random_conversation(rng)
        out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=True)
        rendered = tokenizer.apply_chat_template(messages, tokenize=False)
        assert rendered == {"none": "", "bos": "<s>", "bos_space": "<s> "}[KINDS[kind]] + format_conversation(
            messages, tokenizer.eos_token)  # the Python twin, byte for byte
        encoded = tokenizer(rendered, add_special_tokens=False, return_offsets_mapping=True)
        assert encoded["input_ids"] == out["input_ids"]
        mask, offsets = out["assistant_masks"], encoded["offset_mapping"]
        spans = content_spans(rendered, messages, tokenizer.eos_token)
        for role, start, end in spans:
            covering = [i for i, (a, b) in enumerate(offsets) if a < end and b > start and b > a]
            if role == "assistant":  # every character of the reply and the eos sits in a masked token
                assert all(mask[i] for i in covering), (kind, rendered[start:end])
                assert out["input_ids"][covering[-1]] == tokenizer.eos_token_id
            else:  # no token touching user, input or system text is masked
                assert not any(mask[i] for i in covering), (kind, role, rendered[start:end])
        assert sum(mask) >= sum(m["role"] == "assistant" for m in messages)


def test_one_user_turn_renders_exactly_as_prompt_dict():
    for example in DEMO[:20]:
        messages = [{"role": "user", "content": example["instruction"]}]
        if example["input"]:
            messages.append({"role": INPUT_ROLE, "content": example["input"]})
        assert format_conversation(messages, "</s>") == format_prompt(example["instruction"], example["input"])


def test_local_prompt_ids_equal_the_served_ids(family):
    """inference.py's local prompt ids are those an engine builds from the checkpoint's template: for Alpaca
    records (format_prompt with special tokens) and conversations (the template, also on a checkpoint without it);
    the Python twin gives them too unless a system message starts with a space (the BOS text is then "<s> " + " ")."""
    kind, tokenizer = family
    rng = random.Random(5)
    chats = [{"messages": random_conversation(rng, end_with_assistant=rng.random() < 0.5)} for _ in range(20)]
    bare = copy.deepcopy(tokenizer)
    bare.chat_template = None
    for ids, bare_ids, chat in zip(inference.prompt_ids(tokenizer, chats), inference.prompt_ids(bare, chats), chats,
                                   strict=True):
        messages = prompt_messages(chat["messages"])
        engine_ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
        assert ids == engine_ids and bare_ids == engine_ids
        system = messages[0]["content"] if messages[0]["role"] == "system" else "x"
        if not system[:1].isspace():
            assert tokenizer(format_conversation(messages, tokenizer.eos_token))["input_ids"] == engine_ids
    alpaca = make_examples(5)
    assert inference.prompt_ids(tokenizer, alpaca) == [tokenizer.apply_chat_template(
        inference.chat_messages(e), add_generation_prompt=True, return_dict=True)["input_ids"] for e in alpaca]


def test_a_later_turn_is_another_instruction_block():
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."},
                {"role": "assistant", "content": "Blue."}, {"role": "user", "content": "Another one."},
                {"role": INPUT_ROLE, "content": "Not blue."}]
    assert format_conversation(messages, "</s>") == (
        "Be brief.\n\n### Instruction:\nName a colour.\n\n### Response:Blue.</s>"
        "\n\n### Instruction:\nAnother one.\n\n### Input:\nNot blue.\n\n### Response:")
    assert prompt_messages(messages + [{"role": "assistant", "content": "Red."}]) == messages
    assert [t["output"] for t in turns(messages)] == ["Blue.", None]


@pytest.mark.parametrize("messages, message", [
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "not several user turns"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "system", "content": "c"}],
     "system message may only come first"),
    ([{"role": "assistant", "content": "a"}], "in this order"),
])
def test_the_template_still_refuses_what_is_no_conversation(family, messages, message):
    _, tokenizer = family
    with pytest.raises(TemplateError, match=message):
        tokenizer.apply_chat_template(messages, tokenize=False)


# ----------------------------------------------------------------------------- train.py on conversations

def conversation_records(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"messages": random_conversation(rng), "id": i} for i in range(n)]


def test_labels_are_the_template_mask_token_for_token(family):
    _, tokenizer = family
    chats = conversation_records(12, seed=1)
    alpaca = make_examples(6, seed=2)
    mixed = [record for pair in zip(chats[:6], alpaca, strict=True) for record in pair] + chats[6:]
    dataset = SupervisedDataset(mixed, tokenizer)
    assert len(dataset) == len(mixed)
    alone = SupervisedDataset(alpaca, tokenizer)
    for index, record in enumerate(mixed):
        if "messages" not in record:  # Alpaca records come out as train.py made them before conversations
            assert torch.equal(dataset.labels[index], alone.labels[index // 2])
            assert torch.equal(dataset.input_ids[index], alone.input_ids[index // 2])
            continue
        out = tokenizer.apply_chat_template(record["messages"], tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=True)
        mask = torch.tensor(out["assistant_masks"], dtype=torch.bool)
        assert torch.equal(dataset.input_ids[index], torch.tensor(out["input_ids"]))  # ends with the last eos
        assert torch.equal(dataset.labels[index], torch.where(mask, torch.tensor(out["input_ids"]), IGNORE_INDEX))
        labelled = dataset.labels[index][dataset.labels[index] != IGNORE_INDEX]
        replies = sum(m["role"] == "assistant" for m in record["messages"])
        assert (labelled == tokenizer.eos_token_id).sum() == replies  # each turn's eos, and no other


def test_a_single_turn_conversation_trains_as_its_alpaca_record(family):
    _, tokenizer = family
    records = [{"instruction": e["instruction"], "input": e["input"], "output": e["output"]} for e in DEMO[:30]]
    chats = [{"messages": [{"role": "user", "content": r["instruction"]}]
              + ([{"role": INPUT_ROLE, "content": r["input"]}] if r["input"] else [])
              + [{"role": "assistant", "content": r["output"]}]} for r in records]
    as_alpaca, as_chat = SupervisedDataset(records, tokenizer), SupervisedDataset(chats, tokenizer)
    for i in range(len(records)):
        assert torch.equal(as_alpaca.input_ids[i], as_chat.input_ids[i])
        assert torch.equal(as_alpaca.labels[i], as_chat.labels[i]), records[i]


def test_truncation_keeps_whole_tokens_up_to_the_last_label(family):
    _, tokenizer = family
    messages = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."},
                {"role": "user", "content": "Write a short poem about the sea. " * 30},
                {"role": "assistant", "content": "Waves."}]
    full = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    first_eos = full["input_ids"].index(tokenizer.eos_token_id)
    saved = tokenizer.model_max_length
    tokenizer.model_max_length = first_eos + 20  # inside the second user turn
    try:
        dataset = SupervisedDataset([{"messages": messages}], tokenizer)
    finally:
        tokenizer.model_max_length = saved
    assert dataset.input_ids[0].tolist() == full["input_ids"][:first_eos + 1]
    assert dataset.labels[0][-1] == tokenizer.eos_token_id


@pytest.mark.parametrize("messages, message", [
    ("hello", "must be a non-empty list"),
    ([], "must be a non-empty list"),
    ([{"role": "user", "content": "a"}], "must end with an assistant turn, not with a user message"),
    ([{"role": "assistant", "content": "a"}], "message 0: a assistant message cannot come here"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "message 1: a user message cannot come"),
    ([{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}], "message 1: unknown role 'bot'"),
    ([{"role": "user", "content": " "}, {"role": "assistant", "content": "b"}], "holds no instruction"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": 3}], "must be a string, got int"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "system", "content": "c"}],
     "message 2: a system message cannot come here"),
    ([{"role": "user", "content": [{"type": "text", "text": "a"}] * 3}, {"role": "assistant", "content": "b"}],
     "one or two text parts"),
    (["user"], "message 0: expected an object"),
])
def test_malformed_conversations_are_named_in_one_sentence(tmp_path, messages, message):
    path = tmp_path / "data.jsonl"
    good = {"messages": [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello."}]}
    path.write_text("".join(json.dumps(r) + "\n" for r in [good, {"instruction": "x", "output": "y"},
                                                           {"messages": messages}]))
    with pytest.raises(DataError, match=message) as error:
        files.load_alpaca_records(path, conversations=True)
    assert str(error.value).startswith(f"{path}, record 2") and str(error.value).count(". ") <= 1
    with pytest.raises(DataError, match="record 0: field 'instruction' is missing"):  # opt-in only
        files.load_alpaca_records(path)


def test_a_conversation_to_answer_may_end_with_a_user_or_an_assistant_turn():
    check_messages([{"role": "user", "content": "a"}], "x", last=None)
    check_messages([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "x", last=None)
    with pytest.raises(DataError, match="no user turn"):
        check_messages([{"role": "system", "content": "a"}], "x", last=None)


@pytest.mark.slow
def test_train_py_trains_on_a_mixed_file_padded_padding_free_and_length_grouped(tiny_model_dir, tmp_path):
    data = tmp_path / "mixed.jsonl"
    records = conversation_records(16, seed=4) + make_examples(8, seed=4)
    random.Random(0).shuffle(records)
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    common = ("--max_steps", "3", "--learning_rate", "1e-3", "--model_max_length", "256")
    padded = run_train(tiny_model_dir, data, tmp_path / "padded", *common)
    flat = run_train(tiny_model_dir, data, tmp_path / "flat", *common, "--padding_free", "True")
    grouped = run_train(tiny_model_dir, data, tmp_path / "grouped", *common, "--train_sampling_strategy",
                        "group_by_length")
    losses = [[e["loss"] for e in s["log_history"] if "loss" in e] for s in (padded, flat, grouped)]
    assert len(losses[0]) == 3 and max(abs(a - b) for a, b in zip(losses[0], losses[1], strict=True)) < 1e-4
    assert all(loss > 0 for loss in losses[2])


def test_padding_free_batches_of_conversations_mask_each_first_token(model_and_tokenizer_conv, tmp_path):
    _, tokenizer = model_and_tokenizer_conv
    data_args = DataArguments(data_path=write_json(tmp_path / "d.json", conversation_records(6, seed=9)))
    module = make_supervised_data_module(tokenizer, data_args, padding_free=True)
    instances = [module["train_dataset"][i] for i in range(6)]
    flat = module["data_collator"](instances)
    starts = (flat["position_ids"][0] == 0).nonzero().flatten()
    assert len(starts) == 6 and (flat["labels"][0, starts] == IGNORE_INDEX).all()
    assert int((flat["labels"] != IGNORE_INDEX).sum()) == sum(int((i["labels"] != IGNORE_INDEX).sum())
                                                              for i in instances)


@pytest.fixture(scope="module")
def model_and_tokenizer_conv(tiny_model_dir):
    from alpaca.train.sft import ModelArguments, TrainingArguments, load_model_and_tokenizer

    return load_model_and_tokenizer(ModelArguments(model_name_or_path=str(tiny_model_dir)),
                                    TrainingArguments(output_dir="unused", model_max_length=256, use_cpu=True))


# ----------------------------------------------------------------------------- inference.py and serving

TWO_TURNS = [{"messages": [{"role": "user", "content": "Give three tips for staying healthy."},
                           {"role": "assistant", "content": "Eat well, sleep, move."},
                           {"role": "user", "content": "Translate the sentence into French."},
                           {"role": INPUT_ROLE, "content": "The weather is nice today."}]},
             {"messages": [{"role": "system", "content": "You are terse."},
                           {"role": "user", "content": "Name a colour."},
                           {"role": "assistant", "content": "Blue."},
                           {"role": "user", "content": "Another one."},
                           {"role": "assistant", "content": "Red."}]}]  # a reference answer: the last user turn
NEW_TOKENS = 12


def test_local_inference_answers_the_last_user_turn(tiny_model_dir, tmp_path):
    model, tokenizer = inference.load_model(str(tiny_model_dir), device="cpu")
    answers = inference.generate_responses(model, tokenizer, TWO_TURNS, max_new_tokens=NEW_TOKENS)
    prompts = [prompt_messages(r["messages"]) for r in TWO_TURNS]
    by_hand = []
    for messages in prompts:
        ids = tokenizer.apply_chat_template(messages, chat_template=alpaca_chat_template("bos_space"),
                                            add_generation_prompt=True, return_tensors="pt", return_dict=True)
        output = model.generate(**ids, max_new_tokens=NEW_TOKENS, do_sample=False)
        new = output[0, ids["input_ids"].shape[1]:].tolist()
        new = new[:new.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in new else new
        by_hand.append(tokenizer.decode(new, skip_special_tokens=True).strip())
    assert answers == by_hand


def test_conversations_through_completions_are_refused_in_one_sentence(tmp_path):
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in TWO_TURNS))
    with pytest.raises(UsageError, match="use --api_type chat"):
        inference.main(["--api_base", "http://127.0.0.1:9/v1", "--model_name", "m", "--api_type", "completions",
                        "--data_path", str(data), "--output_path", str(tmp_path / "out.json")])


@pytest.mark.slow
def test_a_served_two_turn_conversation_gets_inference_py_s_greedy_answer(served, tmp_path):  # noqa: F811
    api_base, model_dir = served
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in TWO_TURNS))
    common = ["--data_path", str(data), "--max_new_tokens", str(NEW_TOKENS)]
    local = run_script(["inference.py", "--model_name_or_path", str(model_dir), "--output_path",
                        str(tmp_path / "l.json"), *common])
    assert local.returncode == 0, local.stderr
    remote = run_script(["inference.py", "--api_base", api_base, "--model_name", str(model_dir), "--api_type", "chat",
                   "--output_path", str(tmp_path / "s.json"), *common])
    assert remote.returncode == 0, remote.stderr
    written = json.loads((tmp_path / "l.json").read_text())
    assert json.loads((tmp_path / "s.json").read_text()) == written and all(r["output"] for r in written)
    assert [r["messages"] for r in written] == [r["messages"] for r in TWO_TURNS]
    for record in written:  # the raw request, as any OpenAI client sends it
        chat = post_json(f"{api_base}/chat/completions", {"model": str(model_dir), "messages": prompt_messages(
            record["messages"]), "max_tokens": NEW_TOKENS, "temperature": 0})
        assert chat["choices"][0]["message"]["content"].strip() == record["output"]
    print("served two-turn exchange:", json.dumps({"messages": prompt_messages(written[0]["messages"]),
                                                   "answer": written[0]["output"]}, ensure_ascii=False))


# ----------------------------------------------------------------------------- data_tools.py

def test_data_tools_stats_counts_turns_and_convert_goes_both_ways(tmp_path, capsys):
    from alpaca.data import tools as data_tools

    alpaca = [{"instruction": "Name a colour.", "input": "", "output": "Blue."},
              {"instruction": "Translate the sentence.", "input": "Bonjour.", "output": "Hello."}]
    chats = [{"messages": [{"role": "user", "content": "Give three tips."}, {"role": "assistant", "content": "A b c."},
                           {"role": "user", "content": "Shorter please."}, {"role": "assistant", "content": "A."}]},
             {"messages": [{"role": "user", "content": "Say hi."}, {"role": INPUT_ROLE, "content": "To Ann."},
                           {"role": "assistant", "content": "Hi Ann."}]}]
    mixed = write_json(tmp_path / "mixed.json", alpaca + chats)
    result = data_tools.stats(mixed, output_dir=str(tmp_path / "stats"), num_cpus=1, spacy_model="none",
                              language_mix=False)["mixed"]
    assert result["turns"] == {"records": 4, "conversations": 2, "user_turns": 5,
                               "records_by_turns": {"1": 3, "2": 1},
                               "mean_words_by_turn": {"1": {"instruction": 2.75, "output": 1.75},
                                                      "2": {"instruction": 2.0, "output": 1.0}}}
    assert result["records"] == 5 and result["with_input"] == 2  # one line per user turn
    assert "2 conversations), 5 user turns" in capsys.readouterr().out

    data_tools.convert(mixed, to="messages", output=str(tmp_path / "chat.jsonl"))
    written = [json.loads(line) for line in (tmp_path / "chat.jsonl").read_text().splitlines()]
    assert written[2:] == chats and [m["role"] for m in written[1]["messages"]] == ["user", "assistant"]
    one_turn = write_json(tmp_path / "one.json", written[:2] + [chats[1]])
    data_tools.convert(one_turn, to="release", output=str(tmp_path / "back.json"))
    assert json.loads((tmp_path / "back.json").read_text()) == alpaca + [
        {"instruction": "Say hi.", "input": "To Ann.", "output": "Hi Ann."}]
    with pytest.raises(DataError, match=r"mixed.json, record 2: .* this conversation has 2 user turns: keep it"):
        data_tools.convert(mixed, to="release", output=str(tmp_path / "no.json"))
