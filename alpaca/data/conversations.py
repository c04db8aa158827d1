"""Conversations in the data tools: each user turn as an Alpaca-like record, the turn counts of a data set, and
what `clean` reads (every user turn's task) and repairs (control characters, "<noinput>") in a conversation."""

from collections import Counter

from alpaca.data.records import CONTROL_CHARACTERS, NOINPUT_MARKER, task_of
from alpaca.generate.language import count_units
from alpaca.prompts.alpaca import INPUT_ROLE
from alpaca.prompts.conversation import is_conversation, message_texts, turns


def turn_records(records: list[dict], language: str = "en") -> tuple[list[dict], dict]:
    """(one {"instruction", "input", "output"} record per user turn, in order (an Alpaca record is one turn), the
    turn statistics: records, conversations, user turns, records by their number of turns, and the mean words
    (units of `language`) of the instruction and the output at each turn number)."""
    flat, per_record = [], Counter()
    words: dict[int, list[tuple[int, int]]] = {}
    for record in records:
        record_turns = turns(record["messages"]) if is_conversation(record) else [record]
        per_record[len(record_turns)] += 1
        for number, turn in enumerate(record_turns, start=1):
            output = turn.get("output") or ""
            flat.append({"instruction": turn["instruction"], "input": turn.get("input") or "", "output": output})
            words.setdefault(number, []).append((count_units(turn["instruction"], language),
                                                 count_units(output, language)))
    stats = {"records": len(records), "conversations": sum(map(is_conversation, records)), "user_turns": len(flat),
             "records_by_turns": {str(n): per_record[n] for n in sorted(per_record)},
             "mean_words_by_turn": {str(n): {"instruction": round(sum(i for i, _ in pairs) / len(pairs), 2),
                                             "output": round(sum(o for _, o in pairs) / len(pairs), 2)}
                                    for n, pairs in sorted(words.items())}}
    return flat, stats


def user_turn_tasks(record: dict) -> list[dict]:
    """The {"instruction", "input", "output"} of each user turn, in order, as the generator's filters see them
    (task_of: a "<noinput>" input is ""); an Alpaca record is one turn."""
    if not is_conversation(record):
        return [task_of(record)]
    return [task_of({**turn, "output": turn["output"] or ""}) for turn in turns(record["messages"])]


def normalised_messages(messages: list[dict]) -> list[dict]:
    """The messages with control characters (except tab and newline) removed from every text and a "<noinput>"
    input (a message with role "input", or a user message's second text part) written as "", as `clean` writes an
    Alpaca record's fields. Other keys are kept."""
    fixed = []
    for message in messages:
        content = message["content"]
        if isinstance(content, str):
            content = CONTROL_CHARACTERS.sub("", content)
            if message["role"] == INPUT_ROLE and _is_noinput(content):
                content = ""
        else:
            content = [{**part, "text": CONTROL_CHARACTERS.sub("", part["text"])} for part in content]
            if len(content) == 2 and _is_noinput(content[1]["text"]):
                content[1] = {**content[1], "text": ""}
        fixed.append({**message, "content": content})
    return fixed


def repairs(messages: list[dict]) -> Counter:
    """What `normalised_messages` changes in a conversation: control_characters and noinput_marker, 1 or 0 each."""
    texts = [text for message in messages for text in message_texts(message)]
    inputs = [turn["input"] for turn in turns(messages)]
    return Counter(control_characters=int(any(CONTROL_CHARACTERS.search(text) for text in texts)),
                   noinput_marker=int(any(_is_noinput(text) for text in inputs)))


def _is_noinput(text: str) -> bool:
    return text.strip().lower() == NOINPUT_MARKER
