"""Conversations: the `messages` record and its Alpaca rendering (no torch or transformers import).

A conversation record is `{"messages": [...]}`: an optional first `system` message, then `user` and `assistant`
turns alternating, as OpenAI's chat API and Hugging Face's chat templates spell them. A user turn's input (Alpaca's
second field) is a message with role "input" right after it, or the second text part of its content. Training
records end with an assistant turn; a record to answer ends with a user turn (a trailing assistant turn is a
reference answer, left aside).

`format_conversation` is the Python twin of the chat template in `alpaca.py` (the tests hold the two equal, byte
for byte and in token ids): local inference and the Self-Instruct generator render with it, engines with the
template. docs/conversations.md shows the format.
"""

from alpaca.errors import DataError
from alpaca.prompts.alpaca import _HEADERS, INPUT_ROLE, PREAMBLES, format_prompt

ROLES = ("system", "user", INPUT_ROLE, "assistant")


def is_conversation(record: object) -> bool:
    """Whether `record` is a conversation record (it has `messages`) rather than an Alpaca one."""
    return isinstance(record, dict) and "messages" in record


def message_texts(message: dict) -> list[str]:
    """The text of a message: [content] for a string, the texts of its parts for a list of text parts."""
    content = message.get("content")
    if isinstance(content, str):
        return [content]
    return [part["text"] for part in content]


def check_messages(messages: object, where: str, last: str | None = "assistant", why_last: str | None = None) -> None:
    """Check one record's `messages`; DataError (one sentence naming `where`) when the Alpaca chat template could
    not render them. `last` is the role the conversation must end with ("assistant" for training, "user" for a
    prompt), or None for either; `why_last`, when given, says why and what to do, in place of the plain sentence."""
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: field 'messages' must be a non-empty list of {{role, content}} objects.")
    expected = ["system", "user"]
    for index, message in enumerate(messages):
        here = f"{where}, message {index}"
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise DataError(f"{here}: expected an object with 'role' and 'content'.")
        role, content = message["role"], message.get("content")
        if role not in ROLES:
            raise DataError(f"{here}: unknown role {role!r}; the roles are {', '.join(ROLES)}.")
        if role not in expected:
            raise DataError(f"{here}: a {role} message cannot come here; a conversation is an optional system "
                            f"message, then user and assistant turns alternating (expected {' or '.join(expected)}).")
        parts_allowed = role == "user"
        if isinstance(content, list) and parts_allowed:
            if not 1 <= len(content) <= 2 or not all(isinstance(p, dict) and p.get("type") == "text"
                                                     and isinstance(p.get("text"), str) for p in content):
                raise DataError(f"{here}: a user message's content is a string or one or two text parts "
                                "(instruction, input).")
        elif not isinstance(content, str):
            raise DataError(f"{here}: the content of a {role} message must be a string, got "
                            f"{type(content).__name__}.")
        if role == "user" and not message_texts(message)[0].strip():
            raise DataError(f"{here}: the user message holds no instruction.")
        if role == INPUT_ROLE and len(message_texts(messages[index - 1])) > 1:
            raise DataError(f"{here}: the input is given twice (a second text part and a message with role "
                            f"{INPUT_ROLE!r}).")
        expected = {"system": ["user"], "user": [INPUT_ROLE, "assistant"], INPUT_ROLE: ["assistant"],
                    "assistant": ["user"]}[role]
    ending = "assistant" if messages[-1]["role"] == "assistant" else "user"
    if last is not None and ending != last and why_last is not None:
        raise DataError(f"{where}: the messages end with {'an assistant' if ending == 'assistant' else 'a user'} turn; "
                        f"{why_last}")
    if last is not None and ending != last:
        raise DataError(f"{where}: the conversation must end with {'an assistant' if last == 'assistant' else 'a user'}"
                        f" turn, not with {'an' if messages[-1]['role'] in ('assistant', 'input') else 'a'} "
                        f"{messages[-1]['role']} message.")
    if messages[-1]["role"] == "system":
        raise DataError(f"{where}: the conversation has no user turn.")


def turns(messages: list[dict]) -> list[dict]:
    """The conversation as Alpaca-like turns: [{"instruction", "input", "output" (None when unanswered)}]."""
    result = []
    for message in messages:
        texts = message_texts(message)
        if message["role"] == "user":
            result.append({"instruction": texts[0], "input": texts[1] if len(texts) > 1 else "", "output": None})
        elif message["role"] == INPUT_ROLE:
            result[-1]["input"] = "".join(texts)
        elif message["role"] == "assistant":
            result[-1]["output"] = "".join(texts)
    return result


def system_message(messages: list[dict]) -> str | None:
    """The system message's text, or None when the conversation has none."""
    return "".join(message_texts(messages[0])) if messages and messages[0]["role"] == "system" else None


def prompt_messages(messages: list[dict]) -> list[dict]:
    """The messages up to the last user turn (and its input): what a model is asked to answer."""
    end = len(messages)
    while messages[end - 1]["role"] == "assistant":
        end -= 1
    return messages[:end]


def format_conversation(messages: list[dict], eos_token: str, add_generation_prompt: bool = True) -> str:
    """The conversation as the Alpaca chat template renders it (without the BOS text engines need): the first turn's
    Alpaca prompt (a system message replaces the preamble), each answer + eos, each later turn as another
    instruction (input) block, and "### Response:" after an unanswered last turn when `add_generation_prompt`.
    One user turn gives exactly `format_prompt`'s text."""
    system = system_message(messages)
    pieces = []
    for number, turn in enumerate(turns(messages)):
        if number == 0:
            prompt = format_prompt(turn["instruction"], turn["input"])
            if system is not None:
                preamble = PREAMBLES["prompt_input" if turn["input"] else "prompt_no_input"]
                prompt = system + prompt[len(preamble):]
            pieces.append(prompt[:-len(_HEADERS["response"])])
        else:
            pieces.append(_HEADERS["instruction"] + turn["instruction"]
                          + (_HEADERS["input"] + turn["input"] if turn["input"] else ""))
        if turn["output"] is not None:
            pieces.append(_HEADERS["response"] + turn["output"] + eos_token)
        elif add_generation_prompt:
            pieces.append(_HEADERS["response"])
    return "".join(pieces)


def from_alpaca(record: dict) -> list[dict]:
    """The messages of an Alpaca record: the instruction as the user message (the input as a message with role
    "input"), the output, when there is one, as the assistant message."""
    messages = [{"role": "user", "content": record["instruction"]}]
    if record.get("input"):
        messages.append({"role": INPUT_ROLE, "content": record["input"]})
    if record.get("output") is not None:
        messages.append({"role": "assistant", "content": record["output"]})
    return messages
