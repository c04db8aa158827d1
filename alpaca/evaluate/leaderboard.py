r"""One table from several judge.py runs.

    python judge.py leaderboard judged judged-dpo judged-cleaned --output leaderboard.md

Each directory is the --output_dir of a judge.py run, with its results.json. Their models go into one table sorted
by length-controlled win rate, with the 95% intervals (win_rates.format_table), printed and, with --output, written
as Markdown (or as JSON for a .json path) with the picture of win_rates.png for every model beside it (the same
path ending in .png). Runs are put side by side only when their provenance (alpaca/evaluate/provenance.py) agrees
on COMPARED: the reference answers (the file's sha256), the judge model, the judge mode and the hash of the judge
prompt (and of its conversation layout, where conversations were judged); a win rate against another reference,
or from another judge, is another number. The same model in two runs
is listed once when its answers file is the same, and refused when it is not. Paired differences between models stay
within a run (results.json's win_rate_differences).
"""

import json
import os
import pathlib

from alpaca import files
from alpaca.errors import DataError, MissingPathError, UsageError
from alpaca.evaluate.win_rates import (
    NOT_MODELS,
    PROVENANCE_KEY,
    format_table,
    interval,
    lc_notes,
    model_names,
    number,
    plot_win_rates,
)

RESULTS_NAME = "results.json"
COMPARED = ("reference_outputs", "judge_model", "judge_mode", "judge_prompt_sha256")  # what runs must share
# ... and this too, recorded only by runs whose reference holds conversations (on one reference, all runs or none)
COMPARED_WHERE_RECORDED = ("judge_conversation_prompt_sha256",)
RESULT_FIELDS = ("win_rate", "win_rate_ci95", "lc_win_rate", "lc_win_rate_ci95", "n_total", "n_wins", "n_losses",
                 "n_ties", "n_unjudged", "avg_length", "per_category")  # what every model entry of ours has


# -- reading a run --------------------------------------------------------------------------------------------


def not_ours(results: object) -> str | None:
    """Why a parsed results.json is not one judge.py writes (a model entry with RESULT_FIELDS, at least one), or
    None when it is."""
    if not isinstance(results, dict):
        return f"it holds a JSON {type(results).__name__}, not an object of models"
    names = [name for name in results if name not in NOT_MODELS]
    if not names:
        return "it names no model"
    for name in names:
        entry = results[name]
        missing = [field for field in RESULT_FIELDS if not isinstance(entry, dict) or field not in entry]
        if missing:
            return f"its entry {name!r} lacks {', '.join(missing)}"
    return None


def provenance_problem(results: dict) -> str | None:
    """Why a results.json's provenance cannot be compared (a field missing, or a model without its answers file's
    sha256), or None."""
    record = results[PROVENANCE_KEY]
    if not isinstance(record, dict):
        return "its provenance is not an object"
    missing = [field for field in (*COMPARED, "model_outputs") if field not in record]
    if missing:
        return f"its provenance lacks {', '.join(missing)}"
    if not isinstance(record["reference_outputs"], dict) or "sha256" not in record["reference_outputs"]:
        return "its provenance names no sha256 of the reference answers"
    models = record["model_outputs"] if isinstance(record["model_outputs"], dict) else {}
    unnamed = [name for name in results if name not in NOT_MODELS
               and not (isinstance(models.get(name), dict) and "sha256" in models[name])]
    return f"its provenance names no answers file of {unnamed[0]!r}" if unnamed else None


