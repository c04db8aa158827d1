"""The command-line layer every script shares: booleans, flag checking before work, one-line errors."""

import functools
import pathlib
import signal
import subprocess
import sys
import textwrap

import pytest

from alpaca import cli

REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("value, expected", [
    (True, True), (False, False), (1, True), (0, False),
    ("True", True), ("true", True), ("TRUE", True), ("1", True), ("yes", True),
    ("False", False), ("false", False), ("0", False), ("no", False), (" off ", False),
])
def test_parse_bool_reads_every_spelling_a_user_types(value, expected):
    assert cli.parse_bool(value) is expected


@pytest.mark.parametrize("value", ["maybe", "", "2", 2, None, 0.5])
def test_parse_bool_refuses_what_is_not_a_boolean(value):
    with pytest.raises(cli.UsageError, match="--clean takes True or False"):
        cli.parse_bool(value, "--clean")


def job(data_path: str, *more: str, clean: bool = False, num: int = 3, rate: float = 1.0,
        name: str | None = None, items=None, calls: list | None = None) -> dict:
    """Do a job.

    Args:
        data_path: the input.
    """
    if calls is not None:
        calls.append(1)
    return dict(data_path=data_path, more=more, clean=clean, num=num, rate=rate, name=name, items=items)


def run(*argv):
    return cli.run_commands({"job": job}, ["job", *argv], prog="prog")


def test_flags_are_typed_by_the_signature():
    result = run("a.json", "b.json", "--clean", "false", "--num", "5", "--rate", "2", "--name", "2024",
                 "--items", "[1, 2]")
    assert result == dict(data_path="a.json", more=("b.json",), clean=False, num=5, rate=2.0, name="2024",
                          items=[1, 2])
    assert run("--data_path=x", "--clean")["clean"] is True  # a bare boolean flag is True
    assert run("x", "--clean", "False")["clean"] is False
    assert run("x", "--clean", "0")["clean"] is False


@pytest.mark.parametrize("argv, message", [
    (["x", "--clen", "1"], "unknown flag --clen"),
    (["x", "--num", "many"], "--num takes a number, not 'many'"),
    (["x", "--num", "1.5"], "--num takes a whole number"),
    (["x", "--clean", "perhaps"], "--clean takes True or False"),
    ([], "missing --data_path"),
])
def test_mistakes_are_refused_before_the_function_runs(argv, message):
    calls = []
    with pytest.raises(cli.UsageError, match=message):
        cli.run_commands({"job": functools.partial(job, calls=calls)}, ["job", *argv], prog="prog")
    assert calls == []


def test_unknown_command_and_default_command():
    with pytest.raises(cli.UsageError, match=r"unknown command jb \(did you mean job\?\); use one of: job"):
        cli.run_commands({"job": job}, ["jb"], prog="prog")
    assert cli.run_commands({"job": job, "other": job}, ["a.json"], prog="prog", default="job")["data_path"] == "a.json"


def test_help_lists_flags_and_defaults(capsys):
    assert run("--help") is None
    out = capsys.readouterr().out
    assert "usage: prog job" in out and "Do a job." in out
    assert "--clean False" in out and "--data_path (required)" in out
    cli.run_commands({"job": job, "other": job}, ["--help"], prog="prog", default="job")
    assert "other commands: other" in capsys.readouterr().out


SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {repo!r})
    from alpaca import cli

    def main():
        kind = sys.argv[1]
        if kind == "user":
            raise cli.DataError("data.json, record 3: field 'output' is missing.")
        if kind == "usage":
            cli.run_commands({{"go": lambda flag=1: None}}, ["go", "--flg", "2"], prog="script")
        if kind == "bug":
            raise ValueError("a bug, not a mistake")
        if kind == "interrupt":
            raise KeyboardInterrupt

    cli.report_errors(main, interrupted_message="interrupted: saved.")
