"""data_tools.py: stats, clean, contamination, convert and rate on small files written here, the verb/object
extraction on hand-built spaCy Docs, and the command-line contract (one `error:` line, nothing written)."""

import inspect
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest
from rouge_score import rouge_scorer

from alpaca import errors, files
from alpaca.cli import DataError, MissingPathError, UsageError
from alpaca.data import rating, verb_objects
from alpaca.data import tools as data_tools
from alpaca.testing.openai_server import OpenAIServer, ok

REPO = pathlib.Path(__file__).resolve().parents[2]
SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(a: str, b: str) -> float:
    return SCORER.score(a, b)["rougeL"].fmeasure


def write_json(path: pathlib.Path, records) -> str:
    path.write_text(json.dumps(records, ensure_ascii=False))
    return str(path)


def write_jsonl(path: pathlib.Path, records) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return str(path)


def read_jsonl(path) -> list:
    return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines() if line.strip()]


GOOD = [
    {"instruction": "Give three tips for staying healthy every day.", "input": "", "output": "Eat, sleep, move."},
    {"instruction": "Translate the sentence into French for me.", "input": "Good morning.", "output": "Bonjour."},
    {"instruction": "Summarize the paragraph in one short sentence.", "input": "Rivers carry water to the sea.",
     "output": "Rivers flow to the sea."},
]
# One record per defect class of the released data and per generator filter, with the reason clean must give.
DEFECTS = [
    ({"instruction": "Sort the list of numbers in ascending order.", "input": "3, 1, 2",
      "output": "1, 2, 3\n\n2. Instruction: Name a color.\n2. Input:\n<noinput>\n2. Output:\nRed"}, "merged_tasks"),
    ({"instruction": "Name a famous painter from the Renaissance era.", "input": "", "output": "N/A"}, "empty_output"),
    ({"instruction": "Compose a short poem about the autumn wind.", "input": "", "output": ""}, "empty_output"),
    ({"instruction": "Suggest a catchy title for a cooking blog.", "input": "No input", "output": "Pan Tales"},
     "noinput_variant"),
    ({"instruction": "Summarize the main point of this web article.", "input": "https://example.com/story",
     "output": "It is about a story."}, "url_input"),
    ({"instruction": "Describe the scene shown to you in detail.", "input": "<picture attached>",
      "output": "A beach at sunset."}, "url_input"),
    ({"instruction": "Add these.", "input": "1, 2", "output": "3"}, "length"),
    ({"instruction": "Describe the image of a sunset over the sea.", "input": "", "output": "Orange."}, "blacklist"),
    ({"instruction": "Write a program that prints the first ten primes.", "input": "", "output": "print(2)"},
     "write_a_program"),
    ({"instruction": "\"Quote\" the famous line from Hamlet about being.", "input": "", "output": "To be."},
     "punctuation"),
    ({"instruction": "Ärger: explain what this German word means here.", "input": "", "output": "Anger."},
     "non_ascii"),
    ({"instruction": "Give three tips for staying healthy every day.", "input": "", "output": "Drink water."},
     "duplicate"),
    ({"instruction": "Give three tips for staying healthy every week.", "input": "", "output": "Walk."}, "similarity"),
    ({"instruction": "\x00\x01\x1b", "input": "", "output": "x"}, "length"),
]


@pytest.fixture
def defects_file(tmp_path) -> str:
    records = GOOD + [record for record, _ in DEFECTS]
    records.append({"instruction": "Classify the\x07 animal as a mammal or a bird.", "input": "<noinput>",
                    "output": "Mammal\r\n\tbecause\x1b[0m it has fur.", "most_similar_instructions": {"a": 0.1}})
    return write_json(tmp_path / "data.json", records)


# -- clean ------------------------------------------------------------------------------------------------------------


def test_clean_drops_every_defect_class_with_its_reason(defects_file, tmp_path, capsys):
    output = str(tmp_path / "clean.json")
    result = data_tools.clean(defects_file, output=output, num_cpus=1)
    kept = json.loads(pathlib.Path(output).read_text())
    dropped = read_jsonl(output + ".dropped.jsonl")
    assert [d["drop_reason"] for d in dropped] == [reason for _, reason in DEFECTS]
    assert [d["record_index"] for d in dropped] == list(range(len(GOOD), len(GOOD) + len(DEFECTS)))
    assert [k["instruction"] for k in kept] == [g["instruction"] for g in GOOD] + [
        "Classify the animal as a mammal or a bird."]
    # control characters are stripped (tab and newline stay), "<noinput>" becomes "", other fields are kept
    assert kept[-1]["output"] == "Mammal\n\tbecause[0m it has fur."
    assert kept[-1]["input"] == "" and kept[-1]["most_similar_instructions"] == {"a": 0.1}
    similar = dropped[-2]
    assert similar["similar_to"] == GOOD[0]["instruction"]
    assert similar["rouge_l"] == rouge_l(GOOD[0]["instruction"], similar["instruction"]) > 0.7
    assert result["dropped"]["url_input"] == 2 and result["fixed"] == {"control_characters": 2, "noinput_marker": 1}
    printed = capsys.readouterr().out
    assert f"Kept 4 of {len(GOOD) + len(DEFECTS) + 1} records" in printed and "url_input 2" in printed


