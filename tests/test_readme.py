"""The README cannot drift from the code: its Quickstart is what CI runs, and its CPU commands run here."""

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text(encoding="utf-8")
MARKER = r"<!-- readme-test: cpu (\d+) -->"


def bash_blocks(text: str) -> list[str]:
    """The ```bash blocks that directly follow a `<!-- readme-test: cpu N -->` line, ordered by N."""
    blocks = re.findall(MARKER + r"\n```bash\n(.*?)```", text, flags=re.S)
    return [block for _, block in sorted(blocks, key=lambda found: int(found[0]))]


def test_quickstart_is_two_commands_and_ci_runs_the_test_one():
    quickstart = re.search(r"## Quickstart\n\n```bash\n(.*?)```", README, flags=re.S)
    assert quickstart, "README must open with a Quickstart bash block"
    commands = [line.split("#")[0].strip() for line in quickstart.group(1).splitlines() if line.strip()]
    assert commands == ["bash scripts/demo.sh", "bash scripts/test.sh"]
    ci = (REPO / ".ci" / "run").read_text()
    assert "\nbash scripts/test.sh\n" in ci
    for script in ("scripts/demo.sh", "scripts/test.sh", "scripts/setup.sh"):
        assert (REPO / script).exists(), script


@pytest.mark.slow
def test_readme_names_only_flags_that_exist():
    """Every --flag in a README command line is accepted by the script it is passed to."""
    helps = {
        "train.py": _help([sys.executable, "train.py", "--help"]),
        "inference.py": _help([sys.executable, "inference.py", "--help"]),
        "generate_instruction": _help([sys.executable, "-m", "generate_instruction",
                                       "generate_instruction_following_data", "--help"]),
        # fire lists positional arguments in capitals (PATH_RAW); they are passed as flags all the same
        "weight_diff.py": (_help([sys.executable, "weight_diff.py", "make_diff", "--help"])
                           + _help([sys.executable, "weight_diff.py", "recover", "--help"])).lower(),
        "judge.py": "".join(_help([sys.executable, "judge.py", *command, "--help"])
                            for command in ([], ["human"], ["human_results"])),
    }
    commands = re.sub(r"\\\n\s*", " ", "\n".join(re.findall(r"```bash\n(.*?)```", README, flags=re.S)))
    checked = 0
    for line in commands.splitlines():
        script = next((s for s in helps if s in line.split("#")[0]), None)
        if script is None:
            continue
        after_script = line.split(" #")[0].split(script, 1)[1]  # torchrun's own flags come before it
        for flag in re.findall(r"\s--([a-z_0-9]+)", after_script):
            checked += 1
            assert re.search(rf"\b{flag}\b", helps[script]), f"README passes --{flag} to {script}: unknown flag"
    assert checked > 40


def _help(command: list[str]) -> str:
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    return result.stdout + result.stderr


@pytest.mark.slow
@pytest.mark.multiprocess
def test_quickstart_demo_and_readme_cpu_commands_run(tmp_path):
    """The one end-to-end run: README block 1 is the Quickstart demo (minus the install: the suite already runs
    in that venv), which builds and fine-tunes the tiny model; the other CPU blocks run on its outputs."""
    blocks = bash_blocks(README)
    assert len(blocks) == 4, "README marks its CPU commands with <!-- readme-test: cpu N -->"
    assert blocks[0].startswith("bash scripts/demo.sh"), "README's first CPU block runs the demo"
    workdir = tmp_path / "repo"
    shutil.copytree(REPO, workdir, ignore=shutil.ignore_patterns(".venv", ".git", "demo_out", "output",
                                                                 "tiny-llama", "__pycache__", ".*_cache"))
    (workdir / ".venv").symlink_to(pathlib.Path(sys.executable).parent.parent)
    env = {**os.environ, "PATH": f"{pathlib.Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_DISABLED": "true", "DEMO_SKIP_SETUP": "1"}
    outputs = []
    for block in blocks:
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=workdir, env=env,
                                capture_output=True, text=True, timeout=1200)
        assert result.returncode == 0, f"README block failed:\n{block}\n--- output ---\n{result.stdout[-3000:]}" \
                                       f"\n{result.stderr[-5000:]}"
        outputs.append(result.stdout + result.stderr)

    demo = workdir / "demo_out"
    assert "bit-exact: every tensor" in outputs[0]
    assert re.search(r"Kept \d+ of \d+ parsed instructions from 2 requests", outputs[0])
    answers = json.loads((demo / "answers.json").read_text())
    assert len(answers) == 4 and all(isinstance(a["output"], str) for a in answers)
    assert "Pacific Ocean" in answers[0]["output"]  # a question seen in training: fine-tuning took hold
    assert (demo / "served_answer.txt").read_text().strip() == answers[0]["output"]  # served = local answer
    assert (demo / "generated" / "regen.json").exists()
    judged = json.loads((demo / "judged" / "results.json").read_text())
    assert judged["tuned"]["n_total"] == 20 and judged["tuned"]["reference"] == "base"
    assert (demo / "judged" / "win_rates.png").exists()

    assert (workdir / "output" / "tiny-alpaca" / "model.safetensors").exists()
    assert "bit-exact: every tensor" in outputs[1]
    assert (workdir / "output" / "tiny-generated" / "regen.json").exists()
