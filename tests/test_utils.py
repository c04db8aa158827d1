"""utils.py, llm_client.py, local_llm.py: JSON helpers and the LLM client, through the real openai client over HTTP."""

import asyncio
import io
import json
import pathlib
import subprocess
import sys
import time

import pytest

import utils
from alpaca.llm import client as llm_client
from alpaca.llm import local as local_llm
from alpaca.llm.client import LLMError, RateLimiter
from alpaca.testing.openai_server import (
    Reply,
    auth_error,
    context_length_error,
    fake_tasks,
    malformed,
    model_not_found,
    ok,
    rate_limited,
    server_error,
)

FAST = {"sleep_time": 0.001}  # first backoff of openai_completion, in seconds: keeps the retry tests fast


def args(**kwargs) -> utils.OpenAIDecodingArguments:
    return utils.OpenAIDecodingArguments(**{"max_tokens": 50, **kwargs})


def test_jdump_creates_parent_dir_and_round_trips(tmp_path):
    path = tmp_path / "a" / "b" / "data.json"
    data = [{"instruction": "Say hi.", "input": "", "output": "Hi!", "score": 0.5}]
    utils.jdump(data, str(path))
    assert utils.jload(str(path)) == data
    assert path.read_text().startswith("[\n    {")  # the original's indent=4
    buffer = io.StringIO('{"a": 1}')
    assert utils.jload(buffer) == {"a": 1}
    with pytest.raises(ValueError, match="dict, a list or a str"):
        utils.jdump(3, str(tmp_path / "x.json"))


def test_completions_batches_prompts_in_order(openai_server):
    openai_server.push(ok("one", "two"), ok("three", finish_reason="length"))
    choices = utils.openai_completion(["p1", "p2", "p3"], args(stop=["\n20"]), model_name="m", batch_size=2,
                                      api_base=openai_server.url)
    assert [c["text"] for c in choices] == ["one", "two", "three"]
    assert [c["finish_reason"] for c in choices] == ["stop", "stop", "length"]
    assert choices[0]["usage"]["total_tokens"] == choices[0]["total_tokens"] > 0
    bodies = openai_server.bodies("/completions")
    assert [b["prompt"] for b in bodies] == [["p1", "p2"], ["p3"]]
    assert bodies[0]["stop"] == ["\n20"] and bodies[0]["max_tokens"] == 50 and bodies[0]["model"] == "m"
    assert "logit_bias" not in bodies[0] and "presence_penalty" not in bodies[0]  # sent only when set
    assert openai_server.requests[0]["headers"]["authorization"] == "Bearer sk-test-key-123"


def test_single_prompt_return_text_and_n(openai_server):
    openai_server.push(ok("only"), ok("a", "b"))
    assert utils.openai_completion("p", args(), model_name="m", return_text=True, api_base=openai_server.url) == "only"
    nested = utils.openai_completion(["p"], args(n=2), model_name="m", return_text=True, api_base=openai_server.url)
    assert nested == [["a", "b"]]


def test_chat_endpoint_sends_one_user_message_per_prompt(openai_server, monkeypatch):
    monkeypatch.setenv("OPENAI_ORG", "org-test")
    openai_server.push(ok("first"), ok("second"))
    texts = utils.openai_completion(["p1", "p2"], args(), model_name="m", batch_size=2, return_text=True,
                                    api_type="chat", api_base=openai_server.url)
    assert texts == ["first", "second"]
    bodies = openai_server.bodies("/chat/completions")
    assert [b["messages"] for b in bodies] == [[{"role": "user", "content": "p1"}], [{"role": "user", "content": "p2"}]]
    assert openai_server.requests[0]["headers"]["openai-organization"] == "org-test"


@pytest.mark.slow
def test_rate_limit_then_success_honours_retry_after(openai_server):
    openai_server.push(rate_limited(retry_after=0.4), ok("done"))
    start = time.monotonic()
    assert utils.openai_completion("p", args(), model_name="m", return_text=True, api_base=openai_server.url,
                                   **FAST) == "done"
    assert len(openai_server.requests) == 2
    gap = openai_server.requests[1]["time"] - openai_server.requests[0]["time"]
    assert gap >= 0.4 and time.monotonic() - start >= 0.4  # waited what the server asked, not the 1 ms backoff


