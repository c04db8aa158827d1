"""The Alpaca prompt templates: the one place they are written down (no torch or transformers import).

`train.py` re-exports `PROMPT_DICT`; `inference.py`, `judge.py`, `data_tools.py` and the chat template of every
checkpoint this project writes format examples with `format_prompt`.
"""

PROMPT_DICT = {
    "prompt_input": (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
    ),
    "prompt_no_input": (
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Response:"
    ),
}


def format_prompt(instruction: str, input: str | None = "") -> str:
    """The Alpaca prompt for one example: `prompt_input` when `input` is non-empty, else `prompt_no_input`.

    Braces inside the instruction or input are kept as typed: they are values here, not format fields.
    """
    if input:
        return PROMPT_DICT["prompt_input"].format(instruction=instruction, input=input)
    return PROMPT_DICT["prompt_no_input"].format(instruction=instruction)
