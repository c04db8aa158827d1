"""judge.py leaderboard: real judge.py runs against the loopback judge (alpaca/testing/openai_server.py), merged into
one table. The judge prefers answers by a hidden score, so every model's win rate, and the table's order, is known;
all answers have the reference's length, so the length-controlled win rate equals the win rate."""

import json
import re
import shutil
import sys

import pytest

from alpaca import errors
from alpaca.evaluate import command as judge_command

N = 8
WINS = {"strong": 7, "middle": 4, "weak": 1}  # instructions (of N) on which the judge prefers the model


def answer(name: str, i: int) -> str:
    return f"{name} answer {i}".ljust(24, ".")


def score(text: str) -> float:
    """The judge's hidden preference: a model's answer i beats the reference's when i < WINS[model]."""
    name, _, i = text.rstrip(".").split()
    return 0.5 if name == "reference" else float(int(i) < WINS[name])


def judge_by_score(path, prompt, body):
    a, b = re.search(r"<answer_a>\n(.*?)\n</answer_a>\n\n<answer_b>\n(.*?)\n</answer_b>", prompt, flags=re.S).groups()
    return ("[[A]]" if score(a) > score(b) else "[[B]]"), "stop"


def answers_file(folder, name: str) -> str:
    path = folder / f"{name}.json"
    path.write_text(json.dumps([{"instruction": f"Do task {i}.", "input": "", "output": answer(name, i),
                                 "generator": name} for i in range(N)]))
    return str(path)


def judge_run(server, tmp_path, output_dir: str, *models: str, judge_model: str = "judge-test",
              reference: str | None = None) -> str:
    """Judge the models' answers files (made here) against the reference in tmp_path/output_dir; the directory."""
    server.responder = judge_by_score
    paths = [answers_file(tmp_path, name) for name in models]
    judge_command.main(["--model_outputs", *paths, "--reference_outputs",
                        reference or answers_file(tmp_path, "reference"), "--output_dir", str(tmp_path / output_dir),
                        "--judge_model", judge_model, "--api_base", server.url, "--plot", "False"])
    return str(tmp_path / output_dir)


def leaderboard(*argv: str) -> dict:
    return judge_command.main(["leaderboard", *argv])


