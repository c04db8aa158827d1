"""Add the Alpaca chat template to a checkpoint saved without one, so serving engines format prompts as in training.

    python scripts/add_chat_template.py output/alpaca
    python scripts/add_chat_template.py output/alpaca-lora                 # a LoRA adapter directory (its tokenizer)
    python scripts/add_chat_template.py output/alpaca --overwrite True     # replace another chat template

train.py writes the template itself since it learned to (chat_template.jinja beside the tokenizer); checkpoints
saved before, or fine-tuned from a chat model whose template they kept, need this. It writes DIR/chat_template.jinja
(read by transformers, transformers serve, vLLM and llama.cpp's GGUF converter), then checks it: rendered and
tokenized as the engines do, every example of data/demo_alpaca.json must give the token ids train.py trained on.
No other file is changed, except that with --overwrite a template kept in tokenizer_config.json is removed there.
"""

import json
import os
import pathlib

from alpaca import cli
from alpaca.prompts.alpaca import (
    INPUT_ROLE,
    alpaca_chat_template,
    choose_bos_prefix,
    format_prompt,
    is_alpaca_chat_template,
    is_current_chat_template,
)

REPO = pathlib.Path(__file__).resolve().parent.parent

CHECK_DATA = REPO / "data" / "demo_alpaca.json"


def chat_messages(instruction: str, input: str) -> list[dict]:
    """The conversation a client sends for one example (the same as inference.py's)."""
    return [{"role": "user", "content": instruction}] + ([{"role": INPUT_ROLE, "content": input}] if input else [])


def check_template(model_dir: str, examples: list[dict]) -> None:
    """Raise DataError unless the saved template reproduces training's prompt ids for every example."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    for index, example in enumerate(examples):
        rendered = tokenizer.apply_chat_template(chat_messages(example["instruction"], example["input"]),
                                                 tokenize=False, add_generation_prompt=True)
        served = tokenizer(rendered, add_special_tokens=False)["input_ids"]
        trained = tokenizer(format_prompt(example["instruction"], example["input"]))["input_ids"]
        if served != trained:
            raise cli.DataError(f"The chat template written to {model_dir} does not reproduce training's token ids "
                                f"for example {index} of {CHECK_DATA.name}; please report this with the tokenizer.")


def saved_template(directory: pathlib.Path) -> str | None:
    """The chat template the directory holds now, from chat_template.jinja or tokenizer_config.json."""
    if (directory / "chat_template.jinja").is_file():
        return (directory / "chat_template.jinja").read_text(encoding="utf-8")
    config = _tokenizer_config(directory)
    return config.get("chat_template") if isinstance(config.get("chat_template"), str) else None


def _tokenizer_config(directory: pathlib.Path) -> dict:
    try:
        config = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (ValueError, UnicodeDecodeError) as error:
        raise cli.DataError(f"{directory / 'tokenizer_config.json'} is not valid JSON ({error}).") from None
    return config if isinstance(config, dict) else {}


def _write_atomically(path: pathlib.Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def add_chat_template(model_dir: str, overwrite: bool = False) -> None:
    """Write the Alpaca chat template into MODEL_DIR (a checkpoint or LoRA adapter directory with its tokenizer).

    Args:
        model_dir: the directory train.py wrote (--output_dir, its merged/ directory, or a LoRA adapter directory).
        overwrite: replace a chat template that is not the Alpaca one (e.g. kept from a chat base model).
    """
    directory = pathlib.Path(model_dir)
    if not directory.is_dir():
        raise cli.MissingPathError(f"'{model_dir}' is not a directory; pass the checkpoint directory train.py wrote.")
    if not any((directory / name).is_file() for name in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        raise cli.MissingPathError(f"'{model_dir}' holds no tokenizer files (tokenizer.json, tokenizer.model, ...); "
                                   "the chat template is saved with the tokenizer, so copy the tokenizer there first.")
    current = saved_template(directory)
    if is_current_chat_template(current):
        print(f"{model_dir} already has the Alpaca chat template; nothing to do.")
        return
    if current is not None and not overwrite and not is_alpaca_chat_template(current):  # ours, older: updated
        raise cli.OutputExistsError(f"{model_dir} already has a chat template that is not the Alpaca one; pass "
                                    "--overwrite True to replace it (a model fine-tuned by train.py expects Alpaca "
                                    "prompts).")
    from transformers import AutoTokenizer

    from alpaca import files

    bos_prefix = choose_bos_prefix(AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False))
    if bos_prefix is None:
        raise cli.DataError(f"No Alpaca chat template reproduces the token ids of {model_dir}'s tokenizer (tokenized "
                            "as engines do, without special tokens); serve it with --api_type completions instead.")
    config = _tokenizer_config(directory)
    if "chat_template" in config:  # transformers prefers the .jinja file, but other tools may read this one
        del config["chat_template"]
        _write_atomically(directory / "tokenizer_config.json", json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    _write_atomically(directory / "chat_template.jinja", alpaca_chat_template(bos_prefix))
    check_template(model_dir, files.load_alpaca_records(CHECK_DATA))
    print(f"Wrote {directory / 'chat_template.jinja'} (prompt start: {bos_prefix}); checked on "
          f"{CHECK_DATA.name}: rendered chats give training's token ids.")


if __name__ == "__main__":
    cli.report_errors(lambda: cli.run_commands({"add_chat_template": add_chat_template}, default="add_chat_template",
                                               prog="python scripts/add_chat_template.py"))