@pytest.mark.parametrize("failure", [server_error, malformed], ids=["500", "malformed-body"])
def test_transient_failure_then_success(openai_server, failure):
    openai_server.push(failure(), failure(), ok("fine"))
    assert utils.openai_completion("p", args(), model_name="m", return_text=True, api_base=openai_server.url,
                                   **FAST) == "fine"
    assert len(openai_server.requests) == 3


def test_timeout_is_retried(openai_server):
    openai_server.push(ok("too late", delay=1.5), ok("in time"))
    text = utils.openai_completion("p", args(), model_name="m", return_text=True, api_base=openai_server.url,
                                   request_timeout=0.3, **FAST)
    assert text == "in time" and len(openai_server.requests) == 2


def test_retries_run_out_with_a_clear_error(openai_server):
    openai_server.push(*[server_error()] * 3)
    with pytest.raises(LLMError, match="Gave up after 3 attempts .* re-run the same command to resume"):
        utils.openai_completion("p", args(), model_name="m", api_base=openai_server.url, max_retries=2, **FAST)
    assert len(openai_server.requests) == 3


@pytest.mark.parametrize("style", ["openai", "vllm"])
def test_context_length_error_shrinks_max_tokens_by_20_percent(openai_server, style):
    openai_server.push(context_length_error(style=style), context_length_error(style=style), ok("fits"))
    assert utils.openai_completion("p", args(max_tokens=3072), model_name="m", return_text=True,
                                   api_base=openai_server.url) == "fits"
    assert [b["max_tokens"] for b in openai_server.bodies()] == [3072, 2457, 1965]  # int(x * 0.8), as the original


def test_every_request_shrinks_max_tokens_on_its_own(openai_server):
    """As in the original: a shrink does not carry over, so which requests get a smaller budget never depends on
    the timing of concurrent requests, and a request that fits keeps the full max_tokens."""
    openai_server.max_context = 2000  # the fake server counts prompt words + max_tokens
    texts = utils.openai_completion(["a b c", "d e f"], args(max_tokens=3072), model_name="m", return_text=True,
                                    api_base=openai_server.url)
    assert len(texts) == 2
    sent = [b["max_tokens"] for b in openai_server.bodies()]
    assert sent == [3072, 2457, 1965, 3072, 2457, 1965]


@pytest.mark.parametrize("reply,message", [
    (auth_error(), "refused the API key .*set OPENAI_API_KEY"),
    (model_not_found("gpt-9"), "does not know the model 'gpt-9'.*check --model_name"),
])
def test_fatal_errors_stop_at_once(openai_server, reply, message):
    openai_server.push(reply)
    with pytest.raises(LLMError, match=message):
        utils.openai_completion("p", args(), model_name="gpt-9", api_base=openai_server.url, **FAST)
    assert len(openai_server.requests) == 1


