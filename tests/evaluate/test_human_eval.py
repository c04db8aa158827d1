"""Blind human evaluation (`judge.py human`, human_eval.py): the annotation file, the agreement statistics on
hand-made files with hand-computed kappas, the HTTP API, and the page itself in a real browser (Playwright driving
Debian's chromium; those tests are skipped, saying so, where no browser is installed)."""

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from alpaca import errors
from alpaca.evaluate import command as judge_command
from alpaca.evaluate import human as human_eval
from alpaca.evaluate import win_rates

REPO = pathlib.Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
MODEL, REFERENCE = "zebra-model-7b", "okapi-reference-3"  # names that must never reach the browser
UNSAFE = 'Use <b>bold</b>.\n<script>window.__pwned = "script"</script>\n<img src=x onerror="window.__pwned = \'img\'">'

# (instruction, input, category, model answer, reference answer); the third is the screenshot's
PAIRS = [
    ("Rewrite the sentence in the passive voice.", "The committee approved the new budget on Friday.", "rewriting",
     "The new budget was approved by the committee on Friday.",
     "On Friday, the new budget was approved\nby the committee.\n\n(Passive voice: the object becomes the subject.)"),
    ("Show how to make text bold in HTML, with an example.", "", "coding", UNSAFE,
     "Wrap the text in <strong> tags, e.g. <strong>important</strong>."),
    ("Give three tips to a student who keeps getting distracted.", "I study at home in the evenings, and I check "
     "my phone every few minutes.", "advice",
     "1. Put your phone in another room while you study; check it only in your breaks.\n2. Work in 25-minute "
     "blocks with a 5-minute break after each.\n3. Before you start, write down what you will finish tonight.",
     "Turn off notifications, take regular breaks and keep a glass of water nearby. Studying at the same time every "
     "evening also helps the habit stick."),
    ("What is 15% of 240?", "", "math", "36", "15% of 240 is 0.15 x 240 = 36."),
    ("Classify the animal as a mammal, bird or reptile.", "penguin", "classification", "Bird.", "Mammal."),
    ("Name the capital of Australia.", "", "open_qa", "Canberra.", "Canberra."),  # identical: a tie, never shown
]


def write_answer_files(directory: pathlib.Path, pairs=PAIRS) -> tuple[str, str]:
    directory.mkdir(parents=True, exist_ok=True)
    model_path, reference_path = directory / "secret_model_answers.json", directory / "secret_reference_answers.json"
    for path, generator, column in ((model_path, MODEL, 3), (reference_path, REFERENCE, 4)):
        path.write_text(json.dumps([{"instruction": p[0], "input": p[1], "category": p[2], "output": p[column],
                                     "generator": generator} for p in pairs]))
    return str(model_path), str(reference_path)


def read_lines(path) -> list[dict]:
    return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines()]


# -- the annotation file -------------------------------------------------------------------------------------


def test_undo_takes_back_the_latest_standing_verdict_per_annotator():
    def verdict(annotator, key, value):
        return {"annotator": annotator, "pair_key": key, "verdict": value}

    records = [verdict("alice", "k1", "model"), verdict("bob", "k1", "tie"), verdict("alice", "k2", "skip"),
               {"annotator": "alice", "undo": True}, {"annotator": "alice", "undo": True},
               verdict("alice", "k1", "reference"), {"annotator": "bob", "undo": True},
               {"annotator": "bob", "undo": True}]  # one undo too many: nothing left to take back
    stacks = human_eval.standing_verdicts(records)
    assert [r["verdict"] for r in stacks["alice"]] == ["reference"]
    assert stacks["bob"] == []


