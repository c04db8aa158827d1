"""The one annotate loop (alpaca/llm/annotate.py): ask, parse, retry, journal, resume, cache keyed by content; and
the judge and the rater as a prompt and a parser on top of it."""

import asyncio
import json

from alpaca.data import tools as data_tools
from alpaca.evaluate import command as judge_command
from alpaca.evaluate import judge
from alpaca.llm import annotate
from alpaca.llm.client import LLMEndpoint, OpenAIDecodingArguments

ENTRY_FIELDS = {"key", "attempt", "reply", "usage", "cached", "time"}


def number_parser(choice: dict) -> dict | None:
    """Answers are replies that are a number."""
    text = choice["text"].strip()
    return {"number": int(text)} if text.isdigit() else None


def ask(server, jobs, journal, retries=1, cache_dir=None, **kwargs) -> dict:
    async def run():
        async with LLMEndpoint(api_type="chat", model_name="m", api_base=server.url, max_concurrency=3,
                               cache_dir=cache_dir, retry_base_delay=0.001) as endpoint:
            return await annotate.annotate(endpoint, jobs, str(journal), prompt_of=lambda job, a: job["prompt"],
                                           parse=number_parser, decoding_args=OpenAIDecodingArguments(max_tokens=8),
                                           retries=retries, **kwargs)
    return asyncio.run(run())


def journal_lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_reply_is_journaled_and_a_rerun_asks_only_what_has_no_answer(openai_server, tmp_path):
    openai_server.responder = lambda path, prompt, body: ("7" if "good" in prompt else "no idea", "stop")
    jobs = [{"key": f"k{i}", "prompt": f"{'good' if i != 2 else 'bad'} job {i}"} for i in range(5)]
    journal = tmp_path / "journal.jsonl"
    answers = {}
    tally = ask(openai_server, jobs, journal, retries=2, answers=answers, context={"asker": "test"})
    assert tally["requests"] == 5 + 2 and tally["unparsed"] == 3 and tally["failed"] == {"k2": "no idea"}
    lines = journal_lines(journal)
    assert len(lines) == 7 and all(ENTRY_FIELDS | {"asker"} <= set(line) for line in lines)
    assert sorted(line["attempt"] for line in lines if line["key"] == "k2") == [0, 1, 2]
    assert set(answers) == {"k0", "k1", "k3", "k4"} and answers["k0"]["number"] == 7

    # The journal is the cache: a re-run asks the unanswered job again, and nothing else.
    found = annotate.read_answers(str(journal), lambda e: "number" in e, writer="test")
    assert set(found) == set(answers)
    before = len(openai_server.requests)
    tally = ask(openai_server, [job for job in jobs if job["key"] not in found], journal, retries=0)
    assert tally["requests"] == 1 and len(openai_server.requests) == before + 1


def test_request_tags_follow_the_content_not_the_place_in_the_run(openai_server, tmp_path):
    """With the endpoint's response cache on, the same jobs in another order are all replayed: a job's request is
    named by its key and attempt, not by its index."""
    openai_server.responder = lambda path, prompt, body: (prompt.split()[-1], "stop")
    jobs = [{"key": f"k{i}", "prompt": f"say {i}"} for i in range(6)]
    cache = tmp_path / "responses"
    ask(openai_server, jobs, tmp_path / "first.jsonl", cache_dir=str(cache))
    sent = len(openai_server.requests)
    tally = ask(openai_server, jobs[::-1], tmp_path / "second.jsonl", cache_dir=str(cache))
    assert tally["cached"] == 6 and len(openai_server.requests) == sent
    assert {e["key"]: e["number"] for e in journal_lines(tmp_path / "second.jsonl")} == {f"k{i}": i for i in range(6)}


def test_the_judge_and_the_rater_are_a_prompt_and_a_parser_on_one_journal_rule(openai_server, tmp_path):
    """Both journal every reply, answer or not, with the loop's fields; both ask an unanswered item again on the
    next run and count nothing for it."""
    records = [{"instruction": f"Do task number {i}.", "input": "", "category": "c"} for i in range(2)]
    model, reference = tmp_path / "model.json", tmp_path / "reference.json"
    model.write_text(json.dumps([{**r, "output": f"mine {i}", "generator": "m"} for i, r in enumerate(records)]))
    reference.write_text(json.dumps([{**r, "output": f"ref {i}", "generator": "r"} for i, r in enumerate(records)]))
    data = tmp_path / "data.json"
    data.write_text(json.dumps([{"instruction": f"Do task number {i}.", "input": "", "output": f"x{i}"}
                                for i in range(2)]))

    def responder(path, prompt, body):
        stuck = "Do task number 1." in prompt
        if "<answer_a>" in prompt:
            return ("Hard to say." if stuck else "[[A]]"), "stop"
        return ("Hard to say." if stuck else "Fine.\nScore: 4"), "stop"
    openai_server.responder = responder

    argv = ["--model_outputs", str(model), "--reference_outputs", str(reference), "--output_dir",
            str(tmp_path / "judged"), "--judge_model", "j", "--api_base", openai_server.url, "--plot", "False",
            "--verdict_retries", "1"]
    assert judge_command.main(argv)["m"]["n_unjudged"] == 1
    summary = data_tools.rate(str(data), output=str(tmp_path / "rated.json"), judge_model="j",
                              api_base=openai_server.url, score_retries=1, cache=False)
    assert summary["rated"] == 1
    judged = journal_lines(tmp_path / "judged" / judge.JOURNAL_NAME)
    rated = journal_lines(tmp_path / "rated.json.journal.jsonl")
    for journal, field in ((judged, "verdict"), (rated, "score")):
        assert all(ENTRY_FIELDS <= set(entry) for entry in journal)
        stuck = [entry for entry in journal if field not in entry]
        assert stuck and {entry["reply"] for entry in stuck} == {"Hard to say."}
        assert sorted({entry["attempt"] for entry in stuck}) == [0, 1]

    before = len(openai_server.requests)
    judge_command.main(argv)
    data_tools.rate(str(data), output=str(tmp_path / "rated.json"), judge_model="j", api_base=openai_server.url,
                    score_retries=0, cache=False)
    asked = [b["messages"][0]["content"] for b in openai_server.bodies()[before:]]
    # both orders, 1 + 1 times each; one rating
    assert len(asked) == 2 * 2 + 1 and all("Do task number 1." in p for p in asked)
