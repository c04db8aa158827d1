"""The Alpaca prompt templates: the one place they are written down (no torch or transformers import).

`train.py` re-exports `PROMPT_DICT`; `inference.py`, `judge.py`, `data_tools.py` and the chat template of every
checkpoint this project writes format examples with `format_prompt`.
"""

import json

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


# ----------------------------------------------------------------------------- the chat template
#
# Serving engines (transformers serve, vLLM, llama.cpp) build the prompt from the tokenizer's chat template, then
# tokenize the text WITHOUT adding special tokens. The template below turns an OpenAI-style conversation into the
# exact Alpaca prompt of training, and emits the BOS token itself where training's tokenizer added one, so that the
# served model sees the token ids it was trained on. The rules (README, "Serving"; docs/conversations.md):
#   - a user message is an instruction; an empty or missing input selects `prompt_no_input` for the first turn;
#   - the input is a message with role "input" right after the user message, or the second text part of the user
#     message (engines that flatten content parts into one string, like transformers serve, need the role);
#   - an optional first system message replaces the preamble ("Below is an instruction ... request.");
#   - an assistant message follows each user message: it is rendered as the response plus eos, as in training, inside
#     {% generation %} so that apply_chat_template(..., return_assistant_tokens_mask=True) marks it for the loss;
#   - a conversation is the first turn's Alpaca prompt and answer, then each later turn as another
#     "\n\n### Instruction:\n..." (and "\n\n### Input:\n...") and "\n\n### Response:" block right after the
#     previous answer's eos; one user turn renders exactly as PROMPT_DICT;
#   - anything else (two user turns in a row, an assistant turn first, tools, images) raises an error that says so.

INPUT_ROLE = "input"
TEMPLATE_MARKER = "The Alpaca prompt as a chat template"  # how a template of ours, of any version, is recognised
_HEADERS = {"instruction": "\n\n### Instruction:\n", "input": "\n\n### Input:\n", "response": "\n\n### Response:"}
PREAMBLES = {  # the first paragraph of each template, up to the instruction header
    name: template.split(_HEADERS["instruction"])[0] for name, template in PROMPT_DICT.items()
}
# How the prompt starts, per tokenizer family: nothing (no BOS in training), the BOS token, or the BOS token and a
# space (SentencePiece: "<s>" + text loses the "▁" that tokenizer(text) puts before the first word; "<s> " keeps it).
BOS_PREFIXES = {"none": "", "bos": "{{- bos_token -}}", "bos_space": "{{- bos_token ~ ' ' -}}"}

# A user turn is written out when the message after it (or the end) shows that it is complete: the first turn's
# preamble depends on its input. FLUSH_USER_TURN is that block; it appears twice (no macros: llama.cpp's minja).
_FLUSH_USER_TURN = """\
    {%- if ns.turns == 0 -%}
BOS_PREFIX
      {%- if ns.system is not none -%}{{- ns.system -}}
      {%- elif ns.input -%}{{- PREAMBLE_INPUT -}}
      {%- else -%}{{- PREAMBLE_NO_INPUT -}}
      {%- endif -%}
    {%- endif -%}
    {{- INSTRUCTION_HEADER ~ ns.instruction -}}
    {%- if ns.input -%}{{- INPUT_HEADER ~ ns.input -}}{%- endif -%}
    {%- set ns.turns = ns.turns + 1 -%}"""