def test_a_half_written_last_line_is_ignored_then_cut_before_the_next_append(tmp_path):
    path = tmp_path / human_eval.ANNOTATIONS_NAME
    path.write_text('{"annotator": "alice", "verdict": "tie", "pair_key": "k"}\n{"annotator": "al')
    assert len(human_eval.read_annotations(str(path))) == 1
    human_eval.append_annotation(str(path), {"annotator": "bob", "verdict": "model", "pair_key": "k"})
    assert [r["annotator"] for r in read_lines(path)] == ["alice", "bob"]


def test_a_directory_holding_another_comparison_is_refused(tmp_path):
    model, reference = write_answer_files(tmp_path / "files")
    human_eval.prepare_pairs(model, reference, str(tmp_path / "out"))
    changed = [PAIRS[0][:3] + ("A better answer.",) + PAIRS[0][4:], *PAIRS[1:]]
    other_model, _ = write_answer_files(tmp_path / "changed", changed)
    with pytest.raises(errors.DataError, match="another comparison.*new --output_dir"):
        human_eval.prepare_pairs(other_model, reference, str(tmp_path / "out"))


def test_conversation_pairs_are_refused_in_one_sentence_and_the_judges_conversation_lines_skipped(tmp_path):
    model, reference = write_answer_files(tmp_path / "files")
    conversation = {"messages": [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello."},
                                 {"role": "user", "content": "Name a colour."}], "category": "chat"}
    for path, generator in ((model, MODEL), (reference, REFERENCE)):
        records = json.loads(pathlib.Path(path).read_text())
        pathlib.Path(path).write_text(json.dumps([*records, {**conversation, "output": generator,
                                                             "generator": generator}]))
    with pytest.raises(errors.DataError, match=r"holds 1 conversation\(s\), and the annotation page shows "
                                               r"single-turn instructions only"):
        judge_command.main(["human", "--model_outputs", model, "--reference_outputs", reference, "--output_dir",
                            str(tmp_path / "out"), "--annotator", "alice"])
    assert not (tmp_path / "out").exists()

    # human_results beside a judge run on a file with conversations: their lines match no person's pair
    pairs = human_eval.prepare_pairs(*write_answer_files(tmp_path / "alpaca"), str(tmp_path / "human"))
    shown = {"model": MODEL, "reference": REFERENCE, "shown_first": MODEL, "verdict": "A"}
    (tmp_path / "human" / "annotations.jsonl").write_text("".join(json.dumps(line) + "\n" for line in (
        {**shown, "messages": conversation["messages"]},
        {**shown, "instruction": pairs[0]["instruction"], "input": pairs[0]["input"]})))
    assert human_eval.judge_preferences(str(tmp_path / "human"), pairs)[:2] == [1.0, None]


def test_help_and_bad_flags(tmp_path, capsys):
    judge_command.main(["human", "--help"])
    helped = capsys.readouterr().out
    assert all(f"--{flag}" in helped for flag in ("model_outputs", "reference_outputs", "output_dir", "annotator",
                                                  "host", "port", "seed"))
    model, reference = write_answer_files(tmp_path)
    common = ["human", "--model_outputs", model, "--reference_outputs", reference, "--output_dir", str(tmp_path / "o")]
    with pytest.raises(errors.UsageError, match="--annotator must be a name of 1 to 64 printable"):
        judge_command.main([*common, "--annotator", "  "])
    with pytest.raises(errors.UsageError, match="--port must be between 0 and 65535"):
        judge_command.main([*common, "--annotator", "alice", "--port", "70000"])
    with pytest.raises(errors.UserError, match="cannot listen on 192.0.2.1:0.*--host"):
        judge_command.main([*common, "--annotator", "alice", "--host", "192.0.2.1"])  # an address this machine lacks


# -- agreement statistics on hand-made files ---------------------------------------------------------------


