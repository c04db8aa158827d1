"""generate_instruction.py: the original's prompt and parser, and the Self-Instruct loop end to end against a
loopback OpenAI-compatible server (alpaca/testing/openai_server.py) through the real openai client."""

import hashlib
import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import pytest
from rouge_score import rouge_scorer

from alpaca import cli
from alpaca.generate import journal as run_journal
from alpaca.generate import self_instruct as gi
from alpaca.llm import client as llm_client
from alpaca.testing.openai_server import WORDS, Reply, answer, auth_error, error_reply, fake_tasks, next_task_number, ok
from conftest import REPO, task

KEY = "sk-test-key-123"  # set by the openai_server fixture
TOPICS = ["volcano", "sonnet", "budget", "recipe", "chess", "tax", "poem", "python", "history", "climate",
          "marathon", "vaccine", "guitar", "email"]


def write_seeds(path: pathlib.Path, count: int = 12) -> str:
    lines = []
    for i in range(count):
        task = {"id": f"seed_task_{i}", "name": f"task_{i}", "is_classification": i % 4 == 0,
                "instruction": f"Tell me something useful about the {TOPICS[i]} topic number {i}.",
                "instances": [{"input": "" if i % 3 else f"Context about {TOPICS[i]}.", "output": f"Answer {i}."}]}
        lines.append(json.dumps(task))
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture
def seeds(tmp_path) -> str:
    return write_seeds(tmp_path / "seeds.jsonl")


def generate(server, output_dir, seeds, **kwargs) -> list[dict]:
    settings = {"num_instructions_to_generate": 30, "retry_base_delay": 0.001, "num_cpus": 1, **kwargs}
    return gi.generate_instruction_following_data(output_dir=str(output_dir), seed_tasks_path=seeds,
                                                  api_base=server.url, **settings)


def read_journal(output_dir) -> list[dict]:
    return [json.loads(line) for line in (pathlib.Path(output_dir) / run_journal.JOURNAL_NAME).read_text().splitlines()]


def run_cli(*flags: str) -> int:
    """`python -m generate_instruction generate_instruction_following_data FLAGS`, in this process: the exit code
    (its output goes to capsys)."""
    argv = ["generate_instruction_following_data", *flags]
    with pytest.raises(SystemExit) as exit_info:
        cli.report_errors(lambda: cli.run_commands(gi.COMMANDS, argv=argv, prog="python -m generate_instruction"),
                          gi.INTERRUPTED, sigterm_as_interrupt=False)
    return exit_info.value.code


# -- the original's prompt and parser ---------------------------------------------------------------


def test_encode_prompt_matches_the_format():
    tasks = [{"instruction": "  Name three\n primary   colours: ", "input": "", "output": "Red, yellow, blue."},
             {"instruction": "Sort these numbers::", "input": "3, 1, 2", "output": "1, 2, 3"}]
    frame = pathlib.Path(gi.PROMPT_PATH).read_text()
    expected = (frame + "\n"
                "###\n1. Instruction: Name three primary colours\n1. Input:\n<noinput>\n"
                "1. Output:\nRed, yellow, blue.\n"
                "###\n2. Instruction: Sort these numbers\n2. Input:\n3, 1, 2\n2. Output:\n1, 2, 3\n"
                "###\n3. Instruction:")
    assert gi.encode_prompt(tasks) == expected
    assert frame.rstrip().endswith("List of 20 tasks:")


def test_post_process_applies_the_original_filters():
    long_instruction = "Explain " + "very " * 150 + "clearly."
    pieces = [
        task(4, "Describe the water cycle in simple words.", "<NoInput>", "Water evaporates, condenses, falls."),
        task(5, "Too short here."),  # 3 words
        task(6, "Draw a cat using only letters please."),  # blacklisted, any case
        task(7, "Describe the graphic design trends of 2020."),  # "graphic" is not the word "graph"
        task(8, "Write a program that prints the first ten primes."),
        task(9, '"Quote" this sentence in a formal tone.'),
        task(10, "Écris une phrase sur la mer."),
        task(12, "The number does not match this task."),
        task(12, "Explain how to go to the nearest station."),  # "go to"
        "13. Instruction: A task without its other fields.\n###\n",
        task(14, long_instruction),
        task(15, "Summarize the profile of this applicant.", "Jane, 12 years in nursing.", "An experienced nurse."),
        task(16, "List three facts about the moon."),
    ]
    text = "".join(pieces)[len("4. Instruction:"):]  # the model continues after the prompt's "4. Instruction:"
    drops = Counter()
    kept = gi.post_process_gpt3_response(3, {"text": text, "finish_reason": "stop"}, drops)
    assert kept == [
        {"instruction": "Describe the water cycle in simple words.", "input": "",
         "output": "Water evaporates, condenses, falls."},
        {"instruction": "Describe the graphic design trends of 2020.", "input": "", "output": "An answer."},
        {"instruction": "Summarize the profile of this applicant.", "input": "Jane, 12 years in nursing.",
         "output": "An experienced nurse."},
        {"instruction": "List three facts about the moon.", "input": "", "output": "An answer."},
    ]
    assert drops == Counter({"length": 2, "blacklist": 2, "format": 2, "write_a_program": 1, "punctuation": 1,
                             "non_ascii": 1})
    # Cut off at max_tokens: the last piece is dropped even when it looks complete.
    cut = gi.post_process_gpt3_response(3, {"text": text.rstrip("#\n"), "finish_reason": "length"})
    assert cut == kept[:-1]
    assert gi.post_process_gpt3_response(3, None) == []
    assert gi.post_process_gpt3_response(3, {"text": "no tasks at all", "finish_reason": "stop"}) == []


