"""Every prompt of the project, in one place:

- alpaca.py: the two Alpaca templates (PROMPT_DICT, the training and inference prompt) and the same prompt as a
  chat template for serving engines; conversation.py: conversations in that format.
- judge.py: the pairwise judge's prompt and its verdict parser.
- rating.py: the rater's prompt and its score parser.
- Self-Instruct's prompt is the repository's prompt.txt (the 2023 file), filled in by
  alpaca.generate.self_instruct.encode_prompt.
"""