@pytest.mark.slow
def test_agreement_and_results_on_hand_made_files_with_known_kappa(tmp_path, capsys):
    """Ten pairs plus one with identical answers. Verdicts (M model better, R reference better, T tie):

        pair   0 1 2 3 4 5 6 7 8 9
        alice  M M M R R R T M M skip   (pair 2 first R, undone, then M)
        bob    M R M R M R              (a verdict on pair 6, undone)
        judge  M M R R R M T M - M      (swap mode; pair 6: the two orders disagree; pair 8: unjudged)

    alice vs judge, pairs 0-7: 6 of 8 agree; marginals M 4/4, R 3/3, T 1/1: p_e = 26/64, kappa = 11/19.
    alice vs bob, pairs 0-5: 4 of 6 agree; marginals M 3/3, R 3/3: p_e = 1/2, kappa = 1/3.
    bob vs judge, pairs 0-5: 2 of 6 agree; kappa = (1/3 - 1/2) / (1/2) = -1/3.
    """
    pairs = [(f"Instruction {i}.", "", ["writing", "math"][i % 2], f"model answer {i}", f"reference answer {i}")
             for i in range(10)] + [("Instruction 10.", "", "math", "same", "same")]
    model, reference = write_answer_files(tmp_path / "files", pairs)
    out = tmp_path / "out"
    stored = human_eval.prepare_pairs(model, reference, str(out))
    preference = {"M": "model", "R": "reference", "T": "tie", "S": "skip"}

    def verdict(annotator: str, index: int, letter: str) -> dict:
        pair = stored[index]
        return {"annotator": annotator, "instruction": pair["instruction"], "input": "", "verdict": preference[letter],
                "pair_key": pair["key"]}

    undo = {"undo": True}
    lines = [verdict("alice", i, v) for i, v in enumerate("MMR")] + [{"annotator": "alice", **undo}]
    lines += [verdict("alice", i, v) for i, v in enumerate("MMMRRRTMMS") if i >= 2]
    lines += [verdict("bob", i, v) for i, v in enumerate("MRMRMRM")] + [{"annotator": "bob", **undo}]
    (out / human_eval.ANNOTATIONS_NAME).write_text("".join(json.dumps(line) + "\n" for line in lines))

    def judge_lines(index: int, first: str, second: str | None, model_name: str = MODEL) -> list[dict]:
        """judge.py's annotations.jsonl lines of one pair: the verdict with the model shown first, then second."""
        base = {"instruction": f"Instruction {index}.", "input": "", "model": model_name, "reference": REFERENCE}
        return [{**base, "shown_first": model_name, "shown_second": REFERENCE, "verdict": first},
                {**base, "shown_first": REFERENCE, "shown_second": model_name, "verdict": second}]

    in_ab = {"M": ("A", "B"), "R": ("B", "A"), "T": ("A", "A"), "-": ("A", None)}
    annotations = [line for i, v in enumerate("MMRRRMTM-M") for line in judge_lines(i, *in_ab[v])]
    annotations += [{"instruction": "Instruction 10.", "input": "", "model": MODEL, "reference": REFERENCE,
                     "shown_first": MODEL, "shown_second": REFERENCE, "verdict": "TIE", "raw_reply": None}]
    annotations += [line for i in range(10) for line in judge_lines(i, "B", "A", "another-model")]  # not ours
    (out / "annotations.jsonl").write_text("".join(json.dumps(line) + "\n" for line in annotations))
    (out / "results.json").write_text(json.dumps({MODEL: {"judge_model": "judge-x", "judge_mode": "swap"}}))

    results = human_eval.human_results(str(out), plot=True)

    agreement = results["agreement"]
    assert agreement["with_judge"]["alice"] == {"n": 8, "agreement": 0.75, "kappa": round(11 / 19, 4)}
    assert agreement["with_judge"]["bob"] == {"n": 6, "agreement": round(2 / 6, 4), "kappa": round(-1 / 3, 4)}
    assert agreement["between_annotators"] == [{"annotators": ["alice", "bob"], "n": 6,
                                                "agreement": round(4 / 6, 4), "kappa": round(1 / 3, 4)}]
    alice, bob, pooled = results["annotators"]["alice"], results["annotators"]["bob"], results["pooled"]
    assert (alice["win_rate"], alice["n_wins"], alice["n_losses"], alice["n_ties"], alice["n_unjudged"],
            alice["n_skipped"]) == (0.6, 5, 3, 2, 1, 1)
    assert (bob["win_rate"], bob["n_total"], bob["n_unjudged"]) == (0.5, 11, 4)
    # pooled: the two annotators' preferences averaged per instruction (pair 1: M and R make a tie)
    assert (pooled["win_rate"], pooled["n_wins"], pooled["n_losses"], pooled["n_ties"]) == (0.6, 4, 2, 4)
    assert pooled["annotators"] == ["alice", "bob"] and pooled["judge_mode"] == "human"
    fields = set(win_rates.compute_results([1.0, 0.0], [3, 4], [4, 3], ["a", "b"], 0)) | {"reference", "judge_model",
                                                                                     "judge_mode"}
    assert fields <= set(alice) and fields <= set(pooled)
    assert alice["per_category"] == {"math": {"win_rate": 0.5, "n": 5}, "writing": {"win_rate": 0.7, "n": 5}}
    assert json.loads((out / human_eval.RESULTS_NAME).read_text()) == results
    printed = capsys.readouterr().out
    assert "alice vs the LLM judge judge-x (swap mode): agree on 75% of 8 shared pairs, Cohen's kappa 0.58" in printed
    assert "alice vs bob: agree on 67% of 6 shared pairs, Cohen's kappa 0.33" in printed
    for picture in ("human_win_rates.png", "human_agreement.png"):
        assert (out / picture).read_bytes().startswith(b"\x89PNG")