def test_post_process_numbering_follows_num_prompt_instructions():
    text = " Name a fruit that is red.\n2. Input:\n<noinput>\n2. Output:\nA strawberry.\n###\n" + task(
        3, "Name a fruit that is yellow.")
    kept = gi.post_process_gpt3_response(1, {"text": text, "finish_reason": "stop"})
    assert [k["instruction"] for k in kept] == ["Name a fruit that is red.", "Name a fruit that is yellow."]
    assert gi.post_process_gpt3_response(2, {"text": text, "finish_reason": "stop"}) == []


@pytest.mark.parametrize("entry,reason", [
    ({"input": "", "output": "A poem.\n5. Instruction: Write another poem."}, "merged_tasks"),
    ({"input": "", "output": "N/A"}, "empty_output"),
    ({"input": "", "output": "   "}, "empty_output"),
    ({"input": "No input", "output": "Fine."}, "noinput_variant"),
    ({"input": "None", "output": "Fine."}, "noinput_variant"),
    ({"input": "https://example.com/report.pdf", "output": "Fine."}, "url_input"),
    ({"input": "<attached image>", "output": "Fine."}, "url_input"),
    ({"input": "None of the options apply to Tom.", "output": "Fine."}, None),
    ({"input": "See https://example.com for the data: 1, 2, 3.", "output": "Six."}, None),
    ({"input": "", "output": "No, penguins cannot fly."}, None),
    ({"input": "[link to the article]", "output": "Fine."}, "url_input"),
    ({"input": "(see attached document)", "output": "Fine."}, "url_input"),
    ({"input": "See the attached file.", "output": "Fine."}, "url_input"),
    ({"input": "photo.jpg", "output": "Fine."}, "url_input"),
    # Real inputs that merely start with an attachment word, and real answers that are a bare "None".
    ({"input": "Document: The meeting is moved to 5 pm on Friday. Please confirm by Thursday.", "output": "Ok."},
     None),
    ({"input": "Video games are popular among teenagers and adults alike.", "output": "Fine."}, None),
    ({"input": "File A: 10 MB. File B: 20 MB", "output": "File B."}, None),
    ({"input": "2, 4, 6, 8", "output": "None"}, None),
])
def test_clean_filters(entry, reason):
    assert gi.clean_drop_reason({"instruction": "Do something useful now.", **entry}) == reason


def test_chat_reply_restating_the_number_parses_like_a_continuation():
    reply = ("Sure! Here are more tasks:\n\n4. Instruction: Name a large ocean.\n4. Input:\n<noinput>\n"
             "4. Output:\nThe Pacific.")
    text = gi.chat_reply_as_continuation(reply, 4)
    kept = gi.post_process_gpt3_response(3, {"text": text, "finish_reason": "stop"})
    assert kept == [{"instruction": "Name a large ocean.", "input": "", "output": "The Pacific."}]
    # A reply that does continue the list is left alone, even though "14. Instruction:" contains "4. Instruction:".
    continuation = fake_tasks("###\n4. Instruction:", last=16)
    assert gi.chat_reply_as_continuation(continuation, 4) == continuation
    assert len(gi.post_process_gpt3_response(3, {"text": continuation, "finish_reason": "stop"})) == 13


def test_seed_file_errors_name_file_and_line(tmp_path):
    path = tmp_path / "seeds.jsonl"
    good = json.dumps({"instruction": "Say hi.", "instances": [{"input": "", "output": "Hi."}]})
    path.write_text(good + "\n\n" + '{"instruction": "broken",\n')
    with pytest.raises(gi.SeedTaskError, match=r"seeds.jsonl, line 3: not valid JSON"):
        gi.load_seed_tasks(str(path))
    path.write_text(good + "\n" + json.dumps({"instruction": "No instances."}) + "\n")
    with pytest.raises(gi.SeedTaskError, match=r"seeds.jsonl, line 2: a seed task needs"):
        gi.load_seed_tasks(str(path))
    with pytest.raises(gi.SeedTaskError, match="does not exist"):
        gi.load_seed_tasks(str(tmp_path / "missing.jsonl"))
    path.write_bytes((good + "\n").encode() + json.dumps({"instruction": "Caf\u00e9 list.", "instances": [
        {"input": "", "output": "Latte."}]}, ensure_ascii=False).encode("latin-1") + b"\n")
    with pytest.raises(gi.SeedTaskError, match=r"seeds.jsonl, line 2: not UTF-8"):
        gi.load_seed_tasks(str(path))
    path.write_text(good + "\n")
    assert gi.load_seed_tasks(str(path)) == [{"instruction": "Say hi.", "input": "", "output": "Hi."}]