_CHAT_TEMPLATE = """\
{#- TEMPLATE_MARKER (github.com/tatsu-lab/stanford_alpaca); written by prompts.py. -#}
{%- set ns = namespace(state='start', system=none, instruction='', input='', turns=0) -%}
{%- for message in messages -%}
  {%- set role = message['role'] -%}
  {%- set content = message['content'] -%}
  {%- if content is string -%}
    {%- set texts = [content] -%}
  {%- elif content is defined and content is not none and content is iterable and content is not mapping -%}
    {%- set parts = namespace(texts=[]) -%}
    {%- for part in content -%}
      {%- if part['type'] != 'text' -%}
        {{- raise_exception(ERROR_NOT_TEXT ~ part['type'] ~ ' part.') -}}
      {%- endif -%}
      {%- if part['text'] is not string -%}
        {{- raise_exception(ERROR_PART_NO_TEXT ~ role ~ '.') -}}
      {%- endif -%}
      {%- set parts.texts = parts.texts + [part['text']] -%}
    {%- endfor -%}
    {%- set texts = parts.texts -%}
  {%- else -%}
    {{- raise_exception(ERROR_NO_TEXT ~ role ~ '.') -}}
  {%- endif -%}
  {%- if role == 'system' and ns.state == 'start' -%}
    {%- set ns.system = texts | join('') -%}
    {%- set ns.state = 'system' -%}
  {%- elif role == 'user' and ns.state in ['start', 'system', 'assistant'] -%}
    {%- if texts | length > 2 -%}
      {{- raise_exception(ERROR_PARTS ~ (texts | length) ~ '.') -}}
    {%- endif -%}
    {%- set ns.instruction = texts[0] if texts else '' -%}
    {%- if ns.instruction == '' -%}
      {{- raise_exception(ERROR_EMPTY_INSTRUCTION) -}}
    {%- endif -%}
    {%- set ns.input = texts[1] if texts | length > 1 else '' -%}
    {%- set ns.state = 'user' -%}
  {%- elif role == 'INPUT_ROLE' and ns.state == 'user' -%}
    {%- if ns.input -%}
      {{- raise_exception(ERROR_INPUT_TWICE) -}}
    {%- endif -%}
    {%- set ns.input = texts | join('') -%}
    {%- set ns.state = 'INPUT_ROLE' -%}
  {%- elif role == 'assistant' and ns.state in ['user', 'INPUT_ROLE'] -%}
FLUSH_USER_TURN
    {{- RESPONSE_HEADER -}}
    {%- generation -%}{{- texts | join('') ~ eos_token -}}{%- endgeneration -%}
    {%- set ns.state = 'assistant' -%}
  {%- elif role == 'user' -%}
    {{- raise_exception(ERROR_SEVERAL_USERS) -}}
  {%- elif role == 'system' -%}
    {{- raise_exception(ERROR_SYSTEM) -}}
  {%- elif role in ['user', 'INPUT_ROLE', 'assistant'] -%}
    {{- raise_exception(ERROR_ORDER ~ role ~ ' message cannot come here.') -}}
  {%- else -%}
    {{- raise_exception(ERROR_ROLE ~ role ~ '.') -}}
  {%- endif -%}
{%- endfor -%}
{%- if ns.state in ['start', 'system'] -%}
  {{- raise_exception(ERROR_NO_USER) -}}
{%- endif -%}
{%- if ns.state in ['user', 'INPUT_ROLE'] -%}
FLUSH_USER_TURN
  {%- if add_generation_prompt -%}{{- RESPONSE_HEADER -}}{%- endif -%}
{%- endif -%}
"""


# What the template says when a conversation cannot be an Alpaca prompt (the role or count is appended).
TEMPLATE_ERRORS = {
    "ERROR_NOT_TEXT": "The Alpaca chat template takes text only, not a ",
    "ERROR_NO_TEXT": "The Alpaca chat template needs text content in every message; none in a message with role ",
    "ERROR_PARTS": "An Alpaca prompt has an instruction and at most one input: give the user message one or two "
                   "text parts, not ",
    "ERROR_INPUT_TWICE": f"The input is given twice: as a second text part of the user message and as a message "
                         f"with role '{INPUT_ROLE}'.",
    "ERROR_SEVERAL_USERS": f"User and assistant turns alternate in an Alpaca conversation, not several user turns in "
                           f"a row: give each instruction one user message (its input as a message with role "
                           f"'{INPUT_ROLE}', or as a second text part).",
    "ERROR_SYSTEM": "A system message may only come first; it replaces the Alpaca preamble.",
    "ERROR_ORDER": f"The Alpaca chat template takes the roles system (optional), then user, {INPUT_ROLE} (optional) "
                   "and assistant, repeated in this order; a ",
    "ERROR_ROLE": f"The Alpaca chat template knows the roles system, user, {INPUT_ROLE} and assistant, not ",
    "ERROR_NO_USER": "An Alpaca prompt needs a user message: the instruction.",
    "ERROR_EMPTY_INSTRUCTION": "The user message holds the instruction, and it is empty; an Alpaca prompt needs one.",
    "ERROR_PART_NO_TEXT": "A text part needs its 'text' (a string); one has none, in a message with role ",
}


