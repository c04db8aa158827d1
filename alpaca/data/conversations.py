"""Conversations in the data tools: each user turn as an Alpaca-like record, and the turn counts of a data set."""

from collections import Counter

from alpaca.generate.language import count_units
from alpaca.prompts.conversation import is_conversation, turns


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