def test_rouge_index_is_reexported():
    from alpaca.generate.self_instruct import RougeLIndex

    index = RougeLIndex(["the cat sat on the mat"])
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    assert index.scores("a cat sat")[0] == scorer.score("the cat sat on the mat", "a cat sat")["rougeL"].fmeasure


# -- the loop end to end ----------------------------------------------------------------------------


def test_run_writes_the_original_format_and_sends_the_original_request(openai_server, seeds, tmp_path):
    out = tmp_path / "out"
    kept = generate(openai_server, out, seeds, num_instructions_to_generate=20, max_concurrency=1)
    regen = json.loads((out / "regen.json").read_text())
    assert regen == kept and len(regen) >= 20
    assert set(regen[0]) == {"instruction", "input", "output", "most_similar_instructions", "avg_similarity_score"}
    body = openai_server.bodies()[0]
    assert body["model"] == "gpt-3.5-turbo-instruct" and len(body["prompt"]) == 5
    assert body["max_tokens"] == 3072 and body["stop"] == ["\n20", "20."] and body["n"] == 1
    assert body["temperature"] == 1.0 and body["top_p"] == 1.0 and "logit_bias" not in body
    seed_instructions = [json.loads(line)["instruction"] for line in open(seeds)]
    for prompt in body["prompt"]:
        assert prompt.endswith("###\n4. Instruction:") and sum(s in prompt for s in seed_instructions) == 3
    # Similarities are rouge_score's, against the seeds and every instruction kept before.
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    for i in (0, 7, len(regen) - 1):
        pool = seed_instructions + [e["instruction"] for e in regen[:i]]
        scores = [scorer.score(p, regen[i]["instruction"])["rougeL"].fmeasure for p in pool]
        assert regen[i]["avg_similarity_score"] == pytest.approx(float(np.mean(scores)), abs=1e-12)
        top = sorted(scores, reverse=True)[:10]
        assert list(regen[i]["most_similar_instructions"].values()) == top
        assert max(scores) <= 0.7


def test_similarity_and_clean_drops_are_counted(openai_server, seeds, tmp_path):
    def responder(path, prompt, body):
        rng = random.Random(prompt)
        words = " ".join(rng.sample(WORDS, 8))
        tasks = [task(4, f"Describe the {words} carefully."), task(5, f"Describe the {words} carefully today."),
                 task(6, "Explain " + " ".join(rng.sample(WORDS, 8)) + ".", output="N/A")]
        return "".join(tasks)[len("4. Instruction:"):], "stop"

    openai_server.responder = responder
    generate(openai_server, tmp_path / "plain", seeds, max_requests=1)
    plain = read_journal(tmp_path / "plain")[0]
    generate(openai_server, tmp_path / "clean", seeds, max_requests=1, clean=True)
    clean = read_journal(tmp_path / "clean")[0]
    assert plain["dropped"] == {"similarity": 5} and len(plain["kept"]) == 10  # task 5 copies task 4
    assert clean["dropped"] == {"similarity": 5, "empty_output": 5} and len(clean["kept"]) == 5


def slow_shuffled_responder(path, prompt, body):
    """Answers after a random pause (so requests finish out of order) with tasks of which one in three is a
    near-copy of a few shared instructions, so what is kept depends on the order requests are processed in."""
    seed = hashlib.sha256(prompt.encode()).hexdigest()
    time.sleep(random.Random(seed + "pause").random() * 0.05)
    text = fake_tasks(prompt, last=9)
    shared = random.Random(seed).randrange(4)
    return text + task(10, f"Compare the {WORDS[shared]} with the {WORDS[shared + 5]} for a beginner."), "stop"


@pytest.mark.slow
def test_same_output_at_concurrency_1_and_8(openai_server, seeds, tmp_path):
    openai_server.responder = slow_shuffled_responder
    one = generate(openai_server, tmp_path / "c1", seeds, num_instructions_to_generate=150, max_concurrency=1)
    eight = generate(openai_server, tmp_path / "c8", seeds, num_instructions_to_generate=150, max_concurrency=8)
    assert (tmp_path / "c1" / "regen.json").read_bytes() == (tmp_path / "c8" / "regen.json").read_bytes()
    assert any(r["dropped"].get("similarity") for r in read_journal(tmp_path / "c8"))
    assert len(one) == len(eight) >= 150


def test_resume_and_cache_replay_reproduce_an_uninterrupted_run(openai_server, seeds, tmp_path):
    whole = generate(openai_server, tmp_path / "whole", seeds, num_instructions_to_generate=60, request_batch_size=1)
    generate(openai_server, tmp_path / "split", seeds, num_instructions_to_generate=25, request_batch_size=1)
    assert [r["request_index"] for r in read_journal(tmp_path / "split")] == [0, 1]
    resumed = generate(openai_server, tmp_path / "split", seeds, num_instructions_to_generate=60, request_batch_size=1)
    assert resumed == whole
    assert [r["request_index"] for r in read_journal(tmp_path / "split")] == [0, 1, 2, 3]  # went on, not from 0

    # Replay: same settings, no journal or regen.json left, every response from the cache: no HTTP at all.
    for name in ("regen.json", run_journal.JOURNAL_NAME):
        os.remove(tmp_path / "whole" / name)
    requests_before = len(openai_server.requests)
    replayed = generate(openai_server, tmp_path / "whole", seeds, num_instructions_to_generate=60, request_batch_size=1)
    assert replayed == whole and len(openai_server.requests) == requests_before

    # The API key is nowhere in what the runs wrote.
    for path in tmp_path.rglob("*"):
        assert not path.is_file() or KEY.encode() not in path.read_bytes(), path