@pytest.mark.slow
def test_results_without_verdicts_or_judge_say_so(tmp_path, capsys):
    model, reference = write_answer_files(tmp_path / "files")
    out = tmp_path / "out"
    stored = human_eval.prepare_pairs(model, reference, str(out))
    with pytest.raises(errors.DataError, match="holds no verdicts yet"):
        human_eval.human_results(str(out))
    human_eval.append_annotation(str(out / human_eval.ANNOTATIONS_NAME),
                                 human_eval.verdict_record(stored[0], "carol", 42, "A"))
    results = judge_command.main(["human_results", "--output_dir", str(out), "--plot", "False"])
    assert results["agreement"]["with_judge"] is None and results["agreement"]["between_annotators"] == []
    assert "No LLM judge annotations" in capsys.readouterr().out
    # the judge's verdicts in another directory (e.g. one where it judged several models)
    judged = tmp_path / "judged"
    judged.mkdir()
    model_first = stored[0]["model_generator"] == human_eval.verdict_record(stored[0], "carol", 42, "A")["shown_first"]
    (judged / "annotations.jsonl").write_text(json.dumps(
        {"instruction": PAIRS[0][0], "input": PAIRS[0][1], "model": MODEL, "reference": REFERENCE,
         "shown_first": MODEL, "verdict": "A" if model_first else "B", "p_a": 0.9 if model_first else 0.1}) + "\n")
    results = judge_command.main(["human_results", "--output_dir", str(out), "--judge_dir", str(judged),
                                  "--plot", "False"])
    assert results["agreement"]["with_judge"] == {"carol": {"n": 1, "agreement": 1.0, "kappa": None}}
    assert "carol vs the LLM judge: agree on 100% of 1 shared pairs, Cohen's kappa undefined" in capsys.readouterr().out


