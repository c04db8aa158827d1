"""More than one machine: two nodes simulated on loopback (the README's block), and the SLURM script's commands."""

import json
import os
import pathlib
import re
import shlex
import shutil
import socket
import subprocess
import sys

import pytest
import transformers

REPO = pathlib.Path(__file__).resolve().parents[2]
SLURM = REPO / "scripts" / "slurm_train.sh"
sys.path.insert(0, str(REPO))

from alpaca.train import sft as train  # noqa: E402
from alpaca.train.legacy_flags import translate_legacy_flags  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def readme_multinode_block() -> str:
    page = (REPO / "docs" / "multi_machine.md").read_text(encoding="utf-8")
    blocks = re.findall(r"<!-- readme-test: multinode -->\n```bash\n(.*?)```", page, flags=re.S)
    assert len(blocks) == 1, "docs/multi_machine.md marks its CPU block with <!-- readme-test: multinode -->"
    return blocks[0]


def dry_run(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SLURM), *args], cwd=REPO, env={**os.environ, "DRY_RUN": "1", **env},
                          capture_output=True, text=True, timeout=60)


def node_commands(stdout: str) -> dict[str, list[str]]:
    """{node: argv} from the dry run's `[node] torchrun ...` lines."""
    return {match[1]: shlex.split(match[2]) for match in re.finditer(r"^\[(\S+)\] (.*)$", stdout, flags=re.M)}


def effective_batch(argv: list[str]) -> int:
    """nodes x processes per node x per-device batch x accumulation steps, as torchrun and train.py read argv."""
    split = argv.index("train.py")
    launcher, script_args = argv[:split], argv[split + 1:]
    nnodes = int(launcher[launcher.index("--nnodes") + 1])
    nproc = int(launcher[launcher.index("--nproc_per_node") + 1])
    script_args, _ = translate_legacy_flags(script_args)
    parser = transformers.HfArgumentParser((train.ModelArguments, train.DataArguments, train.TrainingArguments))
    _, _, training_args = parser.parse_args_into_dataclasses(args=script_args)
    return nnodes * nproc * training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps


# ----------------------------------------------------------------------------- the SLURM script

