"""The README and docs/ cannot drift from the code: the Quickstart is what CI runs, the CPU commands marked in
README.md and docs/*.md run here, every flag they pass exists, and every page and picture they link to exists."""

import concurrent.futures
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
README_MAX_BYTES = 15 * 1024


def documentation() -> dict[str, str]:
    """README.md and every docs/*.md page, by path relative to the repo root."""
    pages = {"README.md": README}
    for page in sorted((REPO / "docs").glob("*.md")):
        pages[f"docs/{page.name}"] = page.read_text(encoding="utf-8")
    return pages


def marked_blocks() -> list[tuple[int, str, str]]:
    """(N, page, block) for every `<!-- readme-test: cpu N -->` block of README.md and docs/*.md, ordered by N."""
    found = [(int(number), page, block) for page, text in documentation().items()
             for number, block in re.findall(MARKER + r"\n```bash\n(.*?)```", text, flags=re.S)]
    return sorted(found)


def test_quickstart_is_two_commands_and_ci_runs_the_test_one():
    quickstart = re.search(r"## Quickstart\n\n```bash\n(.*?)```", README, flags=re.S)
    assert quickstart, "README must open with a Quickstart bash block"
    commands = [line.split("#")[0].strip() for line in quickstart.group(1).splitlines() if line.strip()]
    assert commands == ["bash scripts/demo.sh", "bash scripts/test.sh"]
    ci = (REPO / ".ci" / "run").read_text()
    assert "\nbash scripts/test.sh\n" in ci
    for script in ("scripts/demo.sh", "scripts/test.sh", "scripts/setup.sh"):
        assert (REPO / script).exists(), script


def test_readme_is_at_most_15_kb_and_shows_the_loop_on_its_first_screen():
    assert len(README.encode("utf-8")) <= README_MAX_BYTES, f"README.md is {len(README.encode())} bytes"
    sections = re.findall(r"^## (.+)$", README, flags=re.M)
    assert sections[:2] == ["Quickstart", "Your own model, end to end"], sections
    loop = README.split("## Your own model, end to end")[1].split("\n## ")[0]
    for step in ("generate_instruction", "data_tools.py clean", "train.py", "serve", "inference.py", "judge.py"):
        assert step in loop, f"README's end-to-end block lacks {step}"


def test_every_docs_page_is_linked_from_the_readme_and_exists():
    linked = set(re.findall(r"\]\((docs/[\w.-]+\.md)(?:#[\w-]*)?\)", README))
    on_disk = {f"docs/{page.name}" for page in (REPO / "docs").glob("*.md")}
    assert linked, "README links no docs page"
    assert not linked - on_disk, f"README links pages that do not exist: {sorted(linked - on_disk)}"
    assert not on_disk - linked, f"docs pages the README does not link: {sorted(on_disk - linked)}"


def test_docs_pages_named_in_the_code_exist():
    """The entry points' docstrings, error messages and scripts send readers to docs/*.md: those pages exist."""
    sources = [path for pattern in ("*.py", "alpaca/**/*.py", "scripts/*", "bench/*.py") for path in REPO.glob(pattern)]
    named = {(match, path.relative_to(REPO).as_posix()) for path in sources if path.is_file()
             for match in re.findall(r"docs/[\w-]+\.(?:md|png)", path.read_text(encoding="utf-8"))}
    assert len(named) >= 6
    missing = sorted((page, source) for page, source in named if not (REPO / page).exists())
    assert not missing, f"pages named in the code that do not exist (page, where): {missing}"


def heading_anchors(text: str) -> set[str]:
    """GitHub's anchors for a page's Markdown headings: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # a `# comment` in a code block is no heading
    return {re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
            for title in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}


def test_every_relative_link_and_picture_of_the_docs_resolves():
    """Links between pages (with their #anchors) and pictures: a page renamed or a heading reworded fails here."""
    pages = documentation()
    checked = 0
    for page, text in pages.items():
        folder = (REPO / page).parent
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://", target):
                continue
            path, _, anchor = target.partition("#")
            resolved = (folder / path).resolve() if path else REPO / page
            assert resolved.exists(), f"{page} links {target}: no such file"
            if anchor and resolved.suffix == ".md":
                anchors = heading_anchors(resolved.read_text(encoding="utf-8"))
                assert anchor in anchors, f"{page} links {target}: no such heading"
            checked += 1
    assert checked > 20
    pictures = {picture.name for picture in (REPO / "docs").glob("*.png")}
    shown = {pathlib.Path(p).name for text in pages.values() for p in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)}
    assert pictures <= shown, f"pictures in docs/ that no page shows: {sorted(pictures - shown)}"