def test_human_win_rates_picture_names_the_annotator_and_draws_only_judged_categories(tmp_path, saved_figures):
    """One annotator judged two pairs: the model loses on "rewriting" (a real 0) and wins on "math"; "open_qa"
    (identical answers) is a tie without a look. The categories nobody judged are not drawn as bars of 0."""
    model, reference = write_answer_files(tmp_path / "files")
    out = tmp_path / "out"
    stored = human_eval.prepare_pairs(model, reference, str(out))
    for index, verdict in ((0, "reference"), (3, "model")):  # PAIRS[0] is rewriting, PAIRS[3] math
        human_eval.append_annotation(str(out / human_eval.ANNOTATIONS_NAME),
                                     {**human_eval.verdict_record(stored[index], "carol", 42, "A"), "verdict": verdict})
    human_eval.human_results(str(out), plot=True)
    left, right = saved_figures["human_win_rates.png"].axes
    assert left.get_xlabel() == "share of instructions where the annotator preferred the model"
    labels = [label.get_text() for label in right.get_yticklabels()]
    assert labels == ["math (n=1)", "open_qa (n=1)", "rewriting (n=1)"]  # not coding, advice, classification
    assert sorted(bar.get_width() for bar in right.patches) == [0.0, 0.5, 1.0]
    # one annotator: one row, named after them, and no "pooled" row repeating it
    assert [text.get_text() for text in right.get_legend().get_texts()] == ["human: carol"]
    assert [label.get_text() for label in left.get_yticklabels()] == ["human: carol"]


# -- the HTTP API, in-process ------------------------------------------------------------------------------


def make_client(tmp_path, annotator: str, token: str | None = None):
    from fastapi.testclient import TestClient

    model, reference = write_answer_files(tmp_path / "files")
    pairs = human_eval.prepare_pairs(model, reference, str(tmp_path / "out"))
    return TestClient(human_eval.make_app(pairs, str(tmp_path / "out"), annotator, 42, token),
                      base_url="http://127.0.0.1:8123")


def test_api_verdicts_undo_stale_pages_and_resume(tmp_path):
    client = make_client(tmp_path, "alice")
    state = client.get("/api/state").json()
    assert (state["done"], state["total"], state["pair"]["id"], state["can_undo"]) == (0, 5, 0, False)
    assert client.post("/api/undo").status_code == 409
    state = client.post("/api/verdict", json={"id": 0, "choice": "A"}).json()
    stale = client.post("/api/verdict", json={"id": 0, "choice": "B"})  # a second tab still showing pair 0
    assert stale.status_code == 409 and stale.json()["pair"]["id"] == 1
    assert client.post("/api/verdict", json={"id": 1, "choice": "maybe"}).status_code == 422
    client.post("/api/verdict", json={"id": 1, "choice": "skip"})
    state = client.post("/api/undo").json()
    assert (state["done"], state["pair"]["id"]) == (1, 1)
    records = read_lines(tmp_path / "out" / human_eval.ANNOTATIONS_NAME)
    assert [r.get("choice", "undo") for r in records] == ["A", "skip", "undo"]
    model_first = human_eval.model_shown_first(42, "alice", PAIRS[0][0], PAIRS[0][1])
    assert records[0]["verdict"] == ("model" if model_first else "reference")
    assert records[0]["shown_first"] == (MODEL if model_first else REFERENCE)
    assert {"annotator", "instruction", "input", "shown_first", "verdict", "time"} <= set(records[0])
    resumed = make_client(tmp_path, "alice").get("/api/state").json()  # a new server on the same directory
    assert (resumed["done"], resumed["pair"]["id"], resumed["can_undo"]) == (1, 1, True)


