"""Stanford Alpaca, reproduced: one package, one folder per stage (generate, train, infer, weights, evaluate,
data), over shared parts (errors, files, prompts, the LLM client). The paper's commands stay at the repository's
top as thin scripts that call into it."""

import pathlib

# The repository's data files (prompt.txt, seed_tasks.jsonl, static/): the 2023 layout keeps them at the top.
REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