def test_slurm_script_is_valid_bash():
    result = subprocess.run(["bash", "-n", str(SLURM)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_slurm_dry_run_prints_one_torchrun_per_node_with_batch_128():
    result = dry_run("--model_name_or_path", "/m", "--data_path", "/d.json", "--output_dir", "/o")
    assert result.returncode == 0, result.stderr
    commands = node_commands(result.stdout)
    assert list(commands) == ["node001", "node002"]
    first, second = commands.values()
    assert first == second  # c10d hands out the ranks: every node runs the same command
    assert first[first.index("--rdzv_backend") + 1] == "c10d"
    assert first[first.index("--rdzv_endpoint") + 1] == "node001:29500"  # on the first node
    assert first[first.index("--nnodes") + 1] == "2"
    assert effective_batch(first) == 128  # 2 nodes x 8 GPUs x 4 x 2
    assert first[first.index("--gradient_accumulation_steps") + 1] == "2"
    assert first[-6:] == ["--model_name_or_path", "/m", "--data_path", "/d.json", "--output_dir", "/o"]


@pytest.mark.parametrize("nodes, gpus, accumulation", [("a b", "4", "4"), ("a b c d", "8", "1"), ("a", "4", "8")])
def test_slurm_keeps_the_effective_batch_at_128(nodes, gpus, accumulation):
    result = dry_run("--data_path", "/d.json", DRY_RUN_NODES=nodes, GPUS_PER_NODE=gpus)
    assert result.returncode == 0, result.stderr
    command = next(iter(node_commands(result.stdout).values()))
    assert command[command.index("--gradient_accumulation_steps") + 1] == accumulation
    assert effective_batch(command) == 128


def test_slurm_refuses_a_batch_it_cannot_keep():
    result = dry_run(DRY_RUN_NODES="a b c d e f g h", GPUS_PER_NODE="8")  # 8 x 8 x 4 = 256 > 128
    assert result.returncode == 2
    assert result.stderr.startswith("error: an effective batch of 128 is not a multiple of 8 nodes x 8 GPUs")
    assert "PER_DEVICE_BATCH" in result.stderr
    assert dry_run(DRY_RUN_NODES="a b c d e f g h", GPUS_PER_NODE="8", PER_DEVICE_BATCH="2").returncode == 0


@pytest.mark.parametrize("name, value, allowed", [
    ("PER_DEVICE_BATCH", "HOME[$(touch {pwned})]", "1 to 65536"),  # bash arithmetic would run the command
    ("PER_DEVICE_BATCH", "-4", "1 to 65536"), ("PER_DEVICE_BATCH", "0", "1 to 65536"),
    ("PER_DEVICE_BATCH", "2.5", "1 to 65536"), ("PER_DEVICE_BATCH", " 4", "1 to 65536"),
    ("GPUS_PER_NODE", "0", "1 to 1024"), ("GPUS_PER_NODE", "$(touch {pwned})", "1 to 1024"),
    ("EFFECTIVE_BATCH", "1e3", "1 to 16777216"), ("EFFECTIVE_BATCH", "99999999999999999999", "1 to 16777216"),
    ("RDZV_PORT", "abc", "1 to 65535"), ("RDZV_PORT", "70000", "1 to 65535"), ("RDZV_PORT", "0", "1 to 65535"),
])
def test_slurm_refuses_a_setting_that_is_no_whole_number_in_range(tmp_path, name, value, allowed):
    """Checked before any arithmetic: nothing in the value runs, nothing is launched, one line, exit 2."""
    pwned = tmp_path / "pwned"
    value = value.format(pwned=pwned)
    result = dry_run("--data_path", "/d.json", **{name: value})
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == f"error: {name} must be a whole number from {allowed}, got '{value}'.\n"
    assert not pwned.exists()


def test_slurm_reads_leading_zeros_as_decimal():
    result = dry_run("--data_path", "/d.json", GPUS_PER_NODE="08", RDZV_PORT="029500")
    assert result.returncode == 0, result.stderr
    command = next(iter(node_commands(result.stdout).values()))
    assert command[command.index("--nproc_per_node") + 1] == "8"
    assert command[command.index("--rdzv_endpoint") + 1] == "node001:29500"


def test_slurm_outside_a_job_says_how_to_submit():
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    result = subprocess.run(["bash", str(SLURM)], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "not inside a SLURM job" in result.stderr and "sbatch" in result.stderr


# ----------------------------------------------------------------------------- two nodes on loopback

@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_simulated_nodes_train_as_one_node_with_two_processes(tmp_path):
    """The README's block: two torchrun launches (--nnodes 2 --nproc_per_node 1, c10d on 127.0.0.1) join one world
    of size 2, log the same losses as one torchrun --nproc_per_node 2, and only one of them writes a checkpoint."""
    workdir = tmp_path / "repo"
    shutil.copytree(REPO, workdir, ignore=shutil.ignore_patterns(".venv", ".git", "demo_out", "output", "tiny-llama",
                                                                 "__pycache__", ".*_cache"))
    port = free_port()
    block = readme_multinode_block().replace("127.0.0.1:29400", f"127.0.0.1:{port}")
    env = {**os.environ, "PATH": f"{pathlib.Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "OMP_NUM_THREADS": "1", "LOGLEVEL": "INFO",  # LOGLEVEL: torchrun logs the rendezvous result
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_DISABLED": "true"}
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=workdir, env=env, capture_output=True,
                            text=True, timeout=600)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-8000:]

    # Both launches joined one world: the agents report node ranks 0 and 1 of a world of 2 processes.
    assert sorted(re.findall(r"group_rank=(\d)", log)) == ["0", "1"]
    assert log.count("global_world_sizes=[2]") == 2

    # Exactly one checkpoint, written by global rank 0 on its node's disk. The Trainer has every process save its
    # own RNG state (rng_state_<rank>.pth) into the checkpoint directory, so the other node's disk holds that alone.
    nodes = [workdir / "output" / "node0", workdir / "output" / "node1"]
    weights = [path for node in nodes for path in node.glob("checkpoint-*/*.safetensors")]
    assert [path.relative_to(path.parents[1]).as_posix() for path in weights] == ["checkpoint-4/model.safetensors"]
    writer = weights[0].parents[1]
    other = next(node for node in nodes if node != writer)
    assert {"optimizer.pt", "trainer_state.json", "rng_state_0.pth"} <= {p.name for p in writer.glob("checkpoint-4/*")}
    assert sorted(path.relative_to(other).as_posix() for path in other.rglob("*")) == \
        ["checkpoint-4", "checkpoint-4/rng_state_1.pth"]
    assert (writer / "model.safetensors").exists()  # the final model, also written by rank 0 only

    # The same steps on one node with two processes give the same losses.
    line = re.search(r"torchrun --nnodes 2 .*?--report_to none", re.sub(r"\\\n\s*", "", block), flags=re.S)[0]
    args = shlex.split(line.replace("$node", "single"))
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
            str(free_port()), *args[args.index("train.py"):]]
    single = subprocess.run(args, cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, (single.stdout + single.stderr)[-8000:]

    def losses(output_dir: pathlib.Path) -> list[float]:
        history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
        return [entry["loss"] for entry in history if "loss" in entry]

    two_nodes, one_node = losses(writer), losses(workdir / "output" / "nodesingle")
    assert len(two_nodes) == 4
    assert two_nodes == one_node

    # The block's SLURM dry run printed a command per node.
    assert list(node_commands(result.stdout)) == ["node001", "node002"]