@pytest.mark.slow
def test_several_annotators_at_once_lose_nothing(tmp_path, monkeypatch):
    """Two servers on one directory (alice, bob), each hit by concurrent requests as from several tabs; a slow disk
    (50 ms per append) widens the window in which an unlocked read-check-append would accept a pair twice."""
    append = human_eval.append_annotation

    def slow_append(path: str, record: dict) -> None:
        time.sleep(0.05)
        append(path, record)

    monkeypatch.setattr(human_eval, "append_annotation", slow_append)
    clients = {name: make_client(tmp_path, name) for name in ("alice", "bob")}
    barrier = threading.Barrier(8)
    statuses = []

    def annotate(name: str) -> None:
        barrier.wait()
        for index in range(5):
            statuses.append(clients[name].post("/api/verdict", json={"id": index, "choice": "tie"}).status_code)

    threads = [threading.Thread(target=annotate, args=(name,)) for name in ("alice", "bob") for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    records = read_lines(tmp_path / "out" / human_eval.ANNOTATIONS_NAME)
    assert statuses.count(200) == 10 and len(records) == 10  # each pair once per annotator, the rest refused
    for name in ("alice", "bob"):
        assert sorted(r["pair_key"] for r in records if r["annotator"] == name) == \
               sorted(p["key"] for p in human_eval.to_annotate(human_eval.load_pair_set(str(tmp_path / "out"))))
        assert clients[name].get("/api/state").json()["done"] == 5


def test_without_a_token_only_this_machine_and_this_page_are_served(tmp_path):
    client = make_client(tmp_path, "alice")
    assert client.get("/api/state").status_code == 200
    assert client.get("/api/state", headers={"Host": "attacker.example:8123"}).status_code == 403  # DNS rebinding
    refused = client.post("/api/verdict", json={"id": 0, "choice": "A"}, headers={"Origin": "http://attacker.example"})
    assert refused.status_code == 403 and not (tmp_path / "out" / human_eval.ANNOTATIONS_NAME).exists()
    same_page = client.post("/api/verdict", json={"id": 0, "choice": "A"}, headers={"Origin": "http://127.0.0.1:8123"})
    assert same_page.status_code == 200


def test_token_is_required_on_every_request(tmp_path):
    client = make_client(tmp_path, "alice", token="s3cret-token")
    for method, path in (("get", "/"), ("get", "/api/state"), ("post", "/api/undo"), ("get", "/nothing")):
        for query in ("", "?token=wrong", "?token=s3cret-toke", "?token=%C3%A9"):
            assert getattr(client, method)(path + query).status_code == 403, (path, query)
    assert client.post("/api/verdict", json={"id": 0, "choice": "A"}).status_code == 403
    assert not (tmp_path / "out" / human_eval.ANNOTATIONS_NAME).exists()
    assert client.get("/?token=s3cret-token").status_code == 200
    assert client.post("/api/verdict?token=s3cret-token", json={"id": 0, "choice": "A"}).json()["done"] == 1


# -- the page in a real browser ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"browser tests skipped: {CHROMIUM} not found; install Debian's chromium")
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        pytest.skip("browser tests skipped: playwright is not installed (requirements-dev.txt)")
    expect.set_options(timeout=30_000)  # the default 5 s is too short on a busy 2-core machine
    with sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True,
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                      "--disable-sync", "--no-first-run"])
        except Exception as error:  # e.g. a chromium whose libraries are missing: say so, as for no chromium
            pytest.skip(f"browser tests skipped: {CHROMIUM} does not start ({str(error).splitlines()[0]})")
        yield browser
        browser.close()