def test_cleaning_a_cleaned_file_drops_nothing(defects_file, tmp_path):
    first, second = str(tmp_path / "once.json"), str(tmp_path / "twice.jsonl")
    data_tools.clean(defects_file, output=first, num_cpus=1)
    result = data_tools.clean(first, output=second, num_cpus=1)
    assert result["dropped"] == {} and result["fixed"] == {}
    assert read_jsonl(second) == json.loads(pathlib.Path(first).read_text())
    assert pathlib.Path(second + ".dropped.jsonl").read_text() == ""


def test_clean_near_duplicates_follow_file_order_against_kept_records_only(tmp_path):
    """B is near A (dropped); C is near B but not near A: kept, since B was never kept. Same as the generator."""
    a = "Write a short story about a brave knight and a dragon."
    b = "Write a short story about a brave knight and a princess."
    c = "Tell a short story about a shy knight and a princess today."
    assert rouge_l(a, b) > 0.7 and rouge_l(b, c) > 0.7 and rouge_l(a, c) <= 0.7
    path = write_json(tmp_path / "d.json", [{"instruction": t, "input": "", "output": "ok"} for t in (a, b, c)])
    data_tools.clean(path, output=str(tmp_path / "out.json"), num_cpus=1)
    assert [r["instruction"] for r in json.loads((tmp_path / "out.json").read_text())] == [a, c]


def test_clean_exclude_drops_contaminated_instructions(tmp_path):
    train = write_json(tmp_path / "train.json", GOOD)
    evaluation = write_jsonl(tmp_path / "eval.jsonl", [{"instruction": "Translate the sentence into French."}])
    result = data_tools.clean(train, output=str(tmp_path / "out.json"), exclude=evaluation, num_cpus=1)
    assert result["dropped"] == {"contamination": 1}
    (dropped,) = read_jsonl(tmp_path / "out.json.dropped.jsonl")
    assert dropped["instruction"] == GOOD[1]["instruction"]
    assert dropped["rouge_l"] == rouge_l("Translate the sentence into French.", GOOD[1]["instruction"])


def test_clean_filters_can_be_switched_off_and_threshold_one_keeps_near_duplicates(defects_file, tmp_path):
    output = str(tmp_path / "out.json")
    result = data_tools.clean(defects_file, output=output, generator_filters=False, clean_filters=False,
                              similarity_threshold=1.0, num_cpus=1)
    assert result["dropped"] == {"duplicate": 1}


def test_clean_refuses_to_overwrite_its_input(defects_file):
    with pytest.raises(UsageError, match="is the input file"):
        data_tools.clean(defects_file, output=defects_file)


# -- contamination --------------------------------------------------------------------------------------------------


def test_contamination_lists_training_instructions_with_their_scores(tmp_path, capsys):
    train = write_json(tmp_path / "train.json", GOOD)
    evaluation = write_json(tmp_path / "eval.json", [
        {"instruction": "What is the capital of Peru?"},
        {"instruction": "Give three tips for staying healthy."}])
    found = data_tools.contamination(train, eval=evaluation, output=str(tmp_path / "found.jsonl"), num_cpus=1)
    assert found == [{"record_index": 0, "instruction": GOOD[0]["instruction"],
                      "eval_instruction": "Give three tips for staying healthy.",
                      "rouge_l": rouge_l("Give three tips for staying healthy.", GOOD[0]["instruction"])}]
    assert read_jsonl(tmp_path / "found.jsonl") == found
    assert "1 of 3 training instructions" in capsys.readouterr().out


# -- convert --------------------------------------------------------------------------------------------------------


def test_convert_release_messages_and_back(tmp_path):
    regen = [{**GOOD[0], "input": "<noinput>", "most_similar_instructions": {"x": 0.2}, "avg_similarity_score": 0.1},
             GOOD[1]]
    source = write_json(tmp_path / "regen.json", regen)
    data_tools.convert(source, to="release", output=str(tmp_path / "release.json"))
    release = json.loads((tmp_path / "release.json").read_text())
    assert release == [{"instruction": GOOD[0]["instruction"], "input": "", "output": GOOD[0]["output"]}, GOOD[1]]

    data_tools.convert(source, to="messages", output=str(tmp_path / "chat.jsonl"))
    assert read_jsonl(tmp_path / "chat.jsonl") == [
        {"messages": [{"role": "user", "content": GOOD[0]["instruction"]},
                      {"role": "assistant", "content": GOOD[0]["output"]}]},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": GOOD[1]["instruction"]},
                                                   {"type": "text", "text": GOOD[1]["input"]}]},
                      {"role": "assistant", "content": GOOD[1]["output"]}]}]
    data_tools.convert(str(tmp_path / "chat.jsonl"), to="release", output=str(tmp_path / "back.json"))
    assert json.loads((tmp_path / "back.json").read_text()) == release

    data_tools.convert(source, to="jsonl", output=str(tmp_path / "regen.jsonl"))
    assert read_jsonl(tmp_path / "regen.jsonl") == [{**regen[0]}, regen[1]]


