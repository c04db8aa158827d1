"""The command-line layer every script shares: flags, booleans, and how a mistake is reported.

- `parse_bool`: the one true/false parser (`True`, `true`, `1`, `yes` / `False`, `false`, `0`, `no`).
- `run_commands`: fire-style subcommands (`python weight_diff.py recover --path_raw A ...`) whose flags are checked
  against the function's signature, and converted (booleans by the default's or annotation's type), before the
  function runs: a typo fails in a second, not after an hour of work.
- The errors themselves live in alpaca/errors.py (`UserError` and its subclasses), so that library code can raise
  them without importing the command line.
- `report_errors`: prints a `UserError` as one `error: <sentence>` line (once, on rank 0 under torchrun) and exits
  1, or 2 for command-line usage, 130 for Ctrl-C; any other exception is a bug and keeps its traceback.
"""

import argparse
import difflib
import inspect
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import NoReturn, get_args

from fire.parser import DefaultParseValue

from alpaca.errors import (  # noqa: F401  (re-exported: the command line reports them)
    DataError,
    MissingPathError,
    OutputExistsError,
    UsageError,
    UserError,
)

_TRUE = {"true", "1", "yes", "y", "t", "on"}
_FALSE = {"false", "0", "no", "n", "f", "off"}


def parse_bool(value: bool | int | str | None, flag: str = "value") -> bool:
    """`value` as a bool. Strings are read case-insensitively; anything else unclear is a UsageError.

    fire and argparse hand over `--clean false` as the string 'false', which Python takes for True: every script
    reads its booleans through here so that all spellings mean what a user means.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE:
        return True
    if isinstance(value, str) and value.strip().lower() in _FALSE:
        return False
    raise UsageError(f"{flag} takes True or False, not {value!r}.")


def argparse_bool(value: str) -> bool:
    """`type=` for argparse flags: the same spellings as `parse_bool`."""
    try:
        return parse_bool(value)
    except UsageError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def closest_hint(name: str, known: list[str]) -> str:
    """`name`, with the closest of `known` suggested when one is close: "--max_step (did you mean --max_steps?)".
    A name that begins a known one (an abbreviation, which is refused) suggests that one first."""
    match = [k for k in known if k.startswith(name)][:1] or difflib.get_close_matches(name, known, n=1)
    return f"{name} (did you mean {match[0]}?)" if match else name


def looks_like_a_command(word: str, commands: list[str]) -> bool:
    """Whether the first word of a command line that names no command was meant as one (a typo such as `humn`),
    rather than a positional value of the default command (a file path)."""
    if word.startswith("-") or os.path.exists(word):
        return False
    return bool(difflib.get_close_matches(word, commands, n=1)) or not any(c in word for c in "./")


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose mistakes raise `UsageError` (one line via `report_errors`) instead of printing usage, that
    takes exact flag names only (no abbreviations: `--instr` is not `--instruction`), and that names the closest
    real flag for a mistyped one."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message}; `{self.prog} --help` lists the flags.")

    def parse_args(self, args=None, namespace=None):
        namespace, extras = self.parse_known_args(args, namespace)
        if extras:
            known = [option for action in self._actions for option in action.option_strings]
            flags = [arg.split("=", 1)[0] for arg in extras if arg.startswith("-")] or extras
            raise UsageError(f"unknown flag {', '.join(closest_hint(flag, known) for flag in flags)}; "
                             f"`{self.prog} --help` lists the flags.")
        return namespace


# ----------------------------------------------------------------------------- fire-style dispatch

def split_argv(argv: list[str]) -> tuple[list[str], dict[str, object]]:
    """(positional strings, {flag: string}) from `a b --x 1 --y=2 --z`; a bare flag is True; `-h` is `--help`.

    `--flag` followed by another `--flag` or by the end is a bare flag. The strings are typed by `bind_flags`.
    """
    positional, flags, i = [], {}, 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help"):
            flags["help"] = True
        elif arg.startswith("--") and len(arg) > 2:
            name, has_value, value = arg[2:].partition("=")
            if not has_value and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                value, has_value = argv[i + 1], True
                i += 1
            flags[name.replace("-", "_")] = value if has_value else True
        else:
            positional.append(arg)
        i += 1
    return positional, flags


def _takes(parameter: inspect.Parameter, kind: type) -> bool:
    """Whether the parameter is declared (by its default or its annotation) to take a `kind`."""
    annotation = parameter.annotation
    if isinstance(annotation, str):  # postponed annotations: "bool", "str | None"
        return kind.__name__ in annotation.replace(" ", "").split("|")
    return type(parameter.default) is kind or annotation is kind or kind in get_args(annotation)


def typed_value(parameter: inspect.Parameter, value: object, flag: str) -> object:
    """A command-line string as the parameter's type: booleans by `parse_bool`, strings kept as typed (a path
    `--output_dir 2024` stays '2024'), anything else read as fire reads it (numbers, lists, dicts)."""
    if _takes(parameter, bool):
        return parse_bool(value, flag)
    if not isinstance(value, str) or _takes(parameter, str):
        return value
    value = DefaultParseValue(value)
    if _takes(parameter, float) and not _takes(parameter, int) and isinstance(value, int):
        value = float(value)
    if (_takes(parameter, int) or _takes(parameter, float)) and (isinstance(value, bool)
                                                                 or not isinstance(value, (int, float))):
        raise UsageError(f"{flag} takes a number, not {value!r}.")
    if _takes(parameter, int) and not _takes(parameter, float) and isinstance(value, float):
        raise UsageError(f"{flag} takes a whole number, not {value!r}.")
    return value


def bind_flags(function: Callable, positional: list, flags: dict, prog: str) -> inspect.BoundArguments:
    """Bind command-line values to `function`'s parameters, or raise UsageError naming what does not fit.

    Unknown flags, missing required parameters and extra positionals are refused, and every value is typed by
    `typed_value` (a boolean that is not one, a number that is not one: refused), all before `function` runs.
    """
    signature = inspect.signature(function)
    parameters = signature.parameters
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    unknown = [closest_hint(f"--{name}", [f"--{p}" for p in parameters]) for name in flags
               if name not in parameters and not accepts_any]
    if unknown:
        raise UsageError(f"unknown flag {', '.join(unknown)}; `{prog} --help` lists the flags.")
    try:
        bound = signature.bind(*positional, **flags)
    except TypeError as error:  # a missing required value, or one too many positionals
        missing = [f"--{name}" for name, p in parameters.items() if p.default is p.empty and name not in flags
                   and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)][len(positional):]
        what = f"missing {', '.join(missing)}" if missing else str(error)
        raise UsageError(f"{what}; `{prog} --help` lists the flags.") from None
    for name, value in bound.arguments.items():
        parameter = parameters[name]
        if parameter.kind is parameter.VAR_POSITIONAL:
            bound.arguments[name] = tuple(typed_value(parameter, v, name.upper()) for v in value)
        elif parameter.kind is parameter.VAR_KEYWORD:
            bound.arguments[name] = {k: v if not isinstance(v, str) else DefaultParseValue(v) for k, v in value.items()}
        else:
            bound.arguments[name] = typed_value(parameter, value, f"--{name}")
    return bound


def command_help(function: Callable, prog: str, flag_help: dict[str, str] | None = None) -> str:
    """--help text: usage, the docstring, and every flag with its default (and its description from `flag_help`,
    where the flag's meaning is defined once for several commands, such as the endpoint settings)."""
    lines = []
    for name, parameter in inspect.signature(function).parameters.items():
        if parameter.kind is parameter.VAR_POSITIONAL:
            lines.append(f"    {name.upper()} ...")
        elif parameter.default is parameter.empty:
            lines.append(f"    --{name} (required)")
        elif parameter.kind is not parameter.VAR_KEYWORD:
            lines.append(f"    --{name} {parameter.default!r}")
        if flag_help and name in flag_help:
            lines[-1] += f"\n        {flag_help[name]}"
    return f"usage: {prog} [--flag value ...]\n\n{inspect.getdoc(function) or ''}\n\nflags and their defaults:\n" \
           + "\n".join(lines)


def run_commands(commands: dict[str, Callable], argv: list[str] | None = None, prog: str | None = None,
                 default: str | None = None, flag_help: dict[str, str] | None = None) -> object:
    """Run `commands[argv[0]]` with the rest of argv as its flags, checked first (see `bind_flags`).

    With `default`, argv that does not start with a command name runs that command (`judge.py --model_outputs ...`
    and `judge.py human ...`). `--help` prints the command's help; without a command it lists the commands.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    prog = prog or f"python {os.path.basename(sys.argv[0])}"
    if argv and argv[0] in commands:
        name, argv = argv[0], argv[1:]
    elif default is not None and argv and looks_like_a_command(argv[0], list(commands)):
        raise UsageError(f"unknown command {closest_hint(argv[0], list(commands))}; use one of: "
                         f"{', '.join(commands)} (or flags alone for {default}).")
    elif default is not None:
        name = default
    else:
        listing = "\n".join(f"  {command:<14} {(inspect.getdoc(f) or '').splitlines()[0] if inspect.getdoc(f) else ''}"
                            for command, f in commands.items())
        if not argv or argv[0] in ("-h", "--help"):
            print(f"usage: {prog} COMMAND [--flag value ...]\n\ncommands:\n{listing}\n\n"
                  f"`{prog} COMMAND --help` lists a command's flags.")
            return None
        raise UsageError(f"unknown command {closest_hint(argv[0], list(commands))}; use one of: {', '.join(commands)}.")
    function = commands[name]
    command_prog = prog if name == default else f"{prog} {name}"
    positional, flags = split_argv(argv)
    if flags.pop("help", False) is True:
        others = [command for command in commands if command != name]
        print(command_help(function, command_prog, flag_help)
              + (f"\n\nother commands: {', '.join(others)} (`{prog} COMMAND --help`)" if name == default and others
                 else ""))
        return None
    bound = bind_flags(function, positional, flags, command_prog)
    return function(*bound.args, **bound.kwargs)


# ----------------------------------------------------------------------------- error reporting

RANK_EXIT_DELAY = 10.0  # seconds; rank 0 exits long before, and torchrun then stops this rank


def is_main_process() -> bool:
    """True outside torchrun and on its rank 0: the process that speaks for the run."""
    return os.environ.get("RANK", "0") == "0"


def raise_keyboard_interrupt(signum, frame) -> None:
    """A SIGTERM handler (kill, timeout, SLURM): wind down as for Ctrl-C, so that cleanup and saving run."""
    raise KeyboardInterrupt


def exit_with(error: UserError) -> NoReturn:
    """End the process on a user's mistake: `error: <sentence>` on stderr (rank 0 only), exit 1 (2 for usage).

    Under torchrun every rank finds the same mistake, and torchrun stops the others as soon as one exits: a rank
    other than 0 waits up to RANK_EXIT_DELAY seconds first, so that rank 0 has said the sentence (a silent rank 1
    that exited first got rank 0 killed before it printed)."""
    if is_main_process():
        print(f"error: {error}", file=sys.stderr)
    else:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # torchrun's stop ends this rank quietly, as intended
        time.sleep(RANK_EXIT_DELAY)
    sys.exit(error.exit_code)


def check_first(check: Callable[[], None]) -> None:
    """Run `check()` (a script's checks before its heavy imports); a UserError ends the process as report_errors
    does (exit_with), and the script goes on otherwise."""
    try:
        check()
    except UserError as error:
        exit_with(error)


def report_errors(main: Callable[[], object], interrupted_message: str = "interrupted.",
                  sigterm_as_interrupt: bool = True) -> NoReturn:
    """Run `main()` and exit: 0 on success; a `UserError` prints `error: <sentence>` (rank 0 only) and exits 1
    (2 for usage); Ctrl-C prints `interrupted_message` and exits 130. Any other exception propagates with its
    traceback: it is a bug to report, not a mistake to explain."""
    if sigterm_as_interrupt:
        signal.signal(signal.SIGTERM, raise_keyboard_interrupt)
    try:
        main()
    except UserError as error:
        exit_with(error)
    except KeyboardInterrupt:
        if is_main_process():
            print(interrupted_message, file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:  # `... --help | head` closed our stdout: not an error worth a traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    sys.exit(0)