def start_server(model: str, reference: str, out, *extra: str) -> tuple[subprocess.Popen, str]:
    """`python judge.py human ...` in a subprocess; returns it and the address it printed."""
    process = subprocess.Popen([sys.executable, "judge.py", "human", "--model_outputs", model, "--reference_outputs",
                                reference, "--output_dir", str(out), "--annotator", "alice", "--port", "0", *extra],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline, seen = time.monotonic() + 120, []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        seen.append(line)
        found = re.search(r"Annotate at (http://\S+)", line)
        if found:
            return process, found.group(1)
        if not line and process.poll() is not None:
            break
    process.kill()
    raise AssertionError("the server printed no address:\n" + "".join(seen))


def stop(process: subprocess.Popen) -> None:
    process.kill()
    process.wait(timeout=30)


def recording_page(browser, seen: list):
    """A page whose every response from the server is kept (url, status, headers, body) for the blindness check."""
    context = browser.new_context(viewport={"width": 1100, "height": 470})

    def record(route):
        response = route.fetch()
        seen.append((response.url, response.status, json.dumps(response.headers), response.body()))
        route.fulfill(response=response)

    context.set_default_timeout(60_000)
    context.route("**/*", record)
    page = context.new_page()
    page.on("dialog", lambda dialog: seen.append(("dialog", 0, "", dialog.message.encode())))
    return page


@pytest.mark.slow
def test_browser_annotates_undoes_resumes_after_a_kill_stays_blind_and_never_runs_an_answer(browser, tmp_path):
    from playwright.sync_api import expect

    model, reference = write_answer_files(tmp_path / "private_inputs")
    out = tmp_path / "verdicts_dir"
    seen: list = []
    page = recording_page(browser, seen)
    server, url = start_server(model, reference, out)
    try:
        page.goto(url)
        progress, status = page.locator("#progress-text"), page.locator("#status")
        expect(progress).to_have_text("0 / 5 done")
        expect(page.locator("#input")).to_have_text(PAIRS[0][1])
        page.click("#choose-a")
        expect(progress).to_have_text("1 / 5 done")
        # the answer holding HTML and a script: shown as text, line breaks kept, never run
        answers = page.locator("#answer-a").text_content() + page.locator("#answer-b").text_content()
        assert UNSAFE in answers
        assert page.locator("#answer-a").evaluate("e => getComputedStyle(e).whiteSpace") == "pre-wrap"
        assert page.locator("#pair img, #pair script, #pair b").count() == 0
        expect(page.locator("#input-box")).to_be_hidden()
        page.keyboard.press("2")
        expect(progress).to_have_text("2 / 5 done")
        page.keyboard.press("t")
        expect(progress).to_have_text("3 / 5 done")
        page.keyboard.press("u")
        expect(progress).to_have_text("2 / 5 done")
        expect(status).to_have_text("Undone: the last verdict is back to judge.")
        expect(page.locator("#instruction")).to_have_text(PAIRS[2][0])
        page.reload()
        expect(progress).to_have_text("2 / 5 done")
        expect(page.locator("#instruction")).to_have_text(PAIRS[2][0])
        page.screenshot(path=str(tmp_path / "human_eval.png"))
        page.keyboard.press("s")
        expect(progress).to_have_text("3 / 5 done (1 skipped)")
        stop(server)  # killed mid-way: SIGKILL, no chance to clean up
        server, url = start_server(model, reference, out)
        page.goto(url)
        expect(progress).to_have_text("3 / 5 done (1 skipped)")
        expect(page.locator("#instruction")).to_have_text(PAIRS[3][0])
        page.keyboard.press("Backspace")
        expect(progress).to_have_text("2 / 5 done")
        for key, done in (("a", 3), ("1", 4), ("b", 5)):
            page.keyboard.press(key)
            expect(progress).to_have_text(f"{done} / 5 done")
        expect(page.locator("#done")).to_have_text("All 5 pairs are done. Thank you: you can close this page.")
        assert page.evaluate("window.__pwned") is None
    finally:
        stop(server)

    records = read_lines(out / human_eval.ANNOTATIONS_NAME)
    assert [r.get("choice", "undo") for r in records] == ["A", "B", "tie", "undo", "skip", "undo", "A", "A", "B"]
    order_seed = f"42\0{human_eval.order_secret(str(out))}"  # the server mixed the directory's secret in
    for record in records:
        if "choice" in record and record["choice"] in "AB":
            model_first = human_eval.model_shown_first(order_seed, "alice", record["instruction"], record["input"])
            assert record["verdict"] == ("model" if (record["choice"] == "A") == model_first else "reference")
    assert sum(1 for r in seen if r[0].startswith("http")) > 10 and not any(r[0] == "dialog" for r in seen)
    secrets_of_the_pairs = [MODEL, REFERENCE, "secret_model_answers", "secret_reference_answers", "private_inputs",
                            "verdicts_dir", str(tmp_path)]
    for response_url, _, headers, body in seen:
        for secret in secrets_of_the_pairs:
            assert secret not in response_url + headers + body.decode("utf-8", "replace"), (secret, response_url)
    screenshot = tmp_path / "human_eval.png"
    assert screenshot.read_bytes().startswith(b"\x89PNG") and screenshot.stat().st_size < 200_000
    if os.environ.get("UPDATE_README_SCREENSHOT") == "1":  # how docs/human_eval.png, the README's picture, is made
        shutil.copyfile(screenshot, REPO / "docs" / "human_eval.png")


@pytest.mark.slow
def test_browser_off_loopback_needs_the_printed_token(browser, tmp_path):
    from playwright.sync_api import expect

    model, reference = write_answer_files(tmp_path / "files")
    out = tmp_path / "out"
    server, url = start_server(model, reference, out, "--host", "0.0.0.0")
    try:
        token = re.search(r"\?token=([\w-]{20,})$", url).group(1)
        local = url.replace("0.0.0.0", "127.0.0.1")
        bare = local.split("?")[0]
        for request in (urllib.request.Request(bare), urllib.request.Request(bare + "api/state"),
                        urllib.request.Request(bare + "api/state?token=" + token[:-1]),
                        urllib.request.Request(bare + "api/verdict", data=b'{"id": 0, "choice": "A"}',
                                               headers={"Content-Type": "application/json"})):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=30)
            assert refused.value.code == 403
        seen: list = []
        page = recording_page(browser, seen)
        assert page.goto(bare).status == 403
        page.goto(local)
        expect(page.locator("#input")).to_have_text(PAIRS[0][1])  # the first pair is shown: the page is ready
        page.click("#choose-b")
        expect(page.locator("#progress-text")).to_have_text("1 / 5 done")
    finally:
        stop(server)
    assert [r["choice"] for r in read_lines(out / human_eval.ANNOTATIONS_NAME)] == ["B"]


