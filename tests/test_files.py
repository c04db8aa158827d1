"""alpaca/files.py: the one home of the journal rule, atomic writes and the output-directory lock."""

import json
import os
import stat
import tempfile

import pytest

from alpaca import errors, files
from alpaca.data import tools as data_tools

RECORDS = [{"key": f"k{i}", "value": i} for i in range(6)]


def write_journal(path, lines: list[str]) -> None:
    path.write_bytes("".join(lines).encode("utf-8"))


def journal_lines() -> list[str]:
    return [json.dumps(record) + "\n" for record in RECORDS]


# -- journals ------------------------------------------------------------------------------------------------------


def test_a_torn_last_line_is_the_only_thing_ever_cut(tmp_path):
    journal = tmp_path / "j.jsonl"
    write_journal(journal, journal_lines() + ['{"key": "k6", "val'])  # a kill mid-write
    assert files.read_journal(journal) == RECORDS
    assert journal.read_text() == "".join(journal_lines())


def test_blank_lines_are_skipped_and_nothing_is_deleted(tmp_path):
    journal = tmp_path / "j.jsonl"
    lines = journal_lines()
    write_journal(journal, lines[:2] + ["\n", "   \n"] + lines[2:])
    before = journal.read_bytes()
    assert files.read_journal(journal) == RECORDS
    assert journal.read_bytes() == before


@pytest.mark.parametrize("bad,problem", [("garbage\n", "not valid JSON"), ('["a", "list"]\n', "a JSON list"),
                                         ('{"no_key": 1}\n', "needs a key"), ("[" * 100_000 + "\n", "not valid JSON")])
def test_a_damaged_middle_line_is_refused_by_number_and_nothing_is_deleted(tmp_path, bad, problem):
    journal = tmp_path / "j.jsonl"
    lines = journal_lines()
    write_journal(journal, lines[:3] + [bad] + lines[3:])
    before = journal.read_bytes()
    with pytest.raises(errors.JournalError, match=rf"j.jsonl, line 4 of 7: {problem}"):
        files.read_journal(journal, lambda r: None if "key" in r else "needs a key")
    assert journal.read_bytes() == before  # 590 of 600 verdicts were lost this way before


def test_append_after_a_torn_line_starts_a_line_of_its_own(tmp_path):
    journal = tmp_path / "j.jsonl"
    write_journal(journal, journal_lines()[:2] + ['{"key": "torn'])
    files.append_journal(journal, {"key": "new"})
    assert files.read_journal(journal) == RECORDS[:2] + [{"key": "new"}]


def test_journal_lines_keep_text_readable_and_carry_lone_surrogates(tmp_path):
    journal = tmp_path / "j.jsonl"
    files.append_journal(journal, {"key": "Grüße 你好"})
    files.append_journal(journal, {"key": "\ud800"})  # a lone surrogate from a JSON input: only \u escapes carry it
    assert "Grüße 你好" in journal.read_text(encoding="utf-8")
    assert files.read_journal(journal) == [{"key": "Grüße 你好"}, {"key": "\ud800"}]
    with pytest.raises(ValueError):
        files.append_journal(journal, {"key": float("nan")})  # not JSON: refused, not journaled


# -- atomic writes ---------------------------------------------------------------------------------------------------


def test_a_symlink_planted_at_any_temporary_name_is_never_followed(tmp_path, monkeypatch):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out.json"
    for name in ("out.json.tmp", "out.json.partial", ".out.json.tmp"):  # the fixed names earlier versions used
        (tmp_path / name).symlink_to(victim)
    # The unique name: make the first candidate one where a link is planted too; mkstemp must skip it.
    planted = tmp_path / ".out.json.planted.tmp"
    planted.symlink_to(victim)
    names = iter(["planted", "fresh"])
    monkeypatch.setattr(tempfile, "_get_candidate_names", lambda: names)
    files.write_atomically(out, "new text")
    assert out.read_text() == "new text" and victim.read_text() == "precious"
    assert planted.is_symlink() and not out.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [".out.json.planted.tmp", ".out.json.tmp", "out.json", "out.json.partial", "out.json.tmp", "victim.txt"])


def test_a_device_a_directory_or_a_link_is_never_replaced(tmp_path):
    if os.path.exists("/dev/null"):
        with pytest.raises(errors.OutputPathError, match="a device"):
            files.write_atomically("/dev/null", "x")
        assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    (tmp_path / "dir").mkdir()
    with pytest.raises(errors.OutputPathError, match="is a directory"):
        files.write_atomically(tmp_path / "dir", "x")
    (tmp_path / "link").symlink_to(tmp_path / "target")
    with pytest.raises(errors.OutputPathError, match="a symbolic link"):
        files.write_atomically(tmp_path / "link", "x")
    assert not (tmp_path / "target").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["dir", "link"]


def test_an_input_of_the_same_run_is_never_replaced(tmp_path):
    data = tmp_path / "data.json.tmp"  # an input named like the old temporary file of data.json
    data.write_text(json.dumps([{"instruction": "Say hi.", "input": "", "output": "hi"}]))
    data_tools.convert(str(data), to="release", output=str(tmp_path / "data.json"))
    assert data.exists() and json.loads((tmp_path / "data.json").read_text())[0]["output"] == "hi"
    os.link(data, tmp_path / "hard.json")
    with pytest.raises(errors.OutputPathError, match="is the input file"):
        data_tools.convert(str(data), to="release", output=str(tmp_path / "hard.json"))


def test_unencodable_text_is_one_sentence_and_leaves_nothing_behind(tmp_path):
    with pytest.raises(errors.DataError, match="lone UTF-16 surrogate"):
        files.write_atomically(tmp_path / "out.json", "bad \ud800 text")
    assert list(tmp_path.iterdir()) == []


def test_written_files_get_the_usual_mode(tmp_path):
    umask = os.umask(0o022)
    try:
        files.write_atomically(tmp_path / "out.txt", "x")
    finally:
        os.umask(umask)
    assert stat.S_IMODE(os.stat(tmp_path / "out.txt").st_mode) == 0o644


# -- the output-directory lock -----------------------------------------------------------------------------------


def test_a_held_directory_refuses_a_second_run_and_a_file_is_no_directory(tmp_path):
    with files.claimed_directory(tmp_path / "out", ".x.lock", "judge"):
        with pytest.raises(errors.BusyError, match=rf"in use by another judge \(pid {os.getpid()} on "):
            with files.claimed_directory(tmp_path / "out", ".x.lock", "judge"):
                pass
    (tmp_path / "file").write_text("")
    with pytest.raises(errors.OutputPathError, match="is a file, not a directory"):
        with files.claimed_directory(tmp_path / "file", ".x.lock", "judge"):
            pass
    assert not (tmp_path / "out").exists()  # created by the run and left empty: removed again


# -- reading data files ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_hostile_data_files_are_one_sentence(tmp_path, suffix):
    deep = tmp_path / f"deep{suffix}"
    deep.write_text("[" * 100_000 + "\n")
    with pytest.raises(errors.DataError, match="nested too deeply|not valid JSON"):
        files.load_records(deep)
    twice = tmp_path / f"twice{suffix}"
    record = '{"instruction": "a", "output": "x", "output": "y"}'
    twice.write_text(f"[{record}]" if suffix == ".json" else record + "\n")
    with pytest.raises(errors.DataError, match="names the field 'output' twice"):
        files.load_alpaca_records(twice)