def read_run(directory: str) -> dict:
    """The results.json of a judge.py output directory, checked: one sentence (a MissingPathError or a DataError)
    for a directory that is missing or holds none, a file that is not valid JSON or not judge.py's, and one written
    before judge.py recorded its provenance."""
    if not os.path.isdir(directory):
        what = "is not a directory" if os.path.exists(directory) else "does not exist"
        raise MissingPathError(f"{directory} {what}; name the --output_dir of a judge.py run.")
    path = os.path.join(directory, RESULTS_NAME)
    if not os.path.isfile(path):
        raise MissingPathError(f"{directory} holds no {RESULTS_NAME}; name the --output_dir of a judge.py run "
                               "(judge into it first).")
    try:
        with open(path, encoding="utf-8") as f:
            results = files.parse_json(f.read(), path)  # a hostile file is a sentence, not a RecursionError
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{path} is not valid JSON ({error}); it is not a results.json of judge.py.") from None
    problem = not_ours(results)
    if problem:
        raise DataError(f"{path} is not a results.json of judge.py: {problem}.")
    if PROVENANCE_KEY not in results:
        raise DataError(f"{path} records no provenance (judge.py wrote it before it recorded one), so nothing says "
                        "which reference and judge its numbers come from; re-run the judge.py command that wrote it: "
                        "its journal answers every judgment, so that makes no call and adds the provenance.")
    problem = provenance_problem(results)
    if problem:
        raise DataError(f"{path} is not a results.json of judge.py: {problem}.")
    return results


# -- merging runs ---------------------------------------------------------------------------------------------


def shown(field: str, record: dict) -> str:
    """A provenance field as a sentence names it: the reference by its path and sha256, a hash by its first 12
    hex digits, anything else as it is."""
    value = record.get(field)
    if field == "reference_outputs":
        return f"{value.get('path', '?')} (sha256 {str(value['sha256'])[:12]})"
    return str(value)[:12] if field.endswith("sha256") else repr(value)


def same_value(field: str, a: dict, b: dict) -> bool:
    if field == "reference_outputs":  # the same answers, wherever the file was
        return a[field]["sha256"] == b[field]["sha256"]
    return a.get(field) == b.get(field)


def merge(runs: list[tuple[str, dict]]) -> tuple[dict, dict[str, str]]:
    """({model: its results entry}, {model: the directory it comes from}) of runs that agree on COMPARED. Raises
    DataError naming the first differing field and its two values, or two different answers files of one name."""
    first_directory, first = runs[0]
    table: dict[str, dict] = {}
    source: dict[str, str] = {}
    answers_file: dict[str, dict] = {}  # {model: the provenance of its answers file}
    for directory, results in runs:
        for field in (*COMPARED, *COMPARED_WHERE_RECORDED):
            if not same_value(field, first[PROVENANCE_KEY], results[PROVENANCE_KEY]):
                raise DataError(
                    f"{directory} cannot join {first_directory} in one leaderboard: its {field} is "
                    f"{shown(field, results[PROVENANCE_KEY])}, not {shown(field, first[PROVENANCE_KEY])}; a "
                    "leaderboard compares models judged against the same reference answers by the same judge model, "
                    "mode and prompt, so judge its models again with those of the other runs.")
        for name in (name for name in results if name not in NOT_MODELS):
            answers = results[PROVENANCE_KEY]["model_outputs"][name]
            if name not in table:
                table[name], source[name], answers_file[name] = results[name], directory, answers
                continue
            earlier = answers_file[name]
            if earlier["sha256"] != answers["sha256"]:
                raise DataError(
                    f"{source[name]} and {directory} both hold a model named {name!r}, from different answers files "
                    f"({earlier.get('path', '?')}, sha256 {earlier['sha256'][:12]}; {answers.get('path', '?')}, "
                    f"sha256 {answers['sha256'][:12]}); give them distinct 'generator' fields and judge again, or "
                    "leave one run out.")
            print(f"{name} is in {source[name]} and {directory} with the same answers file: listed once, from "
                  f"{source[name]}.")
    return table, source


# -- writing the table ----------------------------------------------------------------------------------------


