"""What `python inference.py` checks before it imports torch and transformers (seconds of imports): a
--model_name_or_path or --lora_path that is no local directory and cannot come from the Hub."""

import os
import sys

from alpaca import cli, files


def check_paths(argv: list[str]) -> None:
    """The model-path mistakes argv alone shows, as the loader would report them after its imports: a path that is
    a file, or a name that is no directory while the Hub is off or unreachable. A directory that is there is the
    loader's to judge; flag mistakes are left to the parser, which names them."""
    _, flags = cli.split_argv(argv)
    if flags.get("help") or flags.get("api_base") is not None:
        return
    for flag in ("model_name_or_path", "lora_path"):
        path = flags.get(flag)
        if isinstance(path, str) and not os.path.isdir(os.path.expanduser(path)):
            files.check_local_weights(path)


def check_paths_first(argv: list[str] | None = None) -> None:
    """`check_paths` for `python inference.py`: a mistake is one `error:` line and exit 1 (cli.check_first), before
    the heavy imports."""
    cli.check_first(lambda: check_paths(sys.argv[1:] if argv is None else argv))