""")


@pytest.mark.parametrize("kind, code, stderr_start", [
    ("user", 1, "error: data.json, record 3: field 'output' is missing."),
    ("usage", 2, "error: unknown flag --flg"),
    ("interrupt", 130, "interrupted: saved."),
    ("ok", 0, ""),
])
def test_report_errors_prints_one_line_and_exits_with_its_code(tmp_path, repo_dir, kind, code, stderr_start):
    script = tmp_path / "script.py"
    script.write_text(SCRIPT.format(repo=str(repo_dir)))
    result = subprocess.run([sys.executable, str(script), kind], capture_output=True, text=True, timeout=60)
    assert result.returncode == code
    assert result.stderr.startswith(stderr_start)
    assert len(result.stderr.splitlines()) == (1 if stderr_start else 0)


def test_a_bug_keeps_its_traceback_and_only_rank_0_speaks(tmp_path, repo_dir):
    script = tmp_path / "script.py"
    script.write_text(SCRIPT.format(repo=str(repo_dir)))
    bug = subprocess.run([sys.executable, str(script), "bug"], capture_output=True, text=True, timeout=60)
    assert bug.returncode == 1 and "Traceback" in bug.stderr and "ValueError: a bug, not a mistake" in bug.stderr
    rank1 = subprocess.run([sys.executable, str(script), "user"], capture_output=True, text=True, timeout=60,
                           env={"RANK": "1", "PATH": "/usr/bin:/bin"})
    assert rank1.returncode == 1 and rank1.stderr == ""


# -- one front door: every script's endpoint flags, flag names and commands --------------------------------------

ENDPOINT_HELPS = {
    "generate_instruction": [sys.executable, "-m", "generate_instruction", "generate_instruction_following_data",
                             "--help"],
    "inference.py": [sys.executable, "inference.py", "--help"],
    "judge.py": [sys.executable, "judge.py", "--help"],
    "judge.py preferences": [sys.executable, "judge.py", "preferences", "--help"],
    "data_tools.py rate": [sys.executable, "data_tools.py", "rate", "--help"],
}


def _flat(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.slow
def test_every_script_gives_max_retries_and_request_timeout_one_meaning():
    from alpaca.llm.settings import ENDPOINT_FLAGS

    for script, command in ENDPOINT_HELPS.items():
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, (script, result.stderr)
        for flag in ("max_retries", "request_timeout", "max_concurrency"):
            assert _flat(ENDPOINT_FLAGS[flag]) in _flat(result.stdout), f"{script} --help: --{flag} differs"
    judge_help = subprocess.run(ENDPOINT_HELPS["judge.py"], cwd=REPO, capture_output=True, text=True).stdout
    assert "--verdict_retries" in judge_help  # asking again for a verdict has its own name


@pytest.mark.parametrize("argv,expected", [
    (["judge.py", "humn", "--output_dir", "x"], "unknown command humn (did you mean human?)"),
    (["inference.py", "--instr", "x"], "unknown flag --instr (did you mean --instruction?)"),
    (["data_tools.py", "stats", "x.json", "--output_dri", "y"],
     "unknown flag --output_dri (did you mean --output_dir?)"),
    (["weight_diff.py", "recovr", "--path_raw", "a"], "unknown command recovr (did you mean recover?)"),
    (["judge.py", "--model_outputs", "a.json", "--reference_outputs", "b.json", "--output_dir", "o",
      "--judge_model", "j", "--api_type", "chta"], "--api_type"),
    (["judge.py", "preferences", "--samples", "a.json", "--output_dir", "o", "--judge_model", "j",
      "--api_base", "http://a/v1,notaurl"], "'notaurl' is not a base URL"),
    (["data_tools.py", "rate", "a.json", "--output", "r.json", "--requests_per_minute", "-1"],
     "--requests_per_minute must be above 0"),
    (["judge.py", "leaderboard", "judged", "--outptu", "board.md"], "unknown flag --outptu (did you mean --output?)"),
])
def test_command_line_mistakes_exit_2_and_name_the_closest_real_one(argv, expected, tmp_path):
    for name in ("a.json", "b.json"):
        (tmp_path / name).write_text('[{"instruction": "Say hi.", "input": "", "output": "hi"}]')
    result = subprocess.run([sys.executable, str(pathlib.Path(REPO) / argv[0]), *argv[1:]], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1 and expected in errors[0], result.stderr


def test_no_abbreviations_in_argparse_scripts():
    parser = cli.ArgumentParser(prog="x")
    parser.add_argument("--instruction")
    with pytest.raises(cli.UsageError, match=r"--instr \(did you mean --instruction\?\)"):
        parser.parse_args(["--instr", "hi"])


def test_compare_checkpoints_help_is_no_error():
    script = str(REPO / "scripts" / "compare_checkpoints.py")
    shown = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and "DIR_A DIR_B" in shown.stdout
    assert subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=60).returncode == 2


def test_a_rank_other_than_0_waits_for_rank_0_and_ends_quietly_when_torchrun_stops_it(tmp_path, repo_dir):
    """Under torchrun the rank that exits first makes torchrun stop the others: a silent rank 1 exiting at once got
    rank 0 killed before it printed its sentence. Rank 1 now waits, and torchrun's SIGTERM ends it without a word."""
    script = tmp_path / "script.py"
    script.write_text(SCRIPT.format(repo=str(repo_dir)))
    rank1 = subprocess.Popen([sys.executable, str(script), "user"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env={"RANK": "1", "PATH": "/usr/bin:/bin"})
    try:
        rank1.wait(timeout=3)  # rank 0 prints and exits well within this
    except subprocess.TimeoutExpired:
        pass
    assert rank1.returncode is None, "rank 1 exited before rank 0 could speak"
    rank1.send_signal(signal.SIGTERM)
    _, stderr = rank1.communicate(timeout=60)
    assert rank1.returncode == -signal.SIGTERM and stderr == ""