def test_resume_from_an_original_regen_json(openai_server, seeds, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    earlier = [{"instruction": "Suggest a name for a small bakery by the sea.", "input": "", "output": "Crumbs.",
                "most_similar_instructions": {}, "avg_similarity_score": 0.1}]
    (out / "regen.json").write_text(json.dumps(earlier, indent=4))
    kept = generate(openai_server, out, seeds, num_instructions_to_generate=10)
    assert kept[0] == earlier[0] and len(kept) >= 10
    assert read_journal(out)[0]["source"] == "regen.json"
    # The loaded instruction is in the similarity pool: its copy is dropped.
    later = kept[1]["most_similar_instructions"]
    assert "Suggest a name for a small bakery by the sea." in later


def test_chat_endpoint_end_to_end(openai_server, seeds, tmp_path):
    def chatty(path, prompt, body):
        number = next_task_number(prompt)
        return f"Sure, here you go!\n\n{number}. Instruction:" + fake_tasks(prompt, last=8), "stop"

    openai_server.responder = chatty
    kept = generate(openai_server, tmp_path / "chat", seeds, api_type="chat", model_name="my-chat-model",
                    max_requests=2, request_batch_size=3, logit_bias={"50256": -100})
    bodies = openai_server.bodies("/chat/completions")
    assert len(bodies) == 6 and all(len(b["messages"]) == 1 for b in bodies)
    assert bodies[0]["logit_bias"] == {"50256": -100}
    assert len(kept) == 2 * 3 * 5 and not any("Instruction" in k["instruction"] for k in kept)


def start_long_run(server, out, seeds) -> subprocess.Popen:
    """The CLI on a goal it will not reach, returned once its journal holds 3 completed requests."""
    process = subprocess.Popen(
        [sys.executable, "-m", "generate_instruction", "generate_instruction_following_data", "--output_dir",
         str(out), "--seed_tasks_path", seeds, "--num_instructions_to_generate", "100000", "--api_base",
         server.url, "--max_concurrency", "2", "--num_cpus", "1", "--request_batch_size", "1"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OPENAI_API_KEY": KEY})
    journal = out / run_journal.JOURNAL_NAME
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not journal.exists() or journal.read_text().count("\n") < 3):
        time.sleep(0.05)
    return process


@pytest.mark.slow
def test_kill_mid_run_keeps_every_completed_request(openai_server, seeds, tmp_path):
    openai_server.delay = 0.3
    out = tmp_path / "killed"
    process = start_long_run(openai_server, out, seeds)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert (out / run_journal.JOURNAL_NAME).exists(), "the run never completed a request"
    entries, next_request = run_journal.load_generated(str(out))
    assert next_request >= 3 and len(entries) == sum(len(r["kept"]) for r in read_journal(out)) > 0

    openai_server.delay = 0.0
    target = len(entries) + 20
    resumed = generate(openai_server, out, seeds, num_instructions_to_generate=target, request_batch_size=1)
    assert resumed[:len(entries)] == entries
    whole = generate(openai_server, tmp_path / "whole", seeds, num_instructions_to_generate=target,
                     request_batch_size=1)
    assert resumed == whole


@pytest.mark.slow
def test_sigterm_writes_regen_json_like_ctrl_c(openai_server, seeds, tmp_path):
    """`kill`, `timeout` and batch schedulers send SIGTERM: regen.json must then hold every kept instruction."""
    openai_server.delay = 0.2
    out = tmp_path / "terminated"
    process = start_long_run(openai_server, out, seeds)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130 and "every instruction kept so far is saved" in stderr
    kept = [entry for record in read_journal(out) for entry in record["kept"]]
    assert json.loads((out / "regen.json").read_text()) == kept and kept


def test_unknown_flags_and_impossible_values_are_one_line(seeds, tmp_path, capsys):
    assert run_cli("--output_dir", str(tmp_path), "--num_instructionz", "5") == 2
    assert "unknown flag --num_instructionz" in capsys.readouterr().err
    assert run_cli("--output_dir", str(tmp_path / "a"), "--seed_tasks_path", seeds, "--num_cpus", "0",
                   "--api_base", "http://127.0.0.1:9/v1") == 2
    assert "--num_cpus must be a positive whole number, not 0" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


def test_a_hand_edited_regen_json_is_moved_aside_not_overwritten(openai_server, seeds, tmp_path, capsys):
    out = tmp_path / "out"
    first = generate(openai_server, out, seeds, num_instructions_to_generate=5)
    edited = first[1:]  # the user dropped an instruction they did not like
    (out / "regen.json").write_text(json.dumps(edited))
    resumed = generate(openai_server, out, seeds, num_instructions_to_generate=len(first) + 5)
    assert resumed[:len(first)] == first  # the run resumes from the journal
    backups = list(out.glob("regen.json.edited-*"))
    assert len(backups) == 1 and json.loads(backups[0].read_text()) == edited
    assert "was moved to" in capsys.readouterr().err


def test_half_written_journal_line_is_dropped(openai_server, seeds, tmp_path):
    out = tmp_path / "out"
    generate(openai_server, out, seeds, num_instructions_to_generate=1000, max_requests=2)
    journal = out / run_journal.JOURNAL_NAME
    complete = journal.read_bytes()
    journal.write_bytes(complete + b'{"request_index": 2, "kept": [{"instr')  # killed mid-write
    entries, next_request = run_journal.load_generated(str(out))
    assert next_request == 2 and journal.read_bytes() == complete
    assert len(entries) == sum(len(r["kept"]) for r in read_journal(out))


@pytest.mark.slow
def test_auth_error_exits_clearly_and_keeps_the_data(openai_server, seeds, tmp_path):
    openai_server.push(answer(), auth_error())
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "generate_instruction", "generate_instruction_following_data", "--output_dir",
         str(out), "--seed_tasks_path", seeds, "--num_instructions_to_generate", "1000", "--api_base",
         openai_server.url, "--max_concurrency", "1", "--num_cpus", "1"],
        cwd=REPO, capture_output=True, text=True, env={**os.environ, "OPENAI_API_KEY": KEY}, timeout=120)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "refused the API key" in errors[0] and "Traceback" not in result.stderr
    kept = json.loads((out / "regen.json").read_text())
    assert len(kept) == len(read_journal(out)[0]["kept"]) > 0