def test_unreachable_endpoint_says_so(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    with pytest.raises(LLMError, match="Could not reach the endpoint http://127.0.0.1:9/v1"):
        utils.openai_completion("p", args(), model_name="m", api_base="http://127.0.0.1:9/v1", **FAST)


def test_missing_key_for_openai_is_one_sentence(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(LLMError, match="OPENAI_API_KEY is not set"):
        utils.openai_completion("p", args(), model_name="m")


def test_self_hosted_server_needs_no_key(openai_server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.setenv("OPENAI_BASE_URL", openai_server.url)  # the environment variable works like --api_base
    openai_server.push(ok("hi"))
    assert utils.openai_completion("p", args(), model_name="m", return_text=True) == "hi"


def cached_records(cache_dir) -> list[str]:
    """The JSON records in a response cache, as stored."""
    store = llm_client.ResponseCache(str(cache_dir))
    try:
        return store.records()
    finally:
        store.close()


def test_cache_stores_request_and_raw_response_and_replays(openai_server, tmp_path):
    cache = str(tmp_path / "responses")
    openai_server.push(ok("cached text"))
    first = utils.openai_completion("p", args(), model_name="m", api_base=openai_server.url, cache_dir=cache)
    (row,) = cached_records(cache)
    record = json.loads(row)
    assert record["request"]["prompt"] == ["p"] and record["response"]["choices"][0]["text"] == "cached text"
    assert "sk-test-key-123" not in row
    second = utils.openai_completion("p", args(), model_name="m", api_base=openai_server.url, cache_dir=cache)
    assert second == first and len(openai_server.requests) == 1
    openai_server.push(ok("new"))  # another setting is another request
    assert utils.openai_completion("p", args(temperature=0.9), model_name="m", return_text=True,
                                   api_base=openai_server.url, cache_dir=cache) == "new"


@pytest.mark.slow
def test_concurrency_keeps_order_and_limit(openai_server):
    openai_server.delay = 0.2
    start = time.monotonic()
    prompts = [f"{i}. Instruction:" for i in range(8)]
    texts = utils.openai_completion(prompts, args(), model_name="m", return_text=True, api_base=openai_server.url,
                                    max_concurrency=4)
    elapsed = time.monotonic() - start
    assert texts == [fake_tasks(p) for p in prompts]  # each answer in its prompt's place
    assert 0.35 < elapsed < 1.2  # 8 requests of 0.2 s, 4 at a time: ~0.4 s, not 1.6 s


def test_rate_limiter_waits_for_the_budget():
    async def run() -> float:
        limiter = RateLimiter(per_minute=600)  # 10 per second
        await limiter.acquire(600)  # the whole minute's budget at once
        start = time.monotonic()
        await limiter.acquire(3)  # must wait for 3 units to refill: 0.3 s
        return time.monotonic() - start

    assert 0.25 < asyncio.run(run()) < 0.6


@pytest.mark.slow
def test_requests_per_minute_spaces_requests(openai_server):
    texts = utils.openai_completion(["a", "b", "c"], args(), model_name="m", return_text=True,
                                    api_base=openai_server.url, max_concurrency=3)
    assert len(texts) == 3

    async def run():
        # one request every 0.5 s once the burst is spent
        endpoint = llm_client.LLMEndpoint(api_type="completions", model_name="m", api_base=openai_server.url,
                                          max_concurrency=3, requests_per_minute=120)
        endpoint.request_limiter.level = 0  # start with an empty bucket
        async with endpoint:
            await asyncio.gather(*(endpoint.complete([p], args(), tag=p) for p in "xyz"))

    asyncio.run(run())
    times = sorted(r["time"] for r in openai_server.requests[3:])
    assert times[2] - times[0] > 0.9


def test_backoff_grows_with_jitter_and_respects_retry_after():
    delays = [llm_client.backoff_seconds(a, base=1.0, cap=8.0) for a in range(6)]
    assert 0.5 <= delays[0] < 1.0 and 2.0 <= delays[2] < 4.0 and 4.0 <= delays[5] < 8.0
    assert llm_client.backoff_seconds(0, base=1.0, cap=8.0, retry_after=5.0) == 5.0


def test_local_backend_cuts_at_stop_strings(tiny_model_dir):
    model = local_llm.LocalCausalLM(str(tiny_model_dir))
    greedy = {"prompt": ["1. Instruction: Describe a river.\n1. Input:", "Hello"], "max_tokens": 24,
              "temperature": 0.0}
    free = model.generate(greedy, seed=0)
    assert [c["finish_reason"] for c in free["choices"]] == ["length", "length"]
    assert free["usage"]["completion_tokens"] == 48 and free["usage"]["prompt_tokens"] > 0
    text = free["choices"][0]["text"]
    stop = text.strip()[3:6]  # a string the greedy continuation is known to contain
    cut = model.generate({**greedy, "stop": [stop]}, seed=0)["choices"][0]
    assert cut["finish_reason"] == "stop" and cut["text"] == text[:text.find(stop)]
    sampled = {**greedy, "temperature": 1.0, "top_p": 0.9}
    assert model.generate(sampled, seed=7) == model.generate(sampled, seed=7)  # the seed fixes the sample
    with pytest.raises(LLMError, match="more than the local model's context"):
        model.generate({"prompt": ["word " * 5000], "max_tokens": 4}, seed=0)


def test_local_backend_context_is_the_models_not_the_training_truncation(tiny_model_dir, tmp_path):
    # train.py saves its --model_max_length (e.g. 256) in the tokenizer; the Self-Instruct prompt is longer
    # than that, and the model (4096 positions) can still read it.
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir, model_max_length=256)
    tokenizer.save_pretrained(tmp_path)
    for name in ("config.json", "model.safetensors"):
        (tmp_path / name).write_bytes((tiny_model_dir / name).read_bytes())
    model = local_llm.LocalCausalLM(str(tmp_path))
    assert model.context == 4096
    reply = model.generate({"prompt": ["word " * 600], "max_tokens": 2, "temperature": 0.0}, seed=0)
    assert reply["usage"]["prompt_tokens"] > 256


def test_load_records_reads_json_lists_and_jsonl_and_names_bad_lines(tmp_path):
    records = [{"instruction": "a", "input": "", "output": "b"}, {"instruction": "c", "output": "d"}]
    (tmp_path / "list.json").write_text(json.dumps(records, indent=4))
    (tmp_path / "lines.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    assert utils.load_records(str(tmp_path / "list.json")) == records
    assert utils.load_records(str(tmp_path / "lines.jsonl")) == records
    (tmp_path / "object.json").write_text('{"instruction": "a"}')
    (tmp_path / "bad.jsonl").write_text('{"instruction": "a"}\n{"instruction": \n')
    (tmp_path / "bad.json").write_text('[{"instruction": "a"},\n {"instruction": }]')
    # A .json file holding one object is said to be one (issue 11, item 14); a broken line or list is named by its line.
    with pytest.raises(ValueError, match=r"object\.json holds a single JSON object \(keys: instruction\); expected a "
                                         r"JSON list"):
        utils.load_records(str(tmp_path / "object.json"))
    with pytest.raises(ValueError, match=r"bad\.jsonl, line 2: not valid JSON"):
        utils.load_records(str(tmp_path / "bad.jsonl"))
    with pytest.raises(ValueError, match=r"bad\.json is not valid JSON \(line 2"):
        utils.load_records(str(tmp_path / "bad.json"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        utils.load_records(str(tmp_path / "missing.json"))


@pytest.mark.slow
def test_json_readers_do_not_import_the_llm_client():
    # train.py and inference.py read data through utils; the openai import (~1 s) is only for generation.
    code = "import sys, utils, train, inference; assert 'openai' not in sys.modules; utils.LLMError; " \
           "assert 'openai' in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=pathlib.Path(__file__).parent.parent)


@pytest.mark.slow
def test_the_llm_client_does_not_import_torch():
    # The local backend (torch, transformers: seconds to import) is loaded only for api_type "local".
    code = "import sys, generate_instruction; assert not {'alpaca.llm.local', 'torch', 'transformers'} & " \
           "set(sys.modules), sorted({'alpaca.llm.local', 'torch', 'transformers'} & set(sys.modules))"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=pathlib.Path(__file__).parent.parent)


# -- hardening: malformed 200s, whole-request timeouts, servers that take one prompt per request ---------------


def good_body(text: str) -> dict:
    return {"id": "cmpl-x", "object": "text_completion", "model": "m",
            "choices": [{"index": 0, "text": text, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


MALFORMED_BODIES = {
    "usage-string": ({**good_body("x"), "usage": {"prompt_tokens": "many", "completion_tokens": 1}},
                     "usage.prompt_tokens is 'many', not a number"),
    "text-number": ({**good_body("x"), "choices": [{"index": 0, "text": 42, "finish_reason": "stop"}]},
                    "a choice whose text is 42, not a string"),
    "choices-object": ({**good_body("x"), "choices": {"text": "x"}}, "'choices' is a dict, not a list"),
    "no-choices": ({**good_body("x"), "choices": []}, "no choices for 1 expected"),
}


@pytest.mark.parametrize("name", list(MALFORMED_BODIES))
def test_a_malformed_200_is_retried_and_never_cached(openai_server, tmp_path, name):
    body, _ = MALFORMED_BODIES[name]
    openai_server.push(Reply(body=body), ok("fine"))
    cache = tmp_path / "responses"
    assert utils.openai_completion("p", args(), model_name="m", return_text=True, api_base=openai_server.url,
                                   cache_dir=str(cache), **FAST) == "fine"
    assert len(openai_server.requests) == 2
    (entry,) = cached_records(cache)
    assert json.loads(entry)["response"]["choices"][0]["text"] == "fine"


@pytest.mark.parametrize("name", list(MALFORMED_BODIES))
def test_malformed_200s_end_in_one_sentence_saying_what_was_wrong(openai_server, tmp_path, name):
    body, problem = MALFORMED_BODIES[name]
    openai_server.push(*[Reply(body=body)] * 3)
    with pytest.raises(LLMError, match="Gave up after 3 attempts") as error:
        utils.openai_completion("p", args(), model_name="m", api_base=openai_server.url, max_retries=2,
                                cache_dir=str(tmp_path / "responses"), **FAST)
    assert f"malformed response ({problem})" in str(error.value)
    assert cached_records(tmp_path / "responses") == []  # nothing was cached, so a re-run asks again


def test_a_non_json_200_is_reported_as_such_not_as_unreachable(openai_server):
    openai_server.push(*[malformed()] * 3)
    with pytest.raises(LLMError) as error:
        utils.openai_completion("p", args(), model_name="m", api_base=openai_server.url, max_retries=2, **FAST)
    assert "a body that is not JSON ('{\"id\": \"cmpl-broken\"" in str(error.value)
    assert "Could not reach" not in str(error.value)


def test_a_malformed_response_in_an_old_cache_is_asked_again(openai_server, tmp_path):
    cache = tmp_path / "responses"
    request = llm_client.build_request("completions", "m", ["p"], args())
    key = llm_client.cache_key("completions", request, "request 0/0", openai_server.url)
    store = llm_client.ResponseCache(str(cache))
    store.store(key, {"request": request, "response": MALFORMED_BODIES["usage-string"][0]})
    store.close()
    openai_server.push(ok("fresh"))
    assert utils.openai_completion("p", args(), model_name="m", return_text=True, api_base=openai_server.url,
                                   cache_dir=str(cache)) == "fresh"
    assert len(openai_server.requests) == 1


@pytest.mark.slow
def test_request_timeout_bounds_a_trickling_body(openai_server):
    body = json.dumps(good_body("too late"))  # ~200 bytes at 20 ms each: 4 s, but every read gets a byte in time
    openai_server.push(Reply(raw=body, trickle=0.02), ok("in time"))
    start = time.monotonic()
    text = utils.openai_completion("p", args(), model_name="m", return_text=True, api_base=openai_server.url,
                                   request_timeout=0.5, **FAST)
    assert text == "in time" and len(openai_server.requests) == 2
    assert time.monotonic() - start < 3.0


@pytest.mark.parametrize("server", ["llama.cpp", "transformers"])
def test_a_server_refusing_prompt_lists_gets_one_prompt_per_request(openai_server, server, caplog):
    openai_server.reject_prompt_lists = server
    prompts = [f"{i}. Instruction:" for i in range(6)]
    texts = utils.openai_completion(prompts, args(), model_name="m", batch_size=3, return_text=True,
                                    api_base=openai_server.url, max_concurrency=2, **FAST)
    assert texts == [fake_tasks(p) for p in prompts]
    sent = [b["prompt"] for b in openai_server.bodies()]
    lists = [p for p in sent if isinstance(p, list)]
    assert 1 <= len(lists) <= 2 and all(len(p) == 3 for p in lists)  # only the first batches in flight tried a list
    assert sorted(p for p in sent if isinstance(p, str)) == sorted(prompts)  # then each prompt alone, as a string
    refusals = [r.getMessage() for r in caplog.records if "refused a list of 3 prompts" in r.getMessage()]
    switches = [r.getMessage() for r in caplog.records if "sending one prompt per request" in r.getMessage()]
    assert len(refusals) == 1 and len(switches) == 1  # said once, however many requests were in flight