def markdown(summary: dict) -> str:
    """The leaderboard as a Markdown page: who judged against what, then one row per model, best first."""
    record = summary["provenance"]
    rows = summary["leaderboard"]
    reference = rows[0]["reference"] if rows and "reference" in rows[0] else "the reference"
    lines = [
        "# Leaderboard", "",
        f"Judged by `{record['judge_model']}` ({record['judge_mode']} mode, judge prompt sha256 "
        f"`{record['judge_prompt_sha256'][:12]}`) against `{reference}` (`{record['reference_outputs'].get('path')}`, "
        f"sha256 `{record['reference_outputs']['sha256'][:12]}`); {len(rows)} models from {len(record['runs'])} runs, "
        "sorted by length-controlled (LC) win rate. Intervals are bootstrap 95% intervals over the instructions.", "",
        "| rank | model | LC win rate (95% CI) | win rate (95% CI) | wins / losses / ties | unjudged "
        "| avg length (model / ref) | run |",
        "|---:|---|---|---|---|---:|---|---|"]
    for row in rows:
        lengths = row["avg_length"]
        lines.append(f"| {row['rank']} | {row['model'].replace('|', '&#124;')} "
                     f"| {number(row['lc_win_rate'])} {interval(row['lc_win_rate_ci95'])} "
                     f"| {number(row['win_rate'])} {interval(row['win_rate_ci95'])} "
                     f"| {row['n_wins']} / {row['n_losses']} / {row['n_ties']} | {row['n_unjudged']} "
                     f"| {lengths['model']:.0f} / {lengths['reference']:.0f} | `{row['run']}` |")
    notes = lc_notes({row["model"]: row for row in rows})
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def leaderboard(*directories: str, output: str | None = None, plot: bool = True) -> dict:
    """One table of the models of several judge.py runs, sorted by length-controlled win rate, with 95% intervals.

        python judge.py leaderboard judged judged-dpo --output leaderboard.md   # + leaderboard.png

    Arguments:
        DIRECTORIES: the --output_dir of judge.py runs (each holds a results.json), judged against the same
            reference answers by the same judge model, mode and prompt; a run that differs is refused, naming the
            field and the two values.
        output: also write the table here: Markdown, or JSON for a path ending in .json. The picture (each
            model's win rate and LC win rate with their intervals, and per category) goes beside it, the same path
            ending in .png.
        plot: with --output, draw that picture.
    Returns {"leaderboard": one row per model, best first (rank, model, run, and its results.json fields),
    "provenance": the shared judge, mode, prompt hash and reference, and each run's own provenance}.
    """
    if not directories:
        raise UsageError("name at least one judge.py output directory: python judge.py leaderboard DIR [DIR ...].")
    picture = None
    if output is not None:
        output = str(output)
        picture = str(pathlib.Path(output).with_suffix(".png")) if plot else None
        if picture == output:
            raise UsageError(f"--output {output} would be overwritten by the picture; give the table a .md or .json "
                             "name (the picture goes beside it, ending in .png).")
    directories = tuple(str(directory) for directory in directories)
    runs = [(directory, read_run(directory)) for directory in directories]
    inputs = [os.path.join(directory, RESULTS_NAME) for directory in directories]
    for path in filter(None, (output, picture)):
        files.check_output_file(path, inputs=inputs, flag="--output")
    table, source = merge(runs)
    first = runs[0][1][PROVENANCE_KEY]
    summary = {
        "leaderboard": [{"rank": rank, "model": name, "run": source[name], **table[name]}
                        for rank, name in enumerate(model_names(table), start=1)],
        "provenance": {**{field: first[field] for field in (*COMPARED, *COMPARED_WHERE_RECORDED) if field in first},
                       "runs": {directory: results[PROVENANCE_KEY] for directory, results in runs}}}
    print(f"Leaderboard of {len(table)} models from {len(runs)} runs, judged by {first['judge_model']} "
          f"({first['judge_mode']} mode) against {shown('reference_outputs', first)}:")
    print(format_table(table))
    own = {directory: [name for name in table if source[name] == directory] for directory in directories}
    print("runs: " + "; ".join(f"{directory} ({', '.join(names) or 'no model of its own'})"
                               for directory, names in own.items()))
    if output is None:
        return summary
    if output.endswith(".json"):
        files.write_json(output, summary, inputs=inputs, indent=2, ensure_ascii=False)
    else:
        files.write_atomically(output, markdown(summary), inputs=inputs)
    if picture:
        plot_win_rates(table, picture)
    print(f"Wrote {output}" + (f" and {picture}" if picture else ""))
    return summary