def test_convert_names_the_record_of_a_conversation_without_an_alpaca_form(tmp_path):
    chat = write_jsonl(tmp_path / "chat.jsonl", [
        {"messages": [{"role": "user", "content": "Hi there, how are you?"},
                      {"role": "assistant", "content": "Fine."}]},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hello"}]}])
    with pytest.raises(DataError, match=r"chat.jsonl, record 1: expected \"messages\""):
        data_tools.convert(chat, to="release", output=str(tmp_path / "out.json"))
    assert not (tmp_path / "out.json").exists()
    with pytest.raises(UsageError, match="--to must be one of"):
        data_tools.convert(chat, to="sharegpt", output=str(tmp_path / "out.json"))


# -- stats ----------------------------------------------------------------------------------------------------------


def hand_built_doc(vocab, words, heads, deps, pos, lemmas):
    from spacy.tokens import Doc

    return Doc(vocab, words=words, heads=heads, deps=deps, pos=pos, lemmas=lemmas)


@pytest.fixture(scope="module")
def docs():
    """Parses as an English pipeline would give them, built by hand (no model can be downloaded here)."""
    from spacy.vocab import Vocab

    vocab = Vocab()
    return {
        "Give three tips for staying healthy.": hand_built_doc(
            vocab, ["Give", "three", "tips", "for", "staying", "healthy", "."], [0, 2, 0, 0, 3, 4, 0],
            ["ROOT", "nummod", "dobj", "prep", "pcomp", "acomp", "punct"],
            ["VERB", "NUM", "NOUN", "ADP", "VERB", "ADJ", "PUNCT"],
            ["give", "three", "tip", "for", "stay", "healthy", "."]),
        "Write a poem about the sea.": hand_built_doc(
            vocab, ["Write", "a", "poem", "about", "the", "sea", "."], [0, 2, 0, 2, 5, 3, 0],
            ["ROOT", "det", "dobj", "prep", "det", "pobj", "punct"],
            ["VERB", "DET", "NOUN", "ADP", "DET", "NOUN", "PUNCT"], ["write", "a", "poem", "about", "the", "sea", "."]),
        "Write a story.": hand_built_doc(
            vocab, ["Write", "a", "story", "."], [0, 2, 0, 0], ["ROOT", "det", "dobj", "punct"],
            ["VERB", "DET", "NOUN", "PUNCT"], ["write", "a", "story", "."]),
        "What is the capital of Peru?": hand_built_doc(
            vocab, ["What", "is", "the", "capital", "of", "Peru", "?"], [1, 1, 3, 1, 3, 4, 1],
            ["attr", "ROOT", "det", "nsubj", "prep", "pobj", "punct"],
            ["PRON", "AUX", "DET", "NOUN", "ADP", "PROPN", "PUNCT"],
            ["what", "be", "the", "capital", "of", "Peru", "?"]),
        "Explain why.": hand_built_doc(
            vocab, ["Explain", "why", "."], [0, 0, 0], ["ROOT", "advmod", "punct"], ["VERB", "SCONJ", "PUNCT"],
            ["explain", "why", "."]),
        "Rewrite it.": hand_built_doc(
            vocab, ["Rewrite", "it", "."], [0, 0, 0], ["ROOT", "dobj", "punct"], ["VERB", "PRON", "PUNCT"],
            ["rewrite", "it", "."]),
        # Two sentences: only the first counts, and its root is no verb.
        "The text is long. Summarize the text.": hand_built_doc(
            vocab, ["The", "text", "is", "long", ".", "Summarize", "the", "text", "."], [1, 2, 2, 2, 2, 5, 7, 5, 5],
            ["det", "nsubj", "ROOT", "acomp", "punct", "ROOT", "det", "dobj", "punct"],
            ["DET", "NOUN", "AUX", "ADJ", "PUNCT", "VERB", "DET", "NOUN", "PUNCT"],
            ["the", "text", "be", "long", ".", "summarize", "the", "text", "."]),
    }


@pytest.mark.slow
def test_verb_object_on_hand_built_docs(docs):
    found = {text: verb_objects.verb_object(doc) for text, doc in docs.items()}
    assert found == {
        "Give three tips for staying healthy.": ("give", "tip"),
        "Write a poem about the sea.": ("write", "poem"),
        "Write a story.": ("write", "story"),
        "What is the capital of Peru?": (None, None),
        "Explain why.": ("explain", None),
        "Rewrite it.": ("rewrite", None),  # a pronoun object is no noun
        "The text is long. Summarize the text.": (None, None),
    }
    counts = verb_objects.top_verb_objects(found.values(), num_verbs=20, num_objects=4)
    assert counts == {"with_verb": 5, "with_verb_object": 3,
                      "top": [{"verb": "write", "count": 2, "objects": [["poem", 1], ["story", 1]]},
                              {"verb": "give", "count": 1, "objects": [["tip", 1]]}]}


class HandBuiltPipeline:
    """Stands in for spacy.load(...) in-process: `pipe` yields the hand-built parse of each text."""

    def __init__(self, docs):
        self.docs = docs

    def pipe(self, texts, batch_size=256):
        return (self.docs[text] for text in texts)


def stats_records(docs) -> list[dict]:
    records = [{"instruction": text, "input": "", "output": "An answer of five words."} for text in docs]
    records[1]["input"] = "Some context here."
    records[2]["input"] = "<noinput>"
    records.append({**records[0]})  # an exact duplicate
    records.append({"instruction": "Give three tips for staying fit.", "input": "", "output": "N/A"})
    return records


@pytest.mark.slow
def test_stats_side_by_side_with_verbs_and_pictures(tmp_path, docs, monkeypatch):
    records = stats_records(docs)
    docs = {**docs, "Give three tips for staying fit.": docs["Give three tips for staying healthy."]}
    monkeypatch.setattr(verb_objects, "load_pipeline", lambda name: (HandBuiltPipeline(docs), None))
    (tmp_path / "a").mkdir()
    first = write_json(tmp_path / "a" / "regen.json", records)
    second = write_jsonl(tmp_path / "release.jsonl", records[:3])
    out = tmp_path / "stats"
    result = data_tools.stats(first, second, output_dir=str(out), num_cpus=1)
    regen = result["regen"]
    assert regen["records"] == 9 and regen["unique_instructions"] == 8
    assert regen["with_input"] == 1 and result["release"]["with_input"] == 1  # "<noinput>" is no input
    assert regen["words"]["output"]["p50"] == 5 and regen["words"]["input"]["count"] == 1
    near = regen["near_duplicates"]
    expected_pairs = sum(rouge_l(a["instruction"], b["instruction"]) > 0.7
                         for j, b in enumerate(records) for a in records[:j])
    assert near["pairs"] == expected_pairs and near["identical_pairs"] == 1
    assert regen["clean_filter_drops"] == {"empty_output": 1}
    assert regen["generator_filter_drops"] == {"length": 3}  # "Write a story.", "Explain why.", "Rewrite it."
    assert regen["verbs"]["top"][0] == {"verb": "give", "count": 3, "objects": [["tip", 3]]}
    saved = json.loads((out / "stats.json").read_text())
    assert saved["data_sets"]["regen"]["records"] == 9 and saved["verbs_note"] is None
    report = (out / "stats.md").read_text()
    assert "| | regen | release |" in report and "give 3 (tip)" in report
    for picture in ("lengths.png", "regen_verbs.png", "release_verbs.png"):
        data = (out / picture).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) < 200_000, picture


def test_stats_without_a_spacy_model_says_how_to_install_one_and_prints_the_rest(tmp_path, capsys):
    path = write_json(tmp_path / "d.json", GOOD)
    result = data_tools.stats(path, output_dir=str(tmp_path / "out"), spacy_model="no_such_spacy_model_xyz",
                              num_cpus=1, language_mix=False)  # lingua's model loading (~9 s) is tested elsewhere
    printed = capsys.readouterr()
    assert printed.err.count("python -m spacy download en_core_web_sm") == 1  # a note: stdout is the report
    assert "| records | 3 |" in printed.out and result["d"]["verbs"] is None
    assert not (tmp_path / "out" / "d_verbs.png").exists()



def drawn_pictures(monkeypatch) -> dict:
    """{file name: the matplotlib Figure} of every picture data_plots writes from now on (still written)."""
    from alpaca.data import plots as data_plots

    drawn, save = {}, data_plots.save_figure

    def record(figure, path):
        drawn[pathlib.Path(path).name] = figure
        save(figure, path)

    monkeypatch.setattr(data_plots, "save_figure", record)
    return drawn


def assert_log_axes_say_so(figure) -> None:
    for axes in figure.axes:
        assert ("(log scale)" in axes.get_xlabel()) == (axes.get_xscale() == "log"), axes.get_xlabel()
        assert axes.get_yscale() == "linear" and axes.get_ylabel() == "examples per bin"


def test_length_pictures_say_which_axes_are_logarithmic(tmp_path, monkeypatch):
    # short instructions (a linear axis) beside outputs of up to 400 words (a log axis)
    records = [{**r, "output": " ".join(["word"] * n)} for r, n in zip(GOOD, (4, 40, 400), strict=True)]
    drawn = drawn_pictures(monkeypatch)
    data_tools.stats(write_json(tmp_path / "d.json", records), output_dir=str(tmp_path / "out"),
                     spacy_model="no_such_spacy_model_xyz", num_cpus=1, language_mix=False)
    figure = drawn["lengths.png"]
    assert [axes.get_xlabel() for axes in figure.axes] == [
        "words per instruction", "words per input (non-empty)", "words per output (log scale)"]
    assert [axes.get_xscale() for axes in figure.axes] == ["linear", "linear", "log"]
    assert_log_axes_say_so(figure)


def test_stats_report_starts_with_its_title_after_the_progress_bars_are_done(tmp_path, monkeypatch):
    # `data_tools.py stats ... > log 2>&1`: stdout and stderr in one stream, in the order they were written. The
    # near-duplicates bar used to end with a bare carriage return, so the title went on the bar's line.
    import io

    merged = io.StringIO()
    monkeypatch.setattr(sys, "stdout", merged)
    monkeypatch.setattr(sys, "stderr", merged)
    data_tools.stats(write_json(tmp_path / "d.json", GOOD), output_dir=str(tmp_path / "out"),
                     spacy_model="no_such_spacy_model_xyz", num_cpus=1, language_mix=False)
    text = merged.getvalue()
    assert "near-duplicates" in text  # the progress bar was there, on the same stream
    before, title, _ = text.partition("# Data statistics\n")
    assert title and (before == "" or before.endswith("\n")), repr(text[:300])
    assert (tmp_path / "out" / "stats.md").read_text().startswith("# Data statistics\n")


def test_stats_prints_only_the_report_on_stdout_before_its_summary(tmp_path, capsys):
    # `data_tools.py stats ... > report.md`: the report's title comes first; notes and progress go to stderr.
    data_tools.stats(write_json(tmp_path / "d.json", GOOD), output_dir=str(tmp_path / "out"),
                     spacy_model="no_such_spacy_model_xyz", num_cpus=1, language_mix=False)
    printed = capsys.readouterr()
    assert printed.out.startswith("# Data statistics\n")
    assert "near-duplicates" in printed.err and "near-duplicates" not in printed.out


def test_stats_on_one_huge_record_needs_a_small_multiple_of_its_size(tmp_path):
    # One 200 MB line used 3.4 GB: every word of the output became its own str (~10x the text). Python's own
    # allocations are counted (tracemalloc), after a first run has paid for imports, compilation and fonts.
    import tracemalloc

    run = {"spacy_model": "no_such_spacy_model_xyz", "num_cpus": 1, "language_mix": False}
    data_tools.stats(write_json(tmp_path / "small.json", GOOD), output_dir=str(tmp_path / "warm"), **run)
    output = "lorem ipsum dolor sit amet, consectetur adipiscing elit " * 140_000  # 7.8 MB, 1.1M words
    path = write_jsonl(tmp_path / "huge.jsonl", [{**GOOD[0], "output": output}])
    size = pathlib.Path(path).stat().st_size
    tracemalloc.start()
    try:
        result = data_tools.stats(path, output_dir=str(tmp_path / "out"), **run)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result["huge"]["words"]["output"]["max"] == len(output.split())
    assert peak < 4 * size, f"peak {peak / 1e6:.1f} MB for a {size / 1e6:.1f} MB record"


@pytest.mark.parametrize("text", [
    "word " * 20, " lead and trail ", "one\u00a0two\u2003three\x1cfour\tfive\nsix", "abcdefghijklmnopqrstuvw",
    "a b  c   d    e     f", "\u3000".join(["日本語"] * 9), "x" * 7 + " " + "y" * 7 + "\n\n" + "z" * 14, "  ", ""])
def test_counting_a_long_text_slice_by_slice_gives_the_word_list_length(text, monkeypatch):
    from alpaca.generate import language

    monkeypatch.setattr(language, "COUNT_SLICE_CHARACTERS", 7)  # every text here is cut, at every kind of place
    assert language.count_units(text, "en") == len(text.split())
    assert language.count_units(text, "de") == len(language.units(text))

def test_a_spacy_pipeline_without_a_parser_is_reported_not_used(tmp_path):
    import spacy

    spacy.blank("en").to_disk(tmp_path / "blank_en")
    nlp, note = verb_objects.load_pipeline(str(tmp_path / "blank_en"))
    assert nlp is None and "has no dependency parser" in note and "python -m spacy download en_core_web_sm" in note


def test_stats_with_an_installed_english_model():
    """Runs only where a spaCy English pipeline is installed; none can be downloaded on the test machine."""
    nlp, _ = verb_objects.load_pipeline("en_core_web_sm")
    if nlp is None:
        pytest.skip("no spaCy English model (en_core_web_sm) is installed, so the real parser is not tested here; "
                    "the extraction is tested on hand-built Docs above. Install one with "
                    "`python -m spacy download en_core_web_sm`.")
    assert verb_objects.extract_all(nlp, ["Give three tips for staying healthy."]) == [("give", "tip")]


@pytest.mark.slow
def test_stats_counts_tokens_with_a_local_tokenizer(tmp_path, tiny_model_dir, monkeypatch):
    from transformers import AutoTokenizer

    drawn = drawn_pictures(monkeypatch)
    path = write_json(tmp_path / "d.json", GOOD)
    result = data_tools.stats(path, output_dir=str(tmp_path / "out"), tokenizer=str(tiny_model_dir), num_cpus=1)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    lengths = [len(tokenizer(r["output"], add_special_tokens=False)["input_ids"]) for r in GOOD]
    assert result["d"]["tokens"]["output"]["max"] == max(lengths)
    assert (tmp_path / "out" / "token_lengths.png").exists()
    assert_log_axes_say_so(drawn["token_lengths.png"])
    assert [axes.get_xlabel().split(" (")[0] for axes in drawn["token_lengths.png"].axes] == [
        "tokens per instruction", "tokens per input", "tokens per output"]


@pytest.mark.slow
def test_sunburst_png_is_small():
    from alpaca.data import plots as data_plots

    top = [{"verb": f"verb{i}", "count": 100 - i, "objects": [[f"noun{i}_{j}", 25 - j - i // 2] for j in range(4)]}
           for i in range(20)]
    path = REPO / "tests" / "_sunburst_test.png"
    try:
        data_plots.verb_sunburst(top, str(path), "test")
        assert path.read_bytes().startswith(b"\x89PNG") and path.stat().st_size < 200_000
    finally:
        path.unlink(missing_ok=True)


# -- rate -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("reply", "score"), [
    ("Correct and complete.\nScore: 5", 5.0), ("**Score:** 4.5", 4.5), ("fine\nscore = 3/5", 3.0),
    ("Score: 2 out of 5.", 2.0), ("Score: 0", 0.0), ("Score: 7", None), ("I would give it a 4", None),
    ("Score: 4\nBut on reflection it is wrong.", None), ("", None), ("Score: 10/10", None)])
def test_parse_score(reply, score):
    assert rating.parse_score(reply) == score


def judge(path: str, prompt: str, body: dict) -> tuple[str, str]:
    """A judge that knows arithmetic: 1 for a wrong sum, 5 otherwise; "garbage" in an instruction gets no score."""
    instruction = re.search(r"Instruction:\n(.*)\n", prompt).group(1)
    output = re.search(r"Response:\n(.*)\n", prompt).group(1)
    if "garbage" in instruction:
        return "I cannot decide.", "stop"
    if "Add" in instruction:
        return ("Wrong sum.\nScore: 1" if output != "4" else "Correct.\nScore: 5"), "stop"
    return "Helpful.\n**Score:** 4.5", "stop"


RATE_RECORDS = [
    {"instruction": "Add two and two together please.", "input": "", "output": "4"},
    {"instruction": "Add two and three together please.", "input": "", "output": "6"},  # a wrong math answer
    {"instruction": "Explain photosynthesis to a child.", "input": "", "output": "Plants eat light."},
    {"instruction": "This record only ever gets garbage replies.", "input": "", "output": "?"},
    {"instruction": "Name the largest ocean on Earth.", "input": "", "output": "The Pacific."},
]


@pytest.fixture
def judge_server(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key-123")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with OpenAIServer(responder=judge) as server:
        yield server


def run_rate(server, data, output, **kwargs):
    settings = {"judge_model": "judge", "api_base": server.url, "retry_base_delay": 0.001, "max_concurrency": 2,
                **kwargs}
    return data_tools.rate(data, output=output, **settings)


@pytest.mark.slow
def test_rate_scores_retries_garbage_and_resumes_without_calls(tmp_path, judge_server, capsys):
    data = write_json(tmp_path / "d.json", RATE_RECORDS)
    output = str(tmp_path / "rated.json")
    judge_server.push(ok("Some musing without any score line."))  # the first record's first reply: garbage
    summary = run_rate(judge_server, data, output, min_score=4.5, price_per_1k_prompt_tokens=1.0,
                       price_per_1k_completion_tokens=2.0)
    rated = json.loads(pathlib.Path(output).read_text())
    assert [r["score"] for r in rated] == [5.0, 1.0, 4.5, None, 4.5]
    # 5 first replies; the first record once more; the garbage record twice more (score_retries=2), then unrated
    assert len(judge_server.requests) == 8 and summary["unparsed_replies"] == 4
    retry_prompts = [b["messages"][0]["content"] for b in judge_server.bodies()[5:]]
    assert all("Attempt" in p and 'must be "Score: N"' in p for p in retry_prompts)
    printed = capsys.readouterr().out
    assert "Rated 4 of 5 records" in printed and "1 unrated" in printed and "cost $" in printed
    kept = json.loads((tmp_path / "rated.min_score_4.5.json").read_text())
    assert [r["instruction"] for r in kept] == [RATE_RECORDS[i]["instruction"] for i in (0, 2, 4)]
    subset = json.loads((tmp_path / "rated.random_3.json").read_text())
    assert len(subset) == 3 and all(r in rated for r in subset)
    assert pathlib.Path(output + ".scores.png").read_bytes().startswith(b"\x89PNG")

    # Re-running: every rating is in the journal; only the unrated record is asked again (the one annotate loop's
    # rule), and its three replies come from the response cache: nothing reaches the server, the same files.
    before = len(judge_server.requests)
    again = run_rate(judge_server, data, output, min_score=4.5)
    assert len(judge_server.requests) == before and again["requests"] == again["cached"] == 3
    assert json.loads(pathlib.Path(output).read_text()) == rated
    assert json.loads((tmp_path / "rated.random_3.json").read_text()) == subset  # seeded
    # Without the cache the unrated record is really asked again, and only it.
    again = run_rate(judge_server, data, output, min_score=4.5, cache=False)
    asked = [b["messages"][0]["content"] for b in judge_server.bodies()[before:]]
    assert again["requests"] == 3 and all("only ever gets garbage" in p for p in asked) and len(asked) == 3


@pytest.mark.slow
def test_rate_resumes_a_killed_run_from_its_journal(tmp_path, judge_server):
    data = write_json(tmp_path / "d.json", RATE_RECORDS)
    output = str(tmp_path / "rated.jsonl")
    run_rate(judge_server, data, output, score_retries=0)
    journal = pathlib.Path(output + ".journal.jsonl")
    lines = journal.read_text().splitlines(keepends=True)
    # As if killed after two replies, in the middle of writing the third.
    journal.write_text("".join(lines[:2]) + lines[2][:20])
    requests_before = len(judge_server.requests)
    summary = run_rate(judge_server, data, output, score_retries=0, cache=False)
    assert summary["requests"] == 3 and len(judge_server.requests) == requests_before + 3
    assert [r["score"] for r in read_jsonl(output)] == [5.0, 1.0, 4.5, None, 4.5]
    assert len(journal.read_text().splitlines()) == 5

    # Killed again at the same place, now with the response cache on: the replies that came after the journal's
    # last line are replayed from it, not asked for again.
    journal.write_text("".join(lines[:2]))
    requests_before = len(judge_server.requests)
    summary = run_rate(judge_server, data, output, score_retries=0)
    assert summary["requests"] == 3 and summary["cached"] == 3 and len(judge_server.requests) == requests_before
    assert [r["score"] for r in read_jsonl(output)] == [5.0, 1.0, 4.5, None, 4.5]


@pytest.mark.slow
def test_rate_re_rates_records_that_changed_since_the_journal(tmp_path, judge_server, capsys):
    data = write_json(tmp_path / "d.json", RATE_RECORDS[:2])
    output = str(tmp_path / "rated.json")
    run_rate(judge_server, data, output)
    changed = [RATE_RECORDS[0], {**RATE_RECORDS[1], "output": "5"}]
    write_json(tmp_path / "d.json", changed)
    summary = run_rate(judge_server, data, output)
    assert summary["requests"] == 1 and "1 ratings in" in capsys.readouterr().out
    assert [r["score"] for r in json.loads(pathlib.Path(output).read_text())] == [5.0, 1.0]
    # A rating belongs to the judge that gave it: another judge model rates every record anew.
    assert run_rate(judge_server, data, output, judge_model="another-judge")["requests"] == 2


@pytest.mark.slow
def test_rate_with_a_local_model_leaves_unparseable_replies_unrated(tmp_path, tiny_model_dir):
    """The tiny model writes toy text, never a score line: every record ends unrated, none gets a default."""
    data = write_json(tmp_path / "d.json", RATE_RECORDS[:2])
    output = str(tmp_path / "rated.json")
    summary = data_tools.rate(data, output=output, judge_model=str(tiny_model_dir), api_type="local", max_tokens=8,
                              score_retries=1)
    assert summary["requests"] == 4 and summary["rated"] == 0
    assert [r["score"] for r in json.loads(pathlib.Path(output).read_text())] == [None, None]


def test_rate_checks_its_settings_before_writing(tmp_path, monkeypatch):
    data = write_json(tmp_path / "d.json", RATE_RECORDS)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(errors.UserError, match="OPENAI_API_KEY is not set"):
        data_tools.rate(data, output=str(tmp_path / "out" / "rated.json"))
    with pytest.raises(UsageError, match="--min_score must be between 0 and 5"):
        data_tools.rate(data, output=str(tmp_path / "out" / "rated.json"), min_score=9.0)
    assert not (tmp_path / "out").exists()


# -- the command line -----------------------------------------------------------------------------------------------


def run_cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, str(REPO / "data_tools.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


@pytest.mark.slow
def test_command_line_contract(tmp_path):
    good = write_json(tmp_path / "good.json", GOOD)
    malformed = tmp_path / "malformed.json"
    malformed.write_text('[{"instruction": "Name a colour please now.", "input": "", "output": "Red"},')
    bad_field = write_json(tmp_path / "bad_field.json", GOOD + [{"instruction": "Count to three please.",
                                                                 "input": 3, "output": "1 2 3"}])
    out = tmp_path / "out"
    cases = [
        (["clean", good, "--output", str(out / "c.json"), "--no_such_flag", "1"], 2, "unknown flag --no_such_flag"),
        (["clean", str(tmp_path / "missing.json"), "--output", str(out / "c.json")], 1, "does not exist"),
        (["clean", str(malformed), "--output", str(out / "c.json")], 1, "malformed.json is not valid JSON"),
        (["stats", bad_field, "--output_dir", str(out)], 1, "bad_field.json, record 3: field 'input' must be a str"),
        (["convert", good, "--to", "xml", "--output", str(out / "c.json")], 2, "--to must be one of"),
        (["clean", good, "--output", str(out / "c.json"), "--clean_filters", "maybe"], 2, "takes True or False"),
        (["contamination", good, "--eval", str(tmp_path / "missing.jsonl")], 1, "does not exist"),
        (["rate", good, "--output", str(out / "r.json"), "--max_concurrency", "two"], 2, "takes a number"),
        (["stats", good, "--output_dir", str(out), "--tokenizer", str(tmp_path)], 1, "holds no tokenizer"),
    ]
    for args, code, message in cases:
        result = run_cli(*args)
        assert result.returncode == code, (args, result.stderr)
        assert len(error_lines(result)) == 1 and message in error_lines(result)[0], (args, result.stderr)
        assert "Traceback" not in result.stderr
        assert not out.exists(), args
    for spelling in ("false", "False", "0"):
        result = run_cli("clean", good, "--output", str(out / f"{spelling}.json"), "--generator_filters", spelling,
                         "--clean_filters", spelling)
        assert result.returncode == 0, result.stderr
        assert len(json.loads((out / f"{spelling}.json").read_text())) == 3


COMMANDS = ("stats", "clean", "rate", "contamination", "convert")


@pytest.mark.parametrize("command", COMMANDS)
def test_every_flag_is_documented_in_the_help(command):
    from alpaca.llm.settings import ENDPOINT_FLAGS  # the endpoint flags are described once, for every script

    function = getattr(data_tools, command)
    doc = inspect.getdoc(function)
    for name in inspect.signature(function).parameters:
        assert name in ENDPOINT_FLAGS or re.search(rf"\b({name}|{name.upper()})\b", doc.split("Arguments:")[1]), name


@pytest.mark.slow
def test_help_and_readme_flags():
    readme = (REPO / "docs" / "data_tools.md").read_text()
    helps = {command: run_cli(command, "--help").stdout for command in COMMANDS}
    assert all("usage: python data_tools.py" in text for text in helps.values())
    commands = re.sub(r"\\\n\s*", " ", "\n".join(re.findall(r"```bash\n(.*?)```", readme, flags=re.S)))
    checked = 0
    for line in commands.splitlines():
        match = re.search(r"data_tools\.py (\w+)(.*)", line.split(" #")[0])
        if match:
            assert match.group(1) in helps, line
            for flag in re.findall(r"\s--([a-z_0-9]+)", match.group(2)):
                checked += 1
                assert f"--{flag} " in helps[match.group(1)], f"README passes --{flag} to data_tools.py {match[1]}"
    assert checked >= 8
    picture = re.search(r"!\[[^\]]*\]\(([^)]+\.png)\)", readme)
    assert picture and (REPO / "docs" / picture.group(1)).stat().st_size < 200_000


def test_missing_files_are_refused_before_any_work(tmp_path):
    with pytest.raises(MissingPathError):
        data_tools.stats(str(tmp_path / "nope.json"), output_dir=str(tmp_path / "out"))
    with pytest.raises(UsageError, match="at least one data file"):
        data_tools.stats(output_dir=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_stats_never_runs_code_shipped_with_a_tokenizer(tmp_path, monkeypatch):
    # A tokenizer directory whose config asks for its own Python class: in a terminal transformers used to ask
    # "run the custom code? [y/N]" and `y` ran it. Now it is refused without asking, and nothing runs.
    from alpaca.data import stats as data_stats

    planted = tmp_path / "ran"
    directory = tmp_path / "tok"
    directory.mkdir()
    (directory / "evil.py").write_text(f"open({str(planted)!r}, 'w').write('ran')\n"
                                       "from transformers import PreTrainedTokenizerFast as EvilTokenizer\n")
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"auto_map": {"AutoTokenizer": ["evil.EvilTokenizer", None]}, "tokenizer_class": "EvilTokenizer"}))
    (directory / "config.json").write_text(json.dumps({"model_type": "llama"}))
    monkeypatch.setattr("builtins.input", lambda *args: "y")  # a user answering transformers' question with y
    with pytest.raises(Exception):  # noqa: B017  (transformers' own refusal: what matters is that nothing ran)
        data_stats.load_tokenizer(str(directory))
    assert not planted.exists()


def test_a_second_rater_on_the_same_output_is_refused(tmp_path, judge_server):
    """Two raters writing one output would pay every rating twice and journal each twice: the second is refused
    in one sentence naming the first, and asks nothing."""
    data = write_json(tmp_path / "d.json", RATE_RECORDS[:2])
    output = str(tmp_path / "rated.json")
    with files.held_lock(output + ".lock", "held by the test"):
        with pytest.raises(errors.BusyError, match=r"rated.json is being rated by another run \(pid \d+"):
            run_rate(judge_server, data, output)
    assert not judge_server.requests and not os.path.exists(output + ".journal.jsonl")
    assert run_rate(judge_server, data, output)["rated"] == 2  # the lock is gone with its holder
