"""data_tools.py clean and contamination on conversations: every user turn goes through the filters (the first that
fails drops the whole conversation, named by its turn), the near-duplicate checks compare first instructions, as
the generator's novelty filter does, and contamination lists every user turn near an evaluation instruction."""

import json
import pathlib

from rouge_score import rouge_scorer

from alpaca.data import tools as data_tools

SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(a: str, b: str) -> float:
    return SCORER.score(a, b)["rougeL"].fmeasure


def write_jsonl(path: pathlib.Path, records) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return str(path)


def read_jsonl(path) -> list:
    return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines() if line.strip()]


def chat(*turns: tuple) -> dict:
    """A conversation record of (instruction, answer) or (instruction, input, answer) turns; an input goes in a
    message with role "input"."""
    messages = []
    for turn in turns:
        messages.append({"role": "user", "content": turn[0]})
        if len(turn) == 3:
            messages.append({"role": "input", "content": turn[1]})
        messages.append({"role": "assistant", "content": turn[-1]})
    return {"messages": messages}


FIRST = ("Give three tips for staying healthy every day.", "Eat, sleep, move.")
FOLLOW_UP = ("Explain the second tip in more detail please.", "Sleep eight hours.")
ALPACA = {"instruction": "Translate the sentence into French for me.", "input": "Good morning.", "output": "Bonjour."}


def test_clean_filters_every_user_turn_and_drops_the_conversation_at_the_first_that_fails(tmp_path, capsys):
    records = [
        chat(FIRST, FOLLOW_UP),                                                     # kept
        ALPACA,                                                                     # kept, as before
        chat(("Name the largest planet in our solar system.", "Jupiter."), ("Why?", "It is big.")),
        chat(("Suggest a good name for a small bakery.", "Crumbs."),
             ("Now suggest a slogan for that bakery too.", "N/A"),
             ("Write a program that prints the slogan.", "print()")),  # turn 2 fails first, for its output
        chat(("Summarize the main point of the article.", "It is about rain."),
             ("Summarize this other web page the same way.", "https://example.com/page", "Sun.")),
        chat(("Write a program that sorts a list of numbers.", "sorted(x)"), ("Why?", "It is short.")),
    ]
    path = write_jsonl(tmp_path / "chats.jsonl", records)
    output = str(tmp_path / "clean.jsonl")
    result = data_tools.clean(path, output=output, num_cpus=1)
    assert read_jsonl(output) == records[:2]
    dropped = read_jsonl(output + ".dropped.jsonl")
    assert [(d["record_index"], d["drop_reason"], d["drop_turn"]) for d in dropped] == [
        (2, "length", 2), (3, "empty_output", 2), (4, "url_input", 2), (5, "write_a_program", 1)]
    assert dropped[0]["messages"] == records[2]["messages"]  # the whole conversation, as it was
    assert result["dropped"] == {"length": 1, "empty_output": 1, "url_input": 1, "write_a_program": 1}
    assert result["dropped_conversations_by_turn"] == {"empty_output": {"2": 1}, "length": {"2": 1},
                                                       "url_input": {"2": 1}, "write_a_program": {"1": 1}}
    printed = capsys.readouterr().out
    assert "Conversations dropped, by the user turn that failed: length at turn 2: 1; " in printed
    assert "write_a_program at turn 1: 1." in printed


def test_clean_compares_first_instructions_only_for_duplicates_and_near_duplicates(tmp_path):
    """As the generator's novelty filter: the same follow-up in two conversations is no duplicate; a first
    instruction equal or near an earlier kept one (of an Alpaca record or a conversation) is."""
    other = ("Describe the water cycle to a ten year old child.", "Rain falls, then rises.")
    near = ("Give three tips for staying healthy every week.", "Walk.")
    assert rouge_l(FIRST[0], near[0]) > 0.7 and rouge_l(FIRST[0], other[0]) <= 0.7
    records = [chat(FIRST, FOLLOW_UP), chat(other, FOLLOW_UP), chat(near, FOLLOW_UP),
               chat((ALPACA["instruction"], ALPACA["input"], "Salut."), FOLLOW_UP), ALPACA,
               chat(other, ("Tell me a different story about a cat.", "Miaow.")),
               {"instruction": near[0], "input": "", "output": "Run."}]
    path = write_jsonl(tmp_path / "chats.jsonl", records)
    output = str(tmp_path / "clean.jsonl")
    result = data_tools.clean(path, output=output, num_cpus=1)
    assert read_jsonl(output) == records[:2] + records[3:4]
    dropped = read_jsonl(output + ".dropped.jsonl")
    assert [(d["record_index"], d["drop_reason"], d.get("drop_turn")) for d in dropped] == [
        (2, "similarity", 1), (4, "duplicate", None), (5, "duplicate", 1), (6, "similarity", None)]
    assert dropped[0]["similar_to"] == FIRST[0] and dropped[0]["rouge_l"] == rouge_l(FIRST[0], near[0])
    assert result["dropped_conversations_by_turn"] == {"duplicate": {"1": 1}, "similarity": {"1": 1}}