def test_cpu_blocks_are_numbered_once_each():
    numbers = [number for number, _, _ in marked_blocks()]
    assert numbers == list(range(1, len(numbers) + 1)), f"readme-test cpu numbers must be 1..N, once each: {numbers}"


def documented_commands() -> list[tuple[str, str]]:
    """(page, command line) for every line of every ```bash block in README.md and docs/*.md, continuations
    joined and comments dropped."""
    lines = []
    for page, text in documentation().items():
        joined = re.sub(r"\\\n\s*", " ", "\n".join(re.findall(r"```bash\n(.*?)```", text, flags=re.S)))
        lines += [(page, line.split(" #")[0]) for line in joined.splitlines() if not line.lstrip().startswith("#")]
    return lines


def script_and_flags(line: str) -> tuple[tuple[str, ...], list[str]] | None:
    """The repo command a line runs (`python X.py [subcommand]`, `torchrun ... X.py`, `python -m
    generate_instruction generate_instruction_following_data`) and the flags passed to it; None for other tools."""
    words = line.split()
    for index, word in enumerate(words):
        module = word == "-m" and index + 1 < len(words) and (REPO / f"{words[index + 1]}.py").is_file()
        if not (module or (word.endswith(".py") and (REPO / word).is_file())):
            continue
        command = ["-m", words[index + 1]] if module else [word]
        rest = words[index + (2 if module else 1):]
        if rest and re.fullmatch(r"[a-z][a-z_]*", rest[0]):  # a subcommand, not a path or a value
            command.append(rest[0])
        flags = re.findall(r"(?:^|\s)--([a-z_0-9]+)", " ".join(rest))
        return tuple(command), flags
    return None


@pytest.mark.slow
def test_readme_names_only_flags_that_exist():
    """Every --flag in a command line of README.md or docs/*.md is accepted by the script (and subcommand) it is
    passed to, as that script's --help lists it."""
    uses = [(page, line, *found) for page, line in documented_commands() if (found := script_and_flags(line))]
    commands = sorted({command for _, _, command, flags in uses if flags})
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        helps = dict(zip(commands, pool.map(lambda c: _help([sys.executable, *c, "--help"]).lower(), commands),
                         strict=True))
    checked = 0
    for page, line, command, flags in uses:
        for flag in flags:
            checked += 1
            assert re.search(rf"\b{flag}\b", helps[command]), \
                f"{page} passes --{flag} to {' '.join(command)}, whose --help does not list it: {line.strip()}"
    assert checked > 100
    assert {("train.py",), ("inference.py",), ("weight_diff.py", "recover"), ("judge.py", "human"),
            ("-m", "generate_instruction", "generate_instruction_following_data")} <= set(commands)


def _help(command: list[str]) -> str:
    # this checkout's package first, as conftest.py does for the tests, whatever copy is installed in the venv
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    return result.stdout + result.stderr


@pytest.mark.slow
@pytest.mark.multiprocess
def test_quickstart_demo_and_readme_cpu_commands_run(tmp_path):
    """The one end-to-end run: CPU block 1 (docs/training.md) is the Quickstart demo (minus the install: the suite
    already runs in that venv), which builds and fine-tunes the tiny model; the other CPU blocks of README.md and
    docs/*.md run on its outputs, in their numbered order."""
    blocks = [block for _, _, block in marked_blocks()]
    assert len(blocks) >= 4, "README.md and docs/*.md mark their CPU commands with <!-- readme-test: cpu N -->"
    assert blocks[0].startswith("bash scripts/demo.sh"), "the first CPU block runs the demo"
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