@pytest.mark.slow
def test_a_key_echoed_by_the_server_is_masked_in_every_message(openai_server, seeds, tmp_path):
    openai_server.push(error_reply(500, f"upstream failed for key {KEY}", "server_error"),
                       error_reply(401, f"Invalid key {KEY}", "invalid_request_error", "invalid_api_key"))
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "generate_instruction", "generate_instruction_following_data", "--output_dir",
         str(out), "--seed_tasks_path", seeds, "--api_base", openai_server.url, "--max_concurrency", "1",
         "--num_cpus", "1", "--retry_base_delay", "0.01"],
        cwd=REPO, capture_output=True, text=True, env={**os.environ, "OPENAI_API_KEY": KEY}, timeout=120)
    assert result.returncode == 1 and "Invalid key <OPENAI_API_KEY>" in result.stderr
    assert "upstream failed for key <OPENAI_API_KEY>" in result.stderr  # the retry log line
    assert KEY not in result.stdout + result.stderr
    assert not any(KEY in f.read_text(errors="replace") for f in out.rglob("*") if f.is_file())


def test_cli_errors_are_one_sentence(seeds, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    assert run_cli("--output_dir", str(tmp_path / "a"), "--seed_tasks_path", seeds) == 1
    assert "OPENAI_API_KEY is not set" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()  # refused before anything was created
    assert run_cli("--output_dir", str(tmp_path / "a"), "--seed_tasks_path", seeds, "--api_type", "local",
                   "--model_name", str(tmp_path / "no-such-model")) == 1
    assert "is not a directory" in capsys.readouterr().err and not (tmp_path / "a").exists()

    assert run_cli("--output_dir", str(tmp_path / "b"), "--seed_tasks_path", seeds, "--api_base",
                   "http://127.0.0.1:9/v1", "--retry_base_delay", "0.001") == 1
    assert "Could not reach the endpoint http://127.0.0.1:9/v1" in capsys.readouterr().err

    bad = tmp_path / "bad.jsonl"
    bad.write_text(pathlib.Path(seeds).read_text() + "not json\n")
    assert run_cli("--output_dir", str(tmp_path / "c"), "--seed_tasks_path", str(bad)) == 1
    assert "bad.jsonl, line 13: not valid JSON" in capsys.readouterr().err


def test_local_backend_runs_the_loop(tiny_model_dir, seeds, tmp_path):
    out = tmp_path / "local"
    kept = gi.generate_instruction_following_data(
        output_dir=str(out), seed_tasks_path=seeds, num_instructions_to_generate=5, api_type="local",
        model_name=str(tiny_model_dir), max_tokens=8, request_batch_size=2, max_requests=2, num_cpus=1)
    journal = read_journal(out)
    assert [r["request_index"] for r in journal] == [0, 1]
    assert journal[0]["usage"]["completion_tokens"] == 2 * 8  # a random tiny model never stops early
    assert json.loads((out / "regen.json").read_text()) == kept
    store = llm_client.ResponseCache(str(out / "responses"))
    cached = store.records()
    store.close()
    assert len(cached) == 2
    response = json.loads(cached[0])["response"]
    assert [c["finish_reason"] for c in response["choices"]] == ["length", "length"]
    shutil.rmtree(out)


def test_unparsable_completions_are_counted_and_the_run_goes_on(openai_server, seeds, tmp_path):
    openai_server.push(ok(*["I cannot help with that."] * 4, "4. Instruction: Only a title here"))
    generate(openai_server, tmp_path / "out", seeds, num_instructions_to_generate=10, max_concurrency=1)
    journal = read_journal(tmp_path / "out")
    assert journal[0]["kept"] == [] and journal[0]["dropped"] == {"format": 5} and journal[0]["parsed"] == 0
    assert journal[1]["request_index"] == 1 and len(journal[1]["kept"]) >= 10


def test_help_lists_every_flag(capsys):
    assert run_cli("--help") == 0
    text = capsys.readouterr().out
    for flag in ("--output_dir", "--num_cpus", "--api_type", "--api_base", "--max_concurrency", "--seed",
                 "--logit_bias None", "--clean False", "--max_tokens 3072", "--requests_per_minute"):
        assert flag in text


# -- the command-line contract and the hardening of the output directory ------------------------------


def na_responder(path, prompt, body):
    """Five well-formed tasks whose outputs are all "N/A": kept by default, dropped by --clean."""
    rng = random.Random(prompt)
    tasks = [task(n, f"Explain the {' '.join(rng.sample(WORDS, 8))} clearly.", output="N/A") for n in range(4, 9)]
    return "".join(tasks)[len("4. Instruction:"):], "stop"


@pytest.mark.parametrize("spelling,kept", [("false", 5), ("False", 5), ("0", 5), ("true", 0)])
def test_clean_false_in_any_spelling_is_off(openai_server, seeds, tmp_path, spelling, kept):
    """`--clean false` used to reach the function as the string 'false', which is true: 0 kept instead of 5."""
    openai_server.responder = na_responder
    out = tmp_path / "out"
    assert run_cli("--output_dir", str(out), "--seed_tasks_path", seeds, "--api_base", openai_server.url,
                   "--request_batch_size", "1", "--max_requests", "1", "--num_cpus", "1", "--clean", spelling) == 0
    (record,) = read_journal(out)
    assert len(record["kept"]) == kept
    assert record["dropped"] == ({} if kept else {"empty_output": 5})


@pytest.mark.parametrize("spelling", ["false", "0"])
def test_cache_false_stores_no_responses(openai_server, seeds, tmp_path, spelling):
    out = tmp_path / "out"
    assert run_cli("--output_dir", str(out), "--seed_tasks_path", seeds, "--api_base", openai_server.url,
                   "--max_requests", "1", "--num_cpus", "1", "--cache", spelling) == 0
    assert (out / "regen.json").exists() and not (out / "responses").exists()


def contract_case(name: str, tmp_path: pathlib.Path, seeds: str) -> tuple[list[str], int]:
    """(flags, exit code) of one way to get the command line wrong."""
    if name == "unknown flag":
        return ["--seed_tasks_path", seeds, "--num_instructionz", "5"], 2
    if name == "not a boolean":
        return ["--seed_tasks_path", seeds, "--clean", "maybe"], 2
    if name == "bad logit_bias":
        return ["--seed_tasks_path", seeds, "--logit_bias", "{50256: -100"], 2
    if name == "missing seed file":
        return ["--seed_tasks_path", str(tmp_path / "missing.jsonl")], 1
    if name == "malformed seed file":
        bad = tmp_path / "bad.jsonl"
        bad.write_text(pathlib.Path(seeds).read_text() + '{"instruction": "cut short\n')
        return ["--seed_tasks_path", str(bad)], 1
    raise ValueError(name)


@pytest.mark.slow  # several processes
@pytest.mark.parametrize("case", ["unknown flag", "not a boolean", "bad logit_bias", "missing seed file",
                                  "malformed seed file"])
def test_command_line_mistakes_are_one_line_before_any_work(openai_server, seeds, tmp_path, case):
    flags, code = contract_case(case, tmp_path, seeds)
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "generate_instruction", "generate_instruction_following_data", "--output_dir",
         str(out), "--api_base", openai_server.url, "--num_cpus", "1", *flags],
        cwd=REPO, capture_output=True, text=True, env={**os.environ, "OPENAI_API_KEY": KEY}, timeout=120)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == code, result.stderr
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert not out.exists() and openai_server.requests == []


