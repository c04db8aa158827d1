"""generate_instruction.py --num_turns N (issue 23): self-chat conversations against the loopback OpenAI server, the
novelty filter on the first turn, resumable after SIGKILL byte for byte; --num_turns 1 is the original generator."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from test_generate_instruction import KEY, generate, seeds  # noqa: F401  (seeds: a fixture)

from alpaca import files
from alpaca.generate import journal as run_journal
from alpaca.generate.conversations import FOLLOW_UP_PROMPT, first_instruction
from alpaca.prompts.conversation import check_messages
from alpaca.testing import openai_server as toys
from alpaca.testing.openai_server import self_chat_teacher as teacher
from conftest import REPO

FOLLOW_UP_START = FOLLOW_UP_PROMPT.split("\n")[0]


def test_the_toy_teacher_knows_the_follow_up_prompt():
    assert FOLLOW_UP_START == toys.FOLLOW_UP_START


def test_num_turns_1_is_the_original_generator(openai_server, seeds, tmp_path):  # noqa: F811
    generate(openai_server, tmp_path / "plain", seeds, num_instructions_to_generate=10)
    generate(openai_server, tmp_path / "one", seeds, num_instructions_to_generate=10, num_turns=1)
    assert (tmp_path / "one" / "regen.json").read_bytes() == (tmp_path / "plain" / "regen.json").read_bytes()


@pytest.mark.parametrize("api_type", ["chat", "completions"])
def test_num_turns_3_writes_conversations_grown_by_self_chat(openai_server, seeds, tmp_path, api_type):  # noqa: F811
    openai_server.responder = teacher
    out = tmp_path / "conv"
    kept = generate(openai_server, out, seeds, num_instructions_to_generate=5, num_turns=3, api_type=api_type,
                    request_batch_size=1)
    assert json.loads((out / "regen.json").read_text()) == kept and len(kept) >= 5
    for entry in kept:
        assert set(entry) == {"messages", "most_similar_instructions", "avg_similarity_score"}
        check_messages(entry["messages"], "regen.json")
        assert [m["role"] for m in entry["messages"]] == ["user", "assistant"] * 3
        assert entry["messages"][2]["content"].startswith("And what about the")  # the "User:" label is cut
        assert entry["messages"][3]["content"] == entry["messages"][3]["content"].strip()
    assert files.load_alpaca_records(out / "regen.json", conversations=True) == kept  # train.py reads it
    path = "/chat/completions" if api_type == "chat" else "/completions"
    follow_ups = [b for b in openai_server.bodies(path) if FOLLOW_UP_START in json.dumps(b)]
    answers = [b for b in openai_server.bodies(path) if (len(b.get("messages", [])) > 1
                                                         or "".join(b.get("prompt", "")).endswith("Assistant:"))]
    assert len(follow_ups) == len(answers) == 2 * len(kept)
    first = kept[0]["messages"]
    question = FOLLOW_UP_PROMPT.format(transcript=f"User: {first_instruction(kept[0])}"
                                       + ("\n\n" + first[0]["content"][1]["text"] if isinstance(
                                           first[0]["content"], list) else "")
                                       + f"\n\nAssistant: {first[1]['content']}")
    sent = [b["messages"][0]["content"] if "messages" in b else b["prompt"] for b in follow_ups]
    assert question in [text if isinstance(text, str) else text[0] for text in sent]
    if api_type == "completions":
        assert all(b["stop"] == ["\nUser:"] for b in answers)
    # The novelty filter ran on the first turn: each first instruction lists its most similar earlier ones.
    assert all(len(e["most_similar_instructions"]) == 10 for e in kept)


def test_a_conversation_resumes_from_its_journal_and_cache(openai_server, seeds, tmp_path):  # noqa: F811
    openai_server.responder = teacher
    whole = generate(openai_server, tmp_path / "whole", seeds, num_instructions_to_generate=12, num_turns=2,
                     request_batch_size=1)
    generate(openai_server, tmp_path / "split", seeds, num_instructions_to_generate=4, num_turns=2,
             request_batch_size=1)
    resumed = generate(openai_server, tmp_path / "split", seeds, num_instructions_to_generate=12, num_turns=2,
                       request_batch_size=1)
    assert resumed == whole
    requests = len(openai_server.requests)
    generate(openai_server, tmp_path / "whole", seeds, num_instructions_to_generate=12, num_turns=2,
             request_batch_size=1)
    assert len(openai_server.requests) == requests  # nothing asked again


@pytest.mark.slow
def test_num_turns_2_resumes_after_sigkill_byte_identically(openai_server, seeds, tmp_path):  # noqa: F811
    openai_server.responder = teacher
    openai_server.delay = 0.1
    out = tmp_path / "killed"
    common = ["--seed_tasks_path", seeds, "--api_base", openai_server.url, "--api_type", "chat",
              "--max_concurrency", "2", "--num_cpus", "1", "--request_batch_size", "1", "--num_turns", "2"]
    process = subprocess.Popen(
        [sys.executable, "-m", "generate_instruction", "generate_instruction_following_data", "--output_dir",
         str(out), "--num_instructions_to_generate", "100000", *common],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OPENAI_API_KEY": KEY})
    journal = out / run_journal.JOURNAL_NAME
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not journal.exists() or journal.read_text().count("\n") < 3):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    entries, next_request = run_journal.load_generated(str(out))
    assert next_request >= 3 and entries and all("messages" in e for e in entries)

    openai_server.delay = 0.0
    target = len(entries) + 10
    settings = dict(num_instructions_to_generate=target, num_turns=2, api_type="chat", request_batch_size=1,
                    max_concurrency=2)
    resumed = generate(openai_server, out, seeds, **settings)
    whole = generate(openai_server, tmp_path / "whole", seeds, **settings)
    assert resumed[:len(entries)] == entries and resumed == whole
    assert (out / "regen.json").read_bytes() == (tmp_path / "whole" / "regen.json").read_bytes()