def test_the_a_b_order_cannot_be_computed_from_the_public_seed(tmp_path):
    secret = human_eval.order_secret(str(tmp_path))
    assert human_eval.order_secret(str(tmp_path)) == secret  # every server on the directory reads the same one
    assert oct((tmp_path / human_eval.ORDER_SECRET_NAME).stat().st_mode & 0o777) == "0o600"
    instructions = [f"Task {i}." for i in range(64)]
    public = [human_eval.model_shown_first(42, "alice", i, "") for i in instructions]
    mixed = [human_eval.model_shown_first(f"42\0{secret}", "alice", i, "") for i in instructions]
    assert public != mixed and 16 < sum(mixed) < 48  # another order, still balanced between A and B


def test_hostile_bodies_and_a_damaged_file_get_a_sentence_not_a_traceback(tmp_path):
    client = make_client(tmp_path, "alice")
    json_header = {"content-type": "application/json"}
    for body in (b"NaN", b'{"id": NaN, "choice": "A"}', b'{"id": 1e400, "choice": "A"}'):
        answer = client.post("/api/verdict", content=body, headers=json_header)
        assert answer.status_code == 422 and "A verdict is JSON" in answer.text  # was a 500 with a traceback
    huge = client.post("/api/verdict", content=b'{"id": 0, "choice": "A", "x": "' + b"y" * 100_000 + b'"}',
                       headers=json_header)
    assert huge.status_code == 413
    assert client.post("/api/verdict", json={"id": 0, "choice": "A"}).status_code == 200
    annotations = tmp_path / "out" / human_eval.ANNOTATIONS_NAME
    annotations.write_text("garbage\n" + annotations.read_text())
    damaged = client.get("/api/state")
    assert damaged.status_code == 500 and "line 1 of 2: not valid JSON" in damaged.text