@pytest.mark.slow  # several processes
def test_boolean_spellings_on_the_real_command_line(openai_server, seeds, tmp_path):
    openai_server.responder = na_responder
    for spelling in ("false", "False", "0"):
        out = tmp_path / spelling
        result = subprocess.run(
            [sys.executable, "-m", "generate_instruction", "generate_instruction_following_data", "--output_dir",
             str(out), "--seed_tasks_path", seeds, "--api_base", openai_server.url, "--num_cpus", "1",
             "--request_batch_size", "1", "--max_requests", "1", "--clean", spelling],
            cwd=REPO, capture_output=True, text=True, env={**os.environ, "OPENAI_API_KEY": KEY}, timeout=120)
        assert result.returncode == 0 and "error:" not in result.stderr, result.stderr
        assert len(json.loads((out / "regen.json").read_text())) == 5


def test_output_dir_that_is_a_file_is_one_line(seeds, tmp_path, capsys):
    path = tmp_path / "regen.json"
    path.write_text("[]")
    assert run_cli("--output_dir", str(path), "--seed_tasks_path", seeds, "--api_base", "http://127.0.0.1:9/v1") == 2
    assert "--output_dir " + str(path) + " is a file, not a directory" in capsys.readouterr().err


def test_an_unreachable_endpoint_leaves_no_empty_regen_json(seeds, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    existing = tmp_path / "existing"
    existing.mkdir()
    for out in (existing, tmp_path / "new"):
        assert run_cli("--output_dir", str(out), "--seed_tasks_path", seeds, "--api_base", "http://127.0.0.1:9/v1",
                       "--retry_base_delay", "0.001", "--num_cpus", "1") == 1
        assert "Could not reach" in capsys.readouterr().err
    assert not (existing / "regen.json").exists() and not (existing / run_journal.JOURNAL_NAME).exists()
    assert not (tmp_path / "new").exists()  # created by the run, and removed again since it stayed empty


def test_a_malformed_200_is_named_and_a_rerun_sends_again(openai_server, seeds, tmp_path, capsys):
    openai_server.push(*[Reply(body={"choices": {"text": "x"}})] * 3)
    out = tmp_path / "out"
    flags = ["--output_dir", str(out), "--seed_tasks_path", seeds, "--api_base", openai_server.url, "--num_cpus",
             "1", "--max_retries", "2", "--retry_base_delay", "0.001", "--max_concurrency", "1",
             "--num_instructions_to_generate", "5"]
    assert run_cli(*flags) == 1
    err = capsys.readouterr().err
    assert "malformed response ('choices' is a dict, not a list)" in err and "Traceback" not in err
    assert run_cli(*flags) == 0  # nothing bad was cached: the re-run asks again and goes on
    assert len(openai_server.requests) == 4


def test_a_server_yielding_nothing_is_stopped_with_what_it_said(openai_server, seeds, tmp_path, capsys):
    openai_server.responder = lambda path, prompt, body: ("I'm sorry, I cannot help with that request.", "stop")
    out = tmp_path / "out"
    assert run_cli("--output_dir", str(out), "--seed_tasks_path", seeds, "--api_base", openai_server.url,
                   "--num_cpus", "1", "--max_concurrency", "1") == 1
    err = capsys.readouterr().err
    assert f"The last {gi.MAX_FRUITLESS_REQUESTS} requests to {openai_server.url} held no task" in err
    assert "such as \"I'm sorry, I cannot help with that request.\"" in err
    assert len(read_journal(out)) == gi.MAX_FRUITLESS_REQUESTS
    assert len(openai_server.requests) <= gi.MAX_FRUITLESS_REQUESTS + 1  # at most one more already in flight


@pytest.mark.parametrize("server", ["llama.cpp", "transformers"])
def test_a_server_refusing_prompt_lists_gives_the_same_output(openai_server, seeds, tmp_path, server, caplog):
    generate(openai_server, tmp_path / "lists", seeds, num_instructions_to_generate=300)
    openai_server.reject_prompt_lists = server
    openai_server.requests.clear()
    generate(openai_server, tmp_path / "one-each", seeds, num_instructions_to_generate=300)
    assert (tmp_path / "lists" / "regen.json").read_bytes() == (tmp_path / "one-each" / "regen.json").read_bytes()
    sent = [b["prompt"] for b in openai_server.bodies() if "prompt" in b]  # not the bodies of cancelled requests
    assert sum(isinstance(p, list) for p in sent) <= 4 and sum(isinstance(p, str) for p in sent) >= 20
    switches = [r for r in caplog.records if "sending one prompt per request" in r.getMessage()]
    assert len(switches) == 1


@pytest.mark.slow  # several processes
def test_a_second_run_on_the_same_output_dir_refuses_and_a_dead_ones_lock_does_not_block(
        openai_server, seeds, tmp_path):
    openai_server.delay = 0.2
    out = tmp_path / "busy"
    first = start_long_run(openai_server, out, seeds)
    try:
        second = subprocess.run(
            [sys.executable, "-m", "generate_instruction", "generate_instruction_following_data", "--output_dir",
             str(out), "--seed_tasks_path", seeds, "--api_base", openai_server.url, "--num_cpus", "1"],
            cwd=REPO, capture_output=True, text=True, env={**os.environ, "OPENAI_API_KEY": KEY}, timeout=120)
        assert second.returncode == 1
        (error,) = [line for line in second.stderr.splitlines() if line.startswith("error:")]
        assert f"is in use by another generator (pid {first.pid} on " in error
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=60)
    lock_file = out / run_journal.LOCK_NAME
    assert f"pid {first.pid}" in lock_file.read_text()  # a killed run leaves its lock file behind ...
    openai_server.delay = 0.0
    journal_lines = len(read_journal(out))
    kept = generate(openai_server, out, seeds, num_instructions_to_generate=10**6, max_requests=1)  # ... which no
    assert kept and len(read_journal(out)) == journal_lines + 1  # longer blocks anyone


