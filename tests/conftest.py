"""Shared fixtures and helpers: the tiny local base model every test trains, diffs or samples from, the loopback
OpenAI-compatible server, the pictures a test draws (as matplotlib Figures), and the text of a Self-Instruct task as
a model writes it."""

import os
import pathlib
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the scripts are top-level modules, as in the original repo
sys.path.insert(0, str(REPO / "scripts"))

# Nothing may come from a model hub: fail fast instead of hanging on a network call.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> pathlib.Path:
    """A LLaMA-style base model (hidden 64, 2 layers) and tokenizer without a pad token, built once."""
    from alpaca.testing.tiny_model import make_tiny_model

    return make_tiny_model(str(tmp_path_factory.mktemp("tiny-llama")))


@pytest.fixture(scope="session")
def repo_dir() -> pathlib.Path:
    return REPO


@pytest.fixture
def openai_server(monkeypatch):
    """A loopback OpenAI-compatible server (alpaca/testing/openai_server.py) with a test key in the environment."""
    from alpaca.testing.openai_server import OpenAIServer

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key-123")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_ORG", raising=False)
    with OpenAIServer() as server:
        yield server


@pytest.fixture
def saved_figures(monkeypatch) -> dict:
    """{file name: the matplotlib Figure saved there}, filled as the code under test saves its pictures, so that a
    test reads the artists (texts, colours, bar sizes) of a picture instead of comparing pixels."""
    from matplotlib.figure import Figure

    saved, original = {}, Figure.savefig

    def record(self, path, *args, **kwargs):
        saved[os.path.basename(str(path))] = self
        return original(self, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", record)
    return saved


def task(n: int, instruction: str, task_input: str = "<noinput>", output: str = "An answer.") -> str:
    """Task number `n` as a model continuing the Self-Instruct prompt writes it, ending with its `###` line."""
    return f"{n}. Instruction: {instruction}\n{n}. Input:\n{task_input}\n{n}. Output:\n{output}\n###\n"
