"""Conversations by self-chat (`generate_instruction.py ... --num_turns N`).

Self-Instruct writes the first turn as always (the novelty filter runs on its instruction). Each kept task then
grows into a conversation of N turns: the teacher reads the conversation so far and writes the user's next message
(FOLLOW_UP_PROMPT), then answers it as the assistant (the conversation as chat messages, or as a transcript on the
completions endpoint), as in UltraChat and Baize. Every request goes through the same endpoint and response cache as
the first turn's, tagged with its place in the run, so a resumed run replays them and writes the same bytes.
A follow-up or answer that comes back empty ends the conversation there (it keeps its earlier turns).
"""

import asyncio
import dataclasses

from alpaca.llm.client import LLMEndpoint, OpenAIDecodingArguments

FOLLOW_UP_PROMPT = (
    "Below is a conversation between a user and an AI assistant.\n\n{transcript}\n\n"
    "Write the user's next message: a natural follow-up that builds on the conversation (a request for more "
    "detail, a clarification, a change to the answer, or a related task). Write only the message itself, without "
    "a label such as \"User:\".")
SPEAKERS = {"user": "User", "assistant": "Assistant"}
TRANSCRIPT_STOP = ["\nUser:"]  # on the completions endpoint the answer ends where the teacher starts the next turn


def first_turn(task: dict) -> list[dict]:
    """The messages of a Self-Instruct task: the instruction (and input, as a second text part, the mapping of
    `data_tools.py convert --to messages`) as the user turn, the output as the assistant turn."""
    if task["input"] and task["input"] != "<noinput>":
        user = [{"type": "text", "text": task["instruction"]}, {"type": "text", "text": task["input"]}]
    else:
        user = task["instruction"]
    return [{"role": "user", "content": user}, {"role": "assistant", "content": task["output"]}]


def first_instruction(entry: dict) -> str:
    """The instruction the novelty filter compares: a task's, or a conversation's first user turn's."""
    if "messages" not in entry:
        return entry["instruction"]
    content = entry["messages"][0]["content"]
    return content if isinstance(content, str) else content[0]["text"]


def _text(message: dict) -> str:
    content = message["content"]
    return content if isinstance(content, str) else "\n\n".join(part["text"] for part in content)


def transcript(messages: list[dict]) -> str:
    """The conversation as "User: ...\\n\\nAssistant: ..." text."""
    return "\n\n".join(f"{SPEAKERS[m['role']]}: {_text(m)}" for m in messages)


def _clean(text: str) -> str:
    text = text.strip()
    return text[len("User:"):].strip() if text.startswith("User:") else text


async def _ask(endpoint: LLMEndpoint, api_type: str, decoding: OpenAIDecodingArguments, tag: str, prompt: str,
               messages: list[dict] | None, usage: dict) -> str:
    """One reply of the teacher (chat: `messages`, else `prompt` as text), its tokens added to `usage`."""
    if api_type == "chat":
        result = await endpoint.complete([prompt], decoding, tag, messages=messages)
    else:
        result = await endpoint.complete([prompt], decoding, tag)
    for key, value in result["usage"].items():
        usage[key] = usage.get(key, 0) + (0 if result["cached"] else value)
    return result["choices"][0]["text"] if result["choices"] else ""


async def self_chat(endpoint: LLMEndpoint, task: dict, num_turns: int, decoding: OpenAIDecodingArguments,
                    api_type: str, tag: str, usage: dict) -> list[dict]:
    """The conversation grown from `task` to `num_turns` user turns (fewer when the teacher returns nothing)."""
    messages = first_turn(task)
    follow_decoding = dataclasses.replace(decoding, stop=None, n=1)
    answer_decoding = dataclasses.replace(decoding, n=1, stop=None if api_type == "chat" else TRANSCRIPT_STOP)
    for turn in range(2, num_turns + 1):
        question = FOLLOW_UP_PROMPT.format(transcript=transcript(messages))
        follow_up = _clean(await _ask(endpoint, api_type, follow_decoding, f"{tag} turn {turn} user", question,
                                      [{"role": "user", "content": question}], usage))
        if not follow_up:
            break
        asked = messages + [{"role": "user", "content": follow_up}]
        chat = [{"role": m["role"], "content": _text(m)} for m in asked]
        answer = (await _ask(endpoint, api_type, answer_decoding, f"{tag} turn {turn} assistant",
                             transcript(asked) + "\n\nAssistant:", chat, usage)).strip()
        if not answer:
            break
        messages = asked + [{"role": "assistant", "content": answer}]
    return messages


async def grow_conversations(endpoint: LLMEndpoint, kept: list[dict], num_turns: int,
                             decoding: OpenAIDecodingArguments, api_type: str,
                             request_index: int) -> tuple[list[dict], dict]:
    """The kept tasks of one request as conversation entries ({"messages", "most_similar_instructions",
    "avg_similarity_score"}), grown concurrently, in the tasks' order; and the tokens their requests used."""
    usage: dict = {}
    grown = await asyncio.gather(*(self_chat(endpoint, task, num_turns, decoding, api_type,
                                             f"request {request_index} task {j}", usage)
                                   for j, task in enumerate(kept)))
    entries = [{"messages": messages, "most_similar_instructions": task["most_similar_instructions"],
                "avg_similarity_score": task["avg_similarity_score"]}
               for task, messages in zip(kept, grown, strict=True)]
    return entries, usage