def test_runs_merge_into_one_table_best_length_controlled_win_rate_first(openai_server, tmp_path, capsys):
    first = judge_run(openai_server, tmp_path, "first", "weak", "strong")
    second = judge_run(openai_server, tmp_path, "second", "middle")
    calls = len(openai_server.requests)
    capsys.readouterr()
    summary = leaderboard(second, first, "--output", str(tmp_path / "board.md"))
    rows = summary["leaderboard"]
    assert [(r["rank"], r["model"], r["run"]) for r in rows] == [(1, "strong", first), (2, "middle", second),
                                                                 (3, "weak", first)]
    assert [r["lc_win_rate"] for r in rows] == [r["win_rate"] for r in rows] == [7 / 8, 4 / 8, 1 / 8]
    assert all(r["lc_win_rate_ci95"][0] <= r["lc_win_rate"] <= r["lc_win_rate_ci95"][1] for r in rows)
    assert len(openai_server.requests) == calls  # a leaderboard reads results; it never asks the judge

    printed = capsys.readouterr().out
    assert printed.index("\nstrong ") < printed.index("\nmiddle ") < printed.index("\nweak ")
    page = (tmp_path / "board.md").read_text()
    table_rows = [line for line in page.splitlines() if re.match(r"\| \d", line)]
    assert [line.split(" | ")[1] for line in table_rows] == ["strong", "middle", "weak"]
    assert "| 0.875 [" in table_rows[0] and "judge-test" in page and "swap mode" in page
    assert (tmp_path / "board.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    as_json = leaderboard(first, second, "--output", str(tmp_path / "table.json"), "--plot", "False")
    assert json.loads((tmp_path / "table.json").read_text()) == as_json and not (tmp_path / "table.png").exists()
    assert [r["model"] for r in as_json["leaderboard"]] == ["strong", "middle", "weak"]
    assert set(as_json["provenance"]["runs"]) == {first, second} and as_json["provenance"]["judge_model"] == \
        "judge-test"


def test_a_run_from_another_judge_is_refused_in_one_sentence_exit_1(openai_server, tmp_path, capsys, monkeypatch):
    ours = judge_run(openai_server, tmp_path, "ours", "strong")
    theirs = judge_run(openai_server, tmp_path, "theirs", "middle", judge_model="judge-other")
    with pytest.raises(errors.DataError, match=rf"{theirs} cannot join {ours} in one leaderboard: its judge_model is "
                                               r"'judge-other', not 'judge-test'"):
        leaderboard(ours, theirs)
    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", ["judge.py", "leaderboard", ours, theirs, "--output", str(tmp_path / "b.md")])
    with pytest.raises(SystemExit) as exit_code:
        judge_command.entry_point()
    stderr = capsys.readouterr().err.strip().splitlines()
    assert exit_code.value.code == 1 and len(stderr) == 1 and stderr[0].startswith("error: ") \
        and "judge_model is 'judge-other', not 'judge-test'" in stderr[0]
    assert not (tmp_path / "b.md").exists()


def edited_copy(run: str, to: str, edit) -> str:
    shutil.copytree(run, to)
    path = f"{to}/results.json"
    results = json.loads(open(path).read())
    edit(results)
    with open(path, "w") as f:
        json.dump(results, f)
    return to


@pytest.mark.parametrize("field, value, shown", [
    ("judge_mode", "logprobs", "its judge_mode is 'logprobs', not 'swap'"),
    ("judge_prompt_sha256", "a" * 64, "its judge_prompt_sha256 is aaaaaaaaaaaa, not "),
    # a run judged with another layout of the conversation prompt (this run has none: its reference holds none)
    ("judge_conversation_prompt_sha256", "b" * 64, "its judge_conversation_prompt_sha256 is bbbbbbbbbbbb, not None"),
])
def test_runs_that_differ_in_judge_mode_or_prompt_are_refused(openai_server, tmp_path, field, value, shown):
    ours = judge_run(openai_server, tmp_path, "ours", "strong")

    def edit(results):
        results["provenance"][field] = value
    other = edited_copy(ours, str(tmp_path / "other"), edit)
    with pytest.raises(errors.DataError, match=re.escape(shown)):
        leaderboard(ours, other)


def test_runs_against_other_reference_answers_are_refused(openai_server, tmp_path):
    ours = judge_run(openai_server, tmp_path, "ours", "strong")
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    records = json.loads((tmp_path / "reference.json").read_text())
    records[0]["output"] = answer("reference", 99)
    (folder / "reference.json").write_text(json.dumps(records))
    theirs = judge_run(openai_server, tmp_path, "theirs", "middle", reference=str(folder / "reference.json"))
    expected = rf"its reference_outputs is {folder}/reference.json \(sha256 \w{{12}}\), not {tmp_path}/reference.json"
    with pytest.raises(errors.DataError, match=expected):
        leaderboard(ours, theirs)
    # the same answers under another path are the same reference
    shutil.copy(tmp_path / "reference.json", folder / "same.json")
    again = judge_run(openai_server, tmp_path, "again", "middle", reference=str(folder / "same.json"))
    assert [r["model"] for r in leaderboard(ours, again)["leaderboard"]] == ["strong", "middle"]


def test_one_model_in_two_runs_is_listed_once_or_refused_when_its_answers_differ(openai_server, tmp_path):
    first = judge_run(openai_server, tmp_path, "first", "strong", "weak")
    second = judge_run(openai_server, tmp_path, "second", "strong")
    rows = leaderboard(first, second)["leaderboard"]
    assert [(r["model"], r["run"]) for r in rows] == [("strong", first), ("weak", first)]
    records = json.loads((tmp_path / "strong.json").read_text())
    records[-1]["output"] = answer("strong", 0)  # another answers file, still named strong
    (tmp_path / "strong.json").write_text(json.dumps(records))
    third = judge_command.main(["--model_outputs", str(tmp_path / "strong.json"), "--reference_outputs",
                                str(tmp_path / "reference.json"), "--output_dir", str(tmp_path / "third"),
                                "--judge_model", "judge-test", "--api_base", openai_server.url, "--plot", "False"])
    assert third["strong"]["n_total"] == N
    with pytest.raises(errors.DataError, match=r"both hold a model named 'strong', from different answers files"):
        leaderboard(first, str(tmp_path / "third"))


def test_a_directory_that_is_no_judge_run_is_one_sentence(openai_server, tmp_path):
    ours = judge_run(openai_server, tmp_path, "ours", "strong")
    with pytest.raises(errors.MissingPathError, match="missing does not exist"):
        leaderboard(ours, str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(errors.MissingPathError, match="empty holds no results.json; name the --output_dir"):
        leaderboard(str(tmp_path / "empty"))
    for name, text, message in [
        ("broken", '{"model": ', "is not valid JSON"),
        ("listed", "[1, 2]", "is not a results.json of judge.py: it holds a JSON list"),
        ("foreign", '{"accuracy": 0.9}', "is not a results.json of judge.py: its entry 'accuracy' lacks win_rate"),
        ("deep", "[" * 100_000, "JSON nested too deeply to read"),  # was a RecursionError traceback
    ]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(text)
        with pytest.raises(errors.DataError, match=message):
            leaderboard(ours, str(tmp_path / name))


def test_a_results_json_from_before_provenance_is_refused_and_a_rerun_adds_it_without_a_call(openai_server,
                                                                                              tmp_path):
    ours = judge_run(openai_server, tmp_path, "ours", "strong")
    old = edited_copy(ours, str(tmp_path / "old"), lambda results: results.pop("provenance"))
    with pytest.raises(errors.DataError, match="records no provenance .* re-run the judge.py command that wrote it"):
        leaderboard(ours, old)
    calls = len(openai_server.requests)
    judge_command.main(["--model_outputs", str(tmp_path / "strong.json"), "--reference_outputs",
                        str(tmp_path / "reference.json"), "--output_dir", old, "--judge_model", "judge-test",
                        "--api_base", openai_server.url, "--plot", "False"])
    assert len(openai_server.requests) == calls
    assert [r["model"] for r in leaderboard(ours, old)["leaderboard"]] == ["strong"]


def test_command_line_mistakes_are_usage_errors(tmp_path):
    with pytest.raises(errors.UsageError, match="name at least one judge.py output directory"):
        leaderboard()
    with pytest.raises(errors.UsageError, match=r"unknown flag --outptu \(did you mean --output\?\)"):
        leaderboard(str(tmp_path), "--outptu", "x.md")
    with pytest.raises(errors.UsageError, match="would be overwritten by the picture"):
        leaderboard(str(tmp_path), "--output", str(tmp_path / "board.png"))