def _jinja_string(text: str) -> str:
    """`text` as a Jinja string literal (JSON's escapes are a subset of Jinja's and of llama.cpp's minja)."""
    return json.dumps(text, ensure_ascii=True)


def alpaca_chat_template(bos_prefix: str = "none") -> str:
    """The Jinja chat template that renders a conversation as the Alpaca prompt (rules above).

    `bos_prefix` (a key of BOS_PREFIXES) is what the template emits first; `choose_bos_prefix` finds the one whose
    tokenization without special tokens equals training's tokenization with them.
    """
    replacements = {
        "BOS_PREFIX": BOS_PREFIXES[bos_prefix],
        "PREAMBLE_INPUT": _jinja_string(PREAMBLES["prompt_input"]),
        "PREAMBLE_NO_INPUT": _jinja_string(PREAMBLES["prompt_no_input"]),
        "INSTRUCTION_HEADER": _jinja_string(_HEADERS["instruction"]),
        "INPUT_HEADER": _jinja_string(_HEADERS["input"]),
        "RESPONSE_HEADER": _jinja_string(_HEADERS["response"]),
        "INPUT_ROLE": INPUT_ROLE,
        "TEMPLATE_MARKER": TEMPLATE_MARKER,
        **{name: _jinja_string(message) for name, message in TEMPLATE_ERRORS.items()},
    }
    template = _CHAT_TEMPLATE.replace("FLUSH_USER_TURN", _FLUSH_USER_TURN)
    for placeholder, value in replacements.items():
        template = template.replace(placeholder, value)
    return template


def is_alpaca_chat_template(template: str | None) -> bool:
    """Whether `template` was written by this module (any BOS prefix, this version or an earlier one)."""
    return isinstance(template, str) and TEMPLATE_MARKER in template


def is_current_chat_template(template: str | None) -> bool:
    """Whether `template` is exactly one this version of the module writes."""
    return template in {alpaca_chat_template(prefix) for prefix in BOS_PREFIXES}


# Examples on which `choose_bos_prefix` compares token ids: with and without input, spaces and a non-ASCII word.
_PROBES = [("Name a colour.", ""), ("Translate the sentence.", "  Bonjour à tous ! "), (" x", "")]


def choose_bos_prefix(tokenizer) -> str | None:
    """The BOS_PREFIXES key whose rendered text, tokenized without special tokens (as engines do), gives the ids
    `tokenizer(prompt)` gives in training, on a few probe prompts; None when no prefix does.

    `tokenizer` is any Hugging Face tokenizer (duck-typed: this module imports no transformers).
    """
    for name, jinja in BOS_PREFIXES.items():
        bos = tokenizer.bos_token or ""
        if jinja and not bos:
            continue
        start = {"none": "", "bos": bos, "bos_space": bos + " "}[name]
        if all(tokenizer(start + format_prompt(instruction, input), add_special_tokens=False)["input_ids"]
               == tokenizer(format_prompt(instruction, input))["input_ids"] for instruction, input in _PROBES):
            return name
    return None


def attach_chat_template(tokenizer) -> str | None:
    """Set the Alpaca chat template on `tokenizer` (saved with it as chat_template.jinja by save_pretrained).

    Returns the template, or None (and leaves the tokenizer alone) when no template can reproduce training's token
    ids for this tokenizer.
    """
    bos_prefix = choose_bos_prefix(tokenizer)
    if bos_prefix is None:
        return None
    tokenizer.chat_template = alpaca_chat_template(bos_prefix)
    return tokenizer.chat_template