def test_a_journal_damaged_in_a_middle_line_is_refused_naming_the_line(openai_server, seeds, tmp_path, capsys):
    out = tmp_path / "out"
    generate(openai_server, out, seeds, num_instructions_to_generate=1000, max_requests=3)
    journal = out / run_journal.JOURNAL_NAME
    lines = journal.read_bytes().splitlines(keepends=True)
    for damaged, problem in ((b'{"request_index": 1, "kept": [{"instr\n', "line 2 of 3: not valid JSON"),
                             (b'{"note": "my own line"}\n', "line 2 of 3: not a record of this generator")):
        journal.write_bytes(lines[0] + damaged + lines[2])
        before = journal.read_bytes()
        assert run_cli("--output_dir", str(out), "--seed_tasks_path", seeds, "--api_base", openai_server.url,
                       "--num_cpus", "1") == 1
        err = capsys.readouterr().err
        assert f"{journal}, {problem}" in err and "Traceback" not in err
        assert journal.read_bytes() == before  # nothing cut


def test_a_corrupt_regen_json_to_resume_from_is_one_line(openai_server, seeds, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "regen.json").write_text('[{"instruction": "Name a colour.", "input": ""},\n')
    assert run_cli("--output_dir", str(out), "--seed_tasks_path", seeds, "--api_base", openai_server.url) == 1
    err = capsys.readouterr().err
    assert "regen.json is not valid JSON" in err and "move it aside" in err and "Traceback" not in err
    assert openai_server.requests == []


