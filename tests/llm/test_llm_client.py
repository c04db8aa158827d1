"""llm_client.py: hostile replies, settings that cannot work, base URLs (one or several), the response cache store
and the client's own speed, against real loopback servers (alpaca/testing/openai_server.py)."""

import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
import threading

import pytest

import utils
from alpaca import errors
from alpaca.evaluate import judge
from alpaca.generate import self_instruct as generate_instruction
from alpaca.infer import answer as inference
from alpaca.llm import client as llm_client
from alpaca.llm.client import LLMEndpoint, LLMError, OpenAIDecodingArguments, SettingError
from alpaca.testing.openai_server import OpenAIServer, Reply, fake_tasks, ok, rate_limited, server_error


def complete(url: str, prompts=("p",), sleeps: list | None = None, **settings) -> dict:
    """One batch through a fresh LLMEndpoint; retries wait on `sleeps` (recorded, not slept) when given."""

    async def recorded_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    async def run() -> dict:
        async with LLMEndpoint(**{"model_name": "m", "api_base": url, **settings}) as endpoint:
            if sleeps is not None:
                endpoint.sleep = recorded_sleep
            return await endpoint.complete(list(prompts), OpenAIDecodingArguments(max_tokens=5), "request 0")

    return asyncio.run(run())


def good_body(text: str = "x", **choice) -> dict:
    return {"id": "cmpl-x", "object": "text_completion", "model": "m",
            "choices": [{"index": 0, "text": text, "finish_reason": "stop", **choice}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


def chat_body(message: object = None, logprobs: object = None) -> dict:
    return {"id": "chat-x", "object": "chat.completion", "model": "m",
            "choices": [{"index": 0, "message": message, "finish_reason": "stop", "logprobs": logprobs}]}


def usage_raw(value: str) -> str:
    """A body whose usage holds `value` written as it is (NaN, 1e400: not producible by json.dumps)."""
    return json.dumps(good_body()).replace('"prompt_tokens": 1', f'"prompt_tokens": {value}')


# (api_type, reply, the fault the error must name)
HOSTILE = {
    "message-string": ("chat", Reply(body=chat_body("hello")), "a choice whose message is 'hello', not an object"),
    "message-null": ("chat", Reply(body=chat_body(None)), "a choice whose message is null, not an object"),
    "usage-nan": ("completions", Reply(raw=usage_raw("NaN")), "usage.prompt_tokens is nan, not a token count"),
    "usage-1e400": ("completions", Reply(raw=usage_raw("1e400")), "usage.prompt_tokens is inf, not a token count"),
    "usage-negative": ("completions", Reply(raw=usage_raw("-3")), "usage.prompt_tokens is -3, not a token count"),
    "usage-bool": ("completions", Reply(raw=usage_raw("true")), "usage.prompt_tokens is True, not a number"),
    "logprobs-string": ("completions", Reply(body=good_body(logprobs="many")), "'logprobs' is 'many', not an object"),
    "logprobs-top-string": ("completions", Reply(body=good_body(logprobs={"top_logprobs": "A"})),
                            "logprobs.top_logprobs is 'A', not a list"),
    "logprobs-top-list-of-lists": ("completions", Reply(body=good_body(logprobs={"top_logprobs": [["A", -1]]})),
                                   "logprobs.top_logprobs holds ['A', -1], not a {token: logprob} object"),
    "logprobs-top-value-string": ("completions", Reply(body=good_body(logprobs={"top_logprobs": [{"A": "-1"}]})),
                                  "logprobs.top_logprobs holds {'A': '-1'}"),
    "logprobs-tokens": ("completions", Reply(body=good_body(logprobs={"tokens": [1, 2]})),
                        "logprobs.tokens is [1, 2], not a list of strings"),
    "logprobs-token-logprobs": ("completions", Reply(body=good_body(logprobs={"token_logprobs": ["x"]})),
                                "logprobs.token_logprobs is ['x'], not a list of numbers"),
    "chat-content-dict": ("chat", Reply(body=chat_body({"content": "A"}, {"content": {"token": "A"}})),
                          "logprobs.content is {'token': 'A'}, not a list"),
    "chat-item-string": ("chat", Reply(body=chat_body({"content": "A"}, {"content": ["A"]})),
                         "logprobs.content holds 'A', not an object"),
    "chat-token-number": ("chat", Reply(body=chat_body({"content": "A"}, {"content": [{"token": 5, "logprob": -1}]})),
                          "logprobs.content holds a token 5, not a string"),
    "chat-top-not-list": ("chat", Reply(body=chat_body({"content": "A"}, {"content": [
        {"token": "A", "logprob": -1, "top_logprobs": {"A": -1}}]})), "top_logprobs is {'A': -1}, not a list"),
    "chat-top-logprob-null": ("chat", Reply(body=chat_body({"content": "A"}, {"content": [
        {"token": "A", "logprob": -1, "top_logprobs": [{"token": "A", "logprob": None}]}]})),
                              "top_logprobs holds a logprob None, not a number"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_replies_stop_the_run_in_one_sentence_and_are_never_cached(openai_server, tmp_path, name):
    api_type, reply, fault = HOSTILE[name]
    openai_server.push(*[reply] * 5)
    sleeps: list[float] = []
    with pytest.raises(LLMError) as error:
        complete(openai_server.url, api_type=api_type, sleeps=sleeps, cache_dir=str(tmp_path / "cache"))
    message = str(error.value)
    assert fault in message and "malformed response" in message and "\n" not in message
    assert len(openai_server.requests) == 3  # two quick retries, then the run stops
    store = llm_client.ResponseCache(str(tmp_path / "cache"))
    assert store.records() == []
    store.close()


def test_a_deterministic_malformed_200_gets_two_quick_retries_then_stops(openai_server):
    openai_server.push(*[Reply(body={**good_body(), "choices": []})] * 10)
    sleeps: list[float] = []
    with pytest.raises(LLMError, match=r"Gave up after 3 attempts at .*no choices for 1 expected"):
        complete(openai_server.url, sleeps=sleeps, max_retries=8, retry_base_delay=5.0)
    assert len(openai_server.requests) == 3 and len(sleeps) == 2
    assert sum(sleeps) < 2.0  # not the 8 retries of up to 60 s each a 5xx gets


def test_a_glitch_of_one_malformed_200_is_still_retried(openai_server):
    openai_server.push(Reply(body={**good_body(), "choices": []}), ok("fine"))
    assert complete(openai_server.url, sleeps=[])["choices"][0]["text"] == "fine"


def test_a_usable_reply_with_logprobs_passes_the_check(openai_server):
    top = {"A": -0.1, "B": -2.5}
    tops = [{"token": t, "logprob": v, "bytes": None} for t, v in top.items()]
    chat = chat_body({"role": "assistant", "content": "A"},
                     {"content": [{"token": "A", "logprob": -0.1, "bytes": None, "top_logprobs": tops}]})
    assert llm_client.response_problem(chat, "chat", 1) is None
    completions = good_body("A", logprobs={"tokens": ["A"], "token_logprobs": [-0.1], "top_logprobs": [top, None],
                                           "text_offset": [0]})
    assert llm_client.response_problem(completions, "completions", 1) is None
    assert llm_client.response_problem({**chat, "choices": [{**chat["choices"][0], "logprobs": None}]}, "chat", 1) \
        is None


def test_retry_after_is_capped_at_60_seconds_and_the_log_says_so(openai_server, caplog):
    openai_server.push(rate_limited(retry_after="inf"), rate_limited(retry_after=1e9), ok("fine"))
    sleeps: list[float] = []
    with caplog.at_level(logging.WARNING, logger="llm_client"):
        assert complete(openai_server.url, sleeps=sleeps, retry_base_delay=0.01)["choices"][0]["text"] == "fine"
    assert sleeps == [60.0, 60.0]
    lines = [r.getMessage() for r in caplog.records]
    assert "retry 1 of 8 in 60.0 s (the server asked for inf s; waits are capped at 60 s)" in lines[0]
    assert "the server asked for 1e+09 s" in lines[1]


@pytest.mark.parametrize(("setting", "value", "message"), [
    ("requests_per_minute", -1, "--requests_per_minute must be above 0, not -1."),
    ("requests_per_minute", 0, "--requests_per_minute must be above 0, not 0."),
    ("tokens_per_minute", -5, "--tokens_per_minute must be above 0, not -5."),
    ("request_timeout", 0, "--request_timeout must be above 0, not 0."),
    ("request_timeout", float("nan"), "--request_timeout takes a number, not nan."),
    ("temperature", -0.5, "--temperature must be at least 0, not -0.5."),
    ("top_p", 1.5, "--top_p must be between 0 and 1, not 1.5."),
    ("top_p", -0.1, "--top_p must be between 0 and 1, not -0.1."),
    ("max_concurrency", 0, "--max_concurrency must be at least 1, not 0."),
    ("max_response_bytes", 0, "--max_response_bytes must be above 0, not 0."),
])
def test_settings_that_cannot_work_are_one_sentence(setting, value, message):
    with pytest.raises(SettingError) as error:
        llm_client.check_settings("chat", "m", "http://localhost:8000/v1", **{setting: value})
    assert str(error.value) == message and error.value.exit_code == 2


def test_every_command_refuses_a_bad_rate_before_any_work(openai_server, tmp_path, repo_dir):
    out = tmp_path / "gen"
    with pytest.raises(SettingError, match="--requests_per_minute must be above 0, not -1"):
        generate_instruction.generate_instruction_following_data(
            output_dir=str(out), seed_tasks_path=str(repo_dir / "seed_tasks.jsonl"), api_base=openai_server.url,
            requests_per_minute=-1, num_cpus=1)
    with pytest.raises(SettingError, match="--temperature must be at least 0"):
        generate_instruction.generate_instruction_following_data(
            output_dir=str(out), seed_tasks_path=str(repo_dir / "seed_tasks.jsonl"), api_base=openai_server.url,
            temperature=-1.0, num_cpus=1)
    assert not out.exists()
    answers, reference = tmp_path / "a.json", tmp_path / "ref.json"
    answers.write_text(json.dumps([{"instruction": "Say hi.", "input": "", "output": "Hi."}]))
    reference.write_text(json.dumps([{"instruction": "Say hi.", "input": "", "output": "Hello."}]))
    with pytest.raises(errors.UserError, match="--request_timeout must be above 0, not 0"):
        judge.evaluate(model_outputs=str(answers), reference_outputs=str(reference), output_dir=str(tmp_path / "j"),
                       judge_model="m", api_base=openai_server.url, request_timeout=0.0, plot=False)
    assert not (tmp_path / "j").exists()
    with pytest.raises(SettingError, match="--requests_per_minute must be above 0, not -1"):
        inference.main(["--api_base", openai_server.url, "--model_name", "m", "--data_path", str(answers),
                        "--output_path", str(tmp_path / "o.json"), "--requests_per_minute", "-1"])
    assert not (tmp_path / "o.json").exists() and not openai_server.requests


def test_a_reply_longer_than_the_cap_is_refused(openai_server):
    openai_server.push(*[ok("word " * 400)] * 3)
    with pytest.raises(LLMError, match="the server's reply is longer than --max_response_bytes 1,000"):
        complete(openai_server.url, sleeps=[], max_response_bytes=1000)
    openai_server.push(ok("word " * 100))
    assert complete(openai_server.url, sleeps=[], max_response_bytes=1000)["choices"][0]["text"].startswith("word")


@pytest.mark.parametrize(("url", "why"), [
    ("localhost:8000/v1", "it must start with http:// or https://"),
    ("htp://localhost:8000/v1", "it must start with http:// or https://"),
    ("http://localhost:80a0/v1", "its port is not a number"),
    ("http:///v1", "it names no host"),
    ("http://localhost:8000/v1?x=1", "a base URL carries no query"),
    ("http://local host:8000/v1", "it is empty or holds a space"),
])
def test_malformed_base_urls_are_one_sentence(url, why):
    with pytest.raises(SettingError) as error:
        llm_client.check_settings("chat", "m", url)
    assert str(error.value).startswith(f"--api_base {url!r} is not a base URL: {why}")


def test_credentials_in_a_base_url_never_reach_a_message_or_log(openai_server, caplog):
    url = openai_server.url.replace("http://", "http://alice:s3cret@")
    with pytest.raises(SettingError) as error:
        llm_client.check_settings("chat", "m", url + "?x")
    assert "s3cret" not in str(error.value) and "http://***@127.0.0.1" in str(error.value)
    openai_server.push(*[server_error()] * 3)
    with caplog.at_level(logging.WARNING), pytest.raises(LLMError) as error:
        complete(url, sleeps=[], max_retries=2)
    assert "s3cret" not in str(error.value) and "alice" not in str(error.value)
    assert caplog.records and not any("s3cret" in r.getMessage() for r in caplog.records)
    assert "http://***@127.0.0.1" in str(error.value)


def test_the_cache_tells_endpoints_apart_and_holds_no_credentials(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key-123")
    cache = str(tmp_path / "cache")
    with OpenAIServer() as a, OpenAIServer() as b:
        a.push(ok("from A"))
        b.push(ok("from B"))
        assert complete(a.url, cache_dir=cache)["choices"][0]["text"] == "from A"
        replay = complete(a.url, cache_dir=cache)
        assert replay["cached"] and replay["choices"][0]["text"] == "from A"
        fresh = complete(b.url, cache_dir=cache)  # same model name and prompt, another server: asked, not replayed
        assert not fresh["cached"] and fresh["choices"][0]["text"] == "from B"
        assert len(a.requests) == 1 and len(b.requests) == 1
        with_password = complete(a.url.replace("http://", "http://bob:hunter2@"), cache_dir=cache)
        assert with_password["cached"] and with_password["choices"][0]["text"] == "from A"  # the same server
    stored = b"".join(p.read_bytes() for p in (tmp_path / "cache").rglob("*") if p.is_file())
    assert b"hunter2" not in stored and b"bob" not in stored


def test_hf_hub_offline_set_but_empty_is_not_reported_as_set(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    with pytest.raises(errors.MissingPathError) as error:
        utils.check_local_weights("org/not-there", cache_dir=str(tmp_path))
    assert "(TRANSFORMERS_OFFLINE is set)" in str(error.value) and "HF_HUB_OFFLINE" not in str(error.value)



# -- several servers behind one endpoint (issue 24) -------------------------------------------------------------


def gated_responder(server_of: dict, share: int):
    """A responder that holds the first requests until every server has `share` in flight (at most 5 s), so that
    the test sees each server's share filled, counted at the servers, without timing windows; later ones pass."""
    condition = threading.Condition()
    opened = threading.Event()

    def respond(path: str, prompt: str, body: dict):
        with condition:
            condition.notify_all()
            if condition.wait_for(lambda: opened.is_set() or all(s.in_flight >= share for s in server_of["all"]), 5):
                opened.set()
        return fake_tasks(prompt), "stop"

    return respond


def test_requests_go_to_the_least_busy_server_each_within_its_share(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key-123")
    prompts = [f"{i}. Instruction:" for i in range(40)]
    registry: dict = {}
    respond = gated_responder(registry, 2)  # one gate shared by the four servers
    servers = [OpenAIServer(responder=respond) for _ in range(4)]
    registry["all"] = servers
    with OpenAIServer() as alone:
        expected = utils.openai_completion(prompts, OpenAIDecodingArguments(max_tokens=5), model_name="m",
                                           return_text=True, api_base=alone.url, max_concurrency=8)
    with servers[0], servers[1], servers[2], servers[3]:
        texts = utils.openai_completion(prompts, OpenAIDecodingArguments(max_tokens=5), model_name="m",
                                        return_text=True, api_base=",".join(s.url for s in servers),
                                        max_concurrency=8)
        assert [s.max_in_flight for s in servers] == [2, 2, 2, 2]  # 8 in flight: each server its share, no more
        assert sum(len(s.requests) for s in servers) == 40 and all(s.requests for s in servers)
    assert texts == expected == [fake_tasks(p) for p in prompts]  # the same output as one server


def test_a_failing_server_is_backed_off_while_the_others_continue(monkeypatch, tmp_path):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key-123")
    prompts = [f"{i}. Instruction:" for i in range(20)]
    sleeps: list[float] = []

    async def run(url: str) -> list[str]:
        async def recorded_sleep(seconds: float) -> None:
            sleeps.append(seconds)

        async with LLMEndpoint(api_type="completions", model_name="m", api_base=url, max_concurrency=4) as endpoint:
            endpoint.sleep = recorded_sleep
            endpoint.fleet.clock = lambda: 1000.0  # frozen: a backed-off server stays backed off for the whole run
            results = await asyncio.gather(*(endpoint.complete([p], OpenAIDecodingArguments(max_tokens=5), f"r{i}")
                                             for i, p in enumerate(prompts)))
            return [r["choices"][0]["text"] for r in results]

    with OpenAIServer() as broken, OpenAIServer() as healthy:
        broken.push(*[server_error()] * 50)
        texts = asyncio.run(run(f"{broken.url},{healthy.url}"))
        assert len(broken.requests) == 2  # its share of the first requests; then backed off, never asked again
        assert len(healthy.requests) == 20
    assert texts == [fake_tasks(p) for p in prompts] and sleeps == []  # retried on the other server at once


def test_the_fleet_picks_by_requests_in_flight_and_backoff_on_an_injected_clock():
    now = [0.0]
    fleet = llm_client.Fleet(["http://a/v1", "http://u:p@b/v1"], max_concurrency=5, clock=lambda: now[0])
    a, b = fleet.servers
    assert (a.capacity, b.capacity) == (3, 2) and b.shown == "http://***@b/v1"
    assert fleet.pick(now[0]) is a
    a.in_flight = 1
    assert fleet.pick(now[0]) is b
    b.in_flight = 2  # full
    assert fleet.pick(now[0]) is a
    fleet.failed(a, 10.0)
    assert fleet.pick(now[0]) is None and fleet.wait_seconds(now[0]) == 10.0
    now[0] = 10.0
    assert fleet.pick(now[0]) is a
    fleet.failed(a, 4.0)  # backoff only ever grows while one is running
    fleet.failed(a, 1.0)
    assert a.healthy_after == 14.0 and a.failures == 3


def test_base_url_lists_and_files(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    assert llm_client.parse_api_bases("http://a:8000/v1/, http://b:8000/v1") == ["http://a:8000/v1", "http://b:8000/v1"]
    listing = tmp_path / "servers.txt"
    listing.write_text("# our vLLM servers\nhttp://gpu1:8000/v1\n\nhttp://gpu2:8000/v1\n")
    assert llm_client.parse_api_bases(f"@{listing}") == ["http://gpu1:8000/v1", "http://gpu2:8000/v1"]
    with pytest.raises(SettingError, match="names the server http://a:8000/v1 twice"):
        llm_client.parse_api_bases("http://a:8000/v1,http://u:p@a:8000/v1/")
    with pytest.raises(SettingError, match="'htp://b/v1' is not a base URL"):
        llm_client.parse_api_bases("http://a/v1,htp://b/v1")
    with pytest.raises(SettingError, match="cannot read the URL file"):
        llm_client.parse_api_bases(f"@{tmp_path / 'missing.txt'}")
    with pytest.raises(SettingError, match="names no base URL"):
        llm_client.parse_api_bases(" , ")


def test_a_cached_response_from_one_server_of_the_fleet_is_replayed(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key-123")
    cache = str(tmp_path / "cache")
    with OpenAIServer() as a, OpenAIServer() as b:
        a.push(ok("from A"))
        assert complete(a.url, cache_dir=cache)["choices"][0]["text"] == "from A"
        replay = complete(f"{b.url},{a.url}", cache_dir=cache)
        assert replay["cached"] and replay["choices"][0]["text"] == "from A" and not b.requests


# -- the response cache: one SQLite store ----------------------------------------------------------------------

WRITER = """
import sys
sys.path.insert(0, {repo!r})
from alpaca.llm import client as llm_client
store = llm_client.ResponseCache(sys.argv[1])
for i in range(int(sys.argv[3])):
    store.store(f"{{sys.argv[2]}}-{{i}}", {{"response": {{"text": "x" * 200, "i": i}}}})
store.close()
"""


def test_the_cache_store_takes_two_processes_writing_at_once(tmp_path, repo_dir):
    cache = str(tmp_path / "cache")
    code = WRITER.format(repo=str(repo_dir))
    writers = [subprocess.Popen([sys.executable, "-c", code, cache, name, "300"], stderr=subprocess.PIPE, text=True)
               for name in ("a", "b")]
    for writer in writers:
        assert writer.wait(timeout=120) == 0, writer.stderr.read()
    store = llm_client.ResponseCache(cache)
    assert len(store.records()) == 600 and store.load("a-299") == {"response": {"text": "x" * 200, "i": 299}}
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.close()
    assert sorted(os.listdir(cache))[0] == "responses.sqlite3"  # one store, not a file per response


def test_an_old_per_file_cache_is_not_used_and_said_once(openai_server, tmp_path, caplog):
    cache = tmp_path / "responses"
    cache.mkdir()
    request = llm_client.build_request("completions", "m", ["p"], OpenAIDecodingArguments(max_tokens=5))
    old_key = llm_client.cache_key("completions", request, "request 0/0")  # as earlier versions keyed it
    # one entry as earlier versions stored it: a file per response, named by its key
    (cache / f"{old_key}.json").write_text(json.dumps({"request": request, "response": good_body("stale")}))
    openai_server.push(ok("fresh"))
    with caplog.at_level(logging.WARNING, logger="llm_client"):
        assert complete(openai_server.url, cache_dir=str(cache))["choices"][0]["text"] == "fresh"
    (line,) = [r.getMessage() for r in caplog.records if "earlier versions" in r.getMessage()]
    assert f"{cache} holds 1 responses in the one-file-per-response cache" in line and "not used" in line


def test_each_run_ends_with_the_cache_size_and_data_tools_clears_it(openai_server, tmp_path, capsys):
    from alpaca.data import tools as data_tools

    cache = tmp_path / "responses"
    openai_server.push(ok("first"))
    complete(openai_server.url, cache_dir=str(cache))
    assert f"response cache {cache}/responses.sqlite3: 1 responses" in capsys.readouterr().err
    assert complete(openai_server.url, cache_dir=str(cache))["cached"]
    data_tools.cache(str(cache))
    assert "1 responses" in capsys.readouterr().out
    data_tools.cache(str(cache), clear=True)
    assert not (cache / "responses.sqlite3").exists()
    openai_server.push(ok("asked again"))
    assert complete(openai_server.url, cache_dir=str(cache))["choices"][0]["text"] == "asked again"
    with pytest.raises(errors.MissingPathError, match="no cache directory"):
        data_tools.cache(str(tmp_path / "nowhere"))


# -- the plain HTTP client and the openai one ---------------------------------------------------------------


def test_plain_http_reads_chunked_bodies_and_survives_connections_closed_while_idle(openai_server, caplog):
    text = "chunked " * 60
    openai_server.push(Reply(texts=[text], chunked=True, close_after=True), ok("after the close"),
                       Reply(texts=["x" * 3000], chunked=True))

    async def run() -> list[str]:
        async with LLMEndpoint(api_type="completions", model_name="m", api_base=openai_server.url,
                               max_response_bytes=2000) as endpoint:
            assert endpoint.fleet.servers[0].pool is not None  # plain HTTP, not the openai client
            first = await endpoint.complete(["p"], OpenAIDecodingArguments(max_tokens=5), "a")
            second = await endpoint.complete(["p"], OpenAIDecodingArguments(max_tokens=5), "b")
            return [first["choices"][0]["text"], second["choices"][0]["text"]]

    with caplog.at_level(logging.WARNING, logger="llm_client"):
        assert asyncio.run(run()) == [text, "after the close"]
    assert not caplog.records  # the connection closed while idle was replaced without a retry
    with pytest.raises(LLMError, match="longer than --max_response_bytes 2,000"):  # chunked: counted as it comes
        complete(openai_server.url, sleeps=[], max_response_bytes=2000)


def test_credentials_in_the_url_are_sent_as_basic_auth(openai_server):
    url = openai_server.url.replace("http://", "http://alice:s%40cret@")
    openai_server.push(ok("hi"))
    complete(url)
    assert openai_server.requests[0]["headers"]["authorization"] == "Basic YWxpY2U6c0BjcmV0"  # alice:s@cret


@pytest.mark.parametrize("use_openai_client", [False, True])
def test_both_transports_sort_errors_alike(openai_server, monkeypatch, use_openai_client):
    monkeypatch.setattr(llm_client, "USE_OPENAI_CLIENT", use_openai_client)
    openai_server.push(rate_limited(retry_after=0.01), server_error(), ok("fine"))
    sleeps: list[float] = []
    assert complete(openai_server.url, sleeps=sleeps)["choices"][0]["text"] == "fine" and len(sleeps) == 2
    from alpaca.testing.openai_server import auth_error, model_not_found

    openai_server.push(auth_error())
    with pytest.raises(LLMError, match="refused the API key .*Error code: 401"):
        complete(openai_server.url, sleeps=[])
    openai_server.push(model_not_found("m"))
    with pytest.raises(LLMError, match="does not know the model 'm'"):
        complete(openai_server.url, sleeps=[])
    openai_server.push(*[ok("word " * 400)] * 3)
    with pytest.raises(LLMError, match="longer than --max_response_bytes 1,000"):
        complete(openai_server.url, sleeps=[], max_response_bytes=1000)
    with pytest.raises(LLMError, match="Could not reach the endpoint http://127.0.0.1:9/v1"):
        complete("http://127.0.0.1:9/v1", sleeps=[])


def test_a_server_behind_a_proxy_goes_through_the_openai_client(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key-123")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    assert llm_client.behind_proxy("https://api.example.com/v1")
    assert not llm_client.behind_proxy("http://api.example.com/v1") and not llm_client.behind_proxy(
        "https://localhost:8000/v1")

    async def run():
        async with LLMEndpoint(api_base="https://api.example.com/v1,https://localhost:8000/v1") as endpoint:
            return [(s.pool is None, s.client is not None) for s in endpoint.fleet.servers]

    assert asyncio.run(run()) == [(True, True), (False, False)]


def test_plain_http_speaks_tls_and_checks_the_certificate(openai_server, tmp_path, monkeypatch):
    import shutil
    import ssl

    if shutil.which("openssl") is None:
        pytest.skip("no openssl command to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    with OpenAIServer() as server:
        server._httpd.socket = context.wrap_socket(server._httpd.socket, server_side=True)
        url = server.url.replace("http://", "https://")
        with pytest.raises(LLMError, match="CERTIFICATE_VERIFY_FAILED"):  # not trusted: refused, never sent
            complete(url, sleeps=[], max_retries=1)
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # now trusted
        server.push(ok("over TLS"))
        assert complete(url)["choices"][0]["text"] == "over TLS"
        assert [r["json"]["prompt"] for r in server.requests] == [["p"]]


def test_a_cancelled_request_gives_its_server_slot_back(openai_server):
    openai_server.push(ok("late", delay=2.0))

    async def run() -> int:
        async with LLMEndpoint(api_type="completions", model_name="m",
                               api_base=f"{openai_server.url},{openai_server.url.replace('127.0.0.1', 'localhost')}",
                               max_concurrency=2) as endpoint:
            task = asyncio.create_task(endpoint.complete(["p"], OpenAIDecodingArguments(max_tokens=5), "r"))
            while sum(s.in_flight for s in endpoint.fleet.servers) == 0:
                await asyncio.sleep(0.01)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return sum(s.in_flight for s in endpoint.fleet.servers)

    assert asyncio.run(run()) == 0
