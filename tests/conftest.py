"""Shared fixtures and helpers: the tiny local base model every test trains, diffs or samples from, the loopback
OpenAI-compatible server, the pictures a test draws (as matplotlib Figures), the text of a Self-Instruct task as a
model writes it, and the tokenizer families and `transformers serve` fixture of the chat-template tests. The tests
mirror the package: tests/generate/ tests alpaca/generate/, and so on; the top level holds the tests of the shared
modules, the scripts and the docs."""

import copy
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

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


def kill_once_journaled(argv: list[str], journal: pathlib.Path, lines: int = 5) -> None:
    """Run `python ARGV` in the repository and SIGKILL it as soon as `journal` holds `lines` lines (at most 60 s),
    as a crash mid-run would; then wait a moment for the server to record any request sent just before."""
    import signal

    process = subprocess.Popen([sys.executable, *argv], cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=dict(os.environ))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not journal.exists() or journal.read_text().count("\n") < lines):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    time.sleep(0.5)


def task(n: int, instruction: str, task_input: str = "<noinput>", output: str = "An answer.") -> str:
    """Task number `n` as a model continuing the Self-Instruct prompt writes it, ending with its `###` line."""
    return f"{n}. Instruction: {instruction}\n{n}. Input:\n{task_input}\n{n}. Output:\n{output}\n###\n"


# ----------------------------------------------------------------------------- chat templates and serving
# (tests/infer/test_serving.py and tests/train/test_conversations.py)

DEMO = json.loads((REPO / "data" / "demo_alpaca.json").read_text(encoding="utf-8"))


def train_like(tokenizer):
    """The tokenizer as train.py leaves it: [PAD] added when missing, a training length, the template attached."""
    from alpaca.prompts.alpaca import attach_chat_template

    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": "[PAD]"})
    tokenizer.model_max_length = 512
    assert attach_chat_template(tokenizer) is not None
    return tokenizer


@pytest.fixture(scope="module")
def byte_level_bpe():
    """A byte-level BPE (GPT-2 family) trained here on the seed tasks; no model hub."""
    from tokenizers import ByteLevelBPETokenizer

    from alpaca.prompts.alpaca import PROMPT_DICT

    lines = []
    for raw in (REPO / "seed_tasks.jsonl").read_text(encoding="utf-8").splitlines():
        task = json.loads(raw)
        lines += [task["instruction"]] + [f"{i['input']} {i['output']}" for i in task["instances"]]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(lines + list(PROMPT_DICT.values()), vocab_size=800, special_tokens=["<s>", "</s>"],
                            show_progress=False)
    return bpe._tokenizer


def make_tokenizer(kind: str, tiny_model_dir, byte_level_bpe):
    """A tokenizer of one family (KINDS): the tiny model's SentencePiece, or the byte-level BPE with or without BOS."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if kind == "sentencepiece":  # LLaMA-style: <s> added in front, "▁" before the first word
        return AutoTokenizer.from_pretrained(tiny_model_dir)
    from tokenizers import processors

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=copy.deepcopy(byte_level_bpe), bos_token="<s>",
                                        eos_token="</s>")
    if kind == "byte_level_bos":  # as Llama 3 and OPT: the post-processor puts BOS in front
        tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", tokenizer.bos_token_id)])
    return tokenizer


KINDS = {"sentencepiece": "bos_space", "byte_level": "none", "byte_level_bos": "bos"}


def run_script(args: list[str], cwd=REPO, timeout=180) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model_dir):
    """`transformers serve` on 127.0.0.1 with the tiny model, its template added by our repair command."""
    model_dir = tmp_path_factory.mktemp("served") / "tiny-alpaca"
    shutil.copytree(tiny_model_dir, model_dir)
    assert run_script(["scripts/add_chat_template.py", str(model_dir)]).returncode == 0
    port = free_port()
    executable = pathlib.Path(sys.executable).parent / "transformers"
    log = open(model_dir.parent / "serve.log", "w")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    process = subprocess.Popen([str(executable), "serve", str(model_dir), "--host", "127.0.0.1", "--port", str(port),
                                "--device", "cpu"], stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((model_dir.parent / "serve.log").read_text()[-3000:]) from None
                time.sleep(0.5)
        yield f"{base}/v1", model_dir
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def post_json(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())
