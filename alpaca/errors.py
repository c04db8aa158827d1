"""The errors a user can act on: every "your input is wrong" error of the package (a flag, a path, a data record,
a file, an endpoint). The command line (alpaca/cli.py) prints one of these as a single `error: <sentence>` line
and exits with its `exit_code`; any other exception is a bug and keeps its traceback.

This module imports nothing of the package, so every layer can raise these without depending on the command line.
"""


class UserError(Exception):
    """Something the user can fix (a flag, a path, a data record, an endpoint): reported in one line, exit 1."""

    exit_code = 1


class UsageError(UserError):
    """A command-line mistake: an unknown flag or command, a value of the wrong kind or out of range, a missing
    required flag. Exit 2."""

    exit_code = 2


class DataError(UserError, ValueError):
    """An input file or record that cannot be used; the message names the file and the record or line."""


class MissingPathError(UserError, FileNotFoundError):
    """A path the user gave that does not exist (or is not the kind of file it must be)."""


class OutputExistsError(UserError, FileExistsError):
    """An output that would overwrite something the user has not asked us to overwrite."""


class OutputPathError(UsageError):
    """An output path that cannot be written as asked: a directory, a device or a link where a file should be,
    a file where a directory should be, or an input of the same run. A command-line mistake: exit 2."""


class JournalError(UserError):
    """A journal (an append-only file a run resumes from) holds a line the run never writes; the message names
    the file and the line. Nothing is deleted: the user repairs the line."""


class BusyError(UserError):
    """An output directory in use by another run (its lock is held); the message names the holder."""


class LLMError(UserError, RuntimeError):
    """A failure of a model endpoint that retrying cannot fix (bad key, unknown model, unreachable endpoint, retries
    spent); the message says what to do. A user error: reported in one line, without a traceback."""
