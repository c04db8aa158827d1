"""The judge prompt: one instruction (and input) and two answers between `<answer_a>`...`</answer_a>` and
`<answer_b>`...`</answer_b>`; a reasoning judge ends its reply with `[[A]]`, `[[B]]` or `[[TIE]]` (swap mode), a
log-probability judge answers the single letter A or B. Other tools and held-out checks rely on this contract
(docs/evaluation.md shows the prompt).

A conversation (`judge.py preferences` on conversation samples) is shown in the same prompt: its earlier turns (the
system message, then each user message and its answer), then its last user turn as the instruction (and input), then
the two answers to that turn and the same ending. Every text of the conversation is neutralised as the answers are.
"""

import hashlib
import json
import re

from alpaca.prompts.conversation import system_message, turns

JUDGE_PROMPT = """\
You are comparing two answers to the same instruction. Decide which answer a careful, knowledgeable user would \
prefer: the one that follows the instruction, is correct, and is helpful, clear and complete. Judge the content, \
not the length of the answers and not the order in which they are shown.

{task}
<answer_a>
{answer_a}
</answer_a>

<answer_b>
{answer_b}
</answer_b>

{ending}"""
ENDINGS = {
    "swap": "Compare the two answers briefly, then end your reply with exactly one of [[A]] (answer A is better), "
            "[[B]] (answer B is better) or [[TIE]] (they are equally good).",
    "logprobs": "Which answer is better? Reply with the single letter A or B and nothing else.\nBetter answer:",
}
VERDICT_PATTERN = re.compile(r"\[\[\s*(A|B|TIE)\s*\]\]", re.IGNORECASE)
PREFERENCE_FOR_A = {"A": 1.0, "B": 0.0, "TIE": 0.5}  # by verdict
# A conversation's earlier turns, shown before its last user turn (the instruction): conversation_judge_prompt.
CONVERSATION_OPENING = ("The instruction is the user's last message in a conversation; the conversation so far comes "
                        "first.\n\n")
CONVERSATION_ROLES = {"system": "System:", "user": "User:", "assistant": "Assistant:"}


ANSWER_TAG = re.compile(r"<(/?)(answer_[ab])>", re.IGNORECASE)
VERDICT_LIKE = re.compile(r"\[\[(\s*(?:A|B|TIE)\s*)\]\]", re.IGNORECASE)


def neutralised(answer: str) -> str:
    """An answer as the judge is shown it: a text that spells the prompt's delimiters (`<answer_a>`,
    `</answer_b>`) or a verdict marker (`[[A]]`) cannot close its block, open another, or put a verdict in the
    judge's mouth; a space is put inside each such spelling, and nothing else changes."""
    answer = ANSWER_TAG.sub(lambda m: f"< {m.group(1)}{m.group(2)}>", answer)
    return VERDICT_LIKE.sub(lambda m: f"[ [{m.group(1)}] ]", answer)


def task_of(instruction: str, input: str) -> str:
    """The instruction (and input) as the prompt shows them."""
    return f"Instruction:\n{instruction}\n" + (f"\nInput:\n{input}\n" if input else "")


def judge_prompt(instruction: str, input: str, answer_a: str, answer_b: str, judge_mode: str) -> str:
    """The prompt that shows one instruction (and input) and two answers, A then B (each neutralised)."""
    return JUDGE_PROMPT.format(task=task_of(instruction, input), answer_a=neutralised(answer_a),
                               answer_b=neutralised(answer_b), ending=ENDINGS[judge_mode])


def conversation_judge_prompt(messages: list[dict], answer_a: str, answer_b: str, judge_mode: str) -> str:
    """The prompt that shows a conversation ending with a user turn (checked messages, docs/conversations.md) and two
    answers to that turn, A then B: CONVERSATION_OPENING and the earlier turns (CONVERSATION_ROLES' labels), then the
    last turn as judge_prompt shows an instruction (and input). Every text is neutralised, the conversation's as the
    answers'. A conversation of one user turn and no system message has no earlier turns to show: it is shown as
    judge_prompt shows its instruction (and input), without the opening, its texts neutralised."""
    *earlier, last = turns(messages)
    system = system_message(messages)
    shown = [] if system is None else [f"{CONVERSATION_ROLES['system']}\n{neutralised(system)}\n"]
    for turn in earlier:
        shown.append(f"{CONVERSATION_ROLES['user']}\n{neutralised(turn['instruction'])}\n"
                     + (f"\nInput:\n{neutralised(turn['input'])}\n" if turn["input"] else ""))
        shown.append(f"{CONVERSATION_ROLES['assistant']}\n{neutralised(turn['output'] or '')}\n")
    task = task_of(neutralised(last["instruction"]), neutralised(last["input"]))
    if shown:
        task = CONVERSATION_OPENING + "\n".join(shown) + "\n" + task
    return JUDGE_PROMPT.format(task=task, answer_a=neutralised(answer_a), answer_b=neutralised(answer_b),
                               ending=ENDINGS[judge_mode])


def parse_verdict(reply: str) -> str | None:
    """"A", "B" or "TIE" from a reasoning judge's reply; None when it has no verdict, or names more than one
    ("I cannot decide between [[A]] and [[B]]" is no verdict: it is asked again, then left unjudged)."""
    found = {verdict.upper() for verdict in VERDICT_PATTERN.findall(reply or "")}
    return found.pop() if len(found) == 1 else None


def template_sha256(judge_mode: str) -> str:
    """sha256 (hex) of the judge's prompt in one mode as `judge_prompt` lays it out, with placeholders for the
    texts, with an input and without: it changes when the template, the mode's ending or the task's layout changes,
    never with the answers. Results record it, so that numbers from different prompts are never put side by side."""
    shown = [judge_prompt("{instruction}", input, "{answer_a}", "{answer_b}", judge_mode) for input in ("{input}", "")]
    return hashlib.sha256(json.dumps(shown, ensure_ascii=False).encode("utf-8")).hexdigest()


def conversation_template_sha256(judge_mode: str) -> str:
    """sha256 (hex) of conversation_judge_prompt's layout in one mode, as template_sha256 is of judge_prompt's:
    placeholder texts, with a system message and inputs and without. Recorded beside template_sha256 when a run
    judged conversations (template_sha256 itself stays what it was for single-turn records)."""
    full = [{"role": "system", "content": "{system}"}, {"role": "user", "content": "{earlier_instruction}"},
            {"role": "input", "content": "{earlier_input}"}, {"role": "assistant", "content": "{earlier_answer}"},
            {"role": "user", "content": "{instruction}"}, {"role": "input", "content": "{input}"}]
    bare = [full[1], full[3], full[4]]
    shown = [conversation_judge_prompt(messages, "{answer_a}", "{answer_b}", judge_mode) for messages in (full, bare)]
    return hashlib.sha256(json.dumps(shown, ensure_ascii=False).encode("utf-8")).hexdigest()
