"""The command line of `python judge.py`: the judge (the default command), blind human evaluation, preference pairs
for train_dpo.py, and one table from several runs, each a function whose signature is its flags (alpaca/cli.py)."""

from alpaca import cli
from alpaca.evaluate import human, leaderboard, preferences
from alpaca.evaluate.judge import evaluate
from alpaca.llm.settings import ENDPOINT_FLAGS

COMMANDS = {"evaluate": evaluate, "human": human.human, "human_results": human.human_results,
            "preferences": preferences.preferences, "leaderboard": leaderboard.leaderboard}


def main(argv: list[str] | None = None) -> object:
    """Run one command of judge.py (`evaluate` when none is named) on `argv`."""
    return cli.run_commands(COMMANDS, argv=argv, prog="python judge.py", default="evaluate",
                            flag_help=ENDPOINT_FLAGS)


def entry_point() -> None:
    """The command line of `python judge.py`."""
    cli.report_errors(main, "interrupted: every verdict so far is saved in output_dir/judgments.jsonl; re-run the "
                            "same command to finish.")