@pytest.mark.slow
def test_a_real_transformers_serve_gets_one_prompt_per_request(tiny_model_dir, seeds, tmp_path, monkeypatch, caplog):
    """`transformers serve` answers a list of prompts with HTTP 400 "prompt must be a string": the run still
    completes, one prompt per request, saying so once."""
    import socket
    import urllib.request

    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [str(pathlib.Path(sys.executable).parent / "transformers"), "serve", str(tiny_model_dir), "--port",
               str(port), "--device", "cpu"]
    server = subprocess.Popen(command, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "transformers serve did not start"
                time.sleep(0.5)
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
        monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
        out = tmp_path / "out"
        gi.generate_instruction_following_data(
            output_dir=str(out), seed_tasks_path=seeds, api_base=f"http://127.0.0.1:{port}/v1",
            model_name=str(tiny_model_dir), request_batch_size=2, max_requests=2, max_tokens=8,
            num_instructions_to_generate=1000, num_cpus=1, retry_base_delay=0.01)
    finally:
        server.terminate()
        server.wait(timeout=60)
    journal = read_journal(out)
    assert [r["request_index"] for r in journal] == [0, 1] and all(r["usage"]["completion_tokens"] for r in journal)
    store = llm_client.ResponseCache(str(out / "responses"))
    cached = [json.loads(record)["request"]["prompt"] for record in store.records()]
    store.close()
    assert len(cached) == 4 and all(isinstance(prompt, str) for prompt in cached)
    assert sum("sending one prompt per request" in r.getMessage() for r in caplog.records) == 1
    assert any("prompt must be a string" in r.getMessage() for r in caplog.records)


def test_the_journal_is_flushed_per_line_and_forced_to_disk_once_a_second(tmp_path, monkeypatch):
    synced, now = [], [100.0]
    monkeypatch.setattr(run_journal.os, "fsync", lambda fd: synced.append(fd))
    monkeypatch.setattr(run_journal.time, "monotonic", lambda: now[0])
    journal = str(tmp_path / run_journal.JOURNAL_NAME)
    for i in range(10):
        run_journal.append_journal(journal, {"request_index": i})
        assert len(read_journal(tmp_path)) == i + 1  # with the OS at once: a killed process loses nothing
    assert len(synced) == 1  # the first line; the next nine within the same second wait
    now[0] += 1.0
    run_journal.append_journal(journal, {"request_index": 10})
    assert len(synced) == 2
    run_journal.sync_journal(journal)  # the end of a run
    assert len(synced) == 3


def test_a_teacher_that_repeats_itself_is_given_up_on(openai_server, seeds, tmp_path, capsys):
    # Every request gets the same continuation: after the first, every task is a near-duplicate (13,072 requests
    # for 22 instructions were bought this way before).
    first: list[str] = []

    def same_tasks(path, prompt, body):
        first.append(first[0] if first else fake_tasks(prompt))  # every prompt ends at task 4: same numbering
        return first[0], "stop"

    openai_server.responder = same_tasks
    kept = generate(openai_server, tmp_path / "out", seeds, num_instructions_to_generate=1000,
                    max_requests_without_new=3, max_concurrency=1, request_batch_size=1)
    assert 0 < len(kept) < 1000
    journal = read_journal(tmp_path / "out")
    assert [bool(line["kept"]) for line in journal][-3:] == [False, False, False] and len(journal) <= 5
    assert "the last 3 requests kept no new instruction" in capsys.readouterr().err
    assert json.loads((tmp_path / "out" / "regen.json").read_text()) == kept  # everything kept is written