def test_clean_exclude_drops_a_conversation_contaminated_at_a_later_turn(tmp_path):
    evaluation = write_jsonl(tmp_path / "eval.jsonl", [{"instruction": "Explain the second tip in more detail."}])
    path = write_jsonl(tmp_path / "chats.jsonl", [chat(FIRST, FOLLOW_UP)])
    result = data_tools.clean(path, output=str(tmp_path / "out.jsonl"), exclude=evaluation, num_cpus=1)
    assert result["dropped"] == {"contamination": 1} and result["kept"] == 0
    (dropped,) = read_jsonl(tmp_path / "out.jsonl.dropped.jsonl")
    assert dropped["drop_turn"] == 2 and dropped["similar_to"] == "Explain the second tip in more detail."
    assert dropped["rouge_l"] == rouge_l("Explain the second tip in more detail.", FOLLOW_UP[0])


def test_clean_repairs_every_message_and_cleaning_a_cleaned_file_drops_nothing(tmp_path):
    record = chat(FIRST, ("Translate the first tip into French.", "<noinput>", "Mange\x07\r\n\tbien."))
    record["messages"].insert(0, {"role": "system", "content": "Be\x1b terse."})
    parts = chat(("Summarize the paragraph in one short sentence.", "Ok."))
    parts["messages"][0]["content"] = [{"type": "text", "text": "Summarize the paragraph in one short sentence."},
                                       {"type": "text", "text": " <NOINPUT> "}]
    path = write_jsonl(tmp_path / "chats.jsonl", [record, parts])
    once, twice = str(tmp_path / "once.jsonl"), str(tmp_path / "twice.jsonl")
    result = data_tools.clean(path, output=once, num_cpus=1)
    assert result["kept"] == 2 and result["fixed"] == {"control_characters": 1, "noinput_marker": 2}
    kept = read_jsonl(once)
    assert kept[0]["messages"][0]["content"] == "Be terse."
    assert kept[0]["messages"][4:] == [{"role": "input", "content": ""},
                                       {"role": "assistant", "content": "Mange\n\tbien."}]
    assert kept[1]["messages"][0]["content"][1] == {"type": "text", "text": ""}
    again = data_tools.clean(once, output=twice, num_cpus=1)
    assert again == {"kept": 2, "dropped": {}, "fixed": {}, "dropped_conversations_by_turn": {}}
    assert read_jsonl(twice) == kept


def test_contamination_names_the_record_and_the_turn_of_every_user_turn_near_an_evaluation_instruction(
        tmp_path, capsys):
    evaluation = write_jsonl(tmp_path / "eval.jsonl", [{"instruction": "Explain the second tip in more detail."},
                                                       {"instruction": "Give three tips for staying healthy."}])
    records = [ALPACA, chat(FIRST, FOLLOW_UP), chat(("Name the largest planet in our solar system.", "Jupiter."),
                                                    FOLLOW_UP)]
    path = write_jsonl(tmp_path / "chats.jsonl", records)
    found = data_tools.contamination(path, eval=evaluation, output=str(tmp_path / "found.jsonl"), num_cpus=1)
    tip, detail = "Give three tips for staying healthy.", "Explain the second tip in more detail."
    assert found == [
        {"record_index": 1, "turn": 1, "instruction": FIRST[0], "eval_instruction": tip,
         "rouge_l": rouge_l(tip, FIRST[0])},
        {"record_index": 1, "turn": 2, "instruction": FOLLOW_UP[0], "eval_instruction": detail,
         "rouge_l": rouge_l(detail, FOLLOW_UP[0])},
        {"record_index": 2, "turn": 2, "instruction": FOLLOW_UP[0], "eval_instruction": detail,
         "rouge_l": rouge_l(detail, FOLLOW_UP[0])}]
    assert read_jsonl(tmp_path / "found.jsonl") == found
    printed = capsys.readouterr().out
    assert f"record 2, turn 2 (ROUGE-L {rouge_l(detail, FOLLOW_UP[0]):.3f}): {FOLLOW_UP[0]!r}" in printed
    assert "3 of 5 training instructions (every user turn of the 2 conversations counts)" in printed
