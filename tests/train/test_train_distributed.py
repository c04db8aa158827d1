"""train.py across processes on CPU: DDP over gloo with torchrun, the 2023 README command, FSDP2 saving, DeepSpeed."""

import copy
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from test_train import make_examples, write_json
from transformers import AutoModelForCausalLM, AutoTokenizer

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]  # each test starts processes: keep `-m "not slow"` quick


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(command: list[str], repo_dir, env: dict | None = None, timeout: int = 300,
        check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_DISABLED": "true", **(env or {})}
    result = subprocess.run(command, cwd=repo_dir, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0 or not check, result.stdout[-3000:] + result.stderr[-6000:]
    return result


def torchrun(repo_dir, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
                "train.py", *args], repo_dir, check=check)


def test_torchrun_two_processes_run_data_parallel_over_gloo(tiny_model_dir, repo_dir, tmp_path):
    data = write_json(tmp_path / "d.json", make_examples(24))
    out = tmp_path / "ddp"
    result = torchrun(repo_dir, "--model_name_or_path", str(tiny_model_dir), "--data_path", data,
                      "--output_dir", str(out), "--use_cpu", "True", "--num_train_epochs", "1",
                      "--per_device_train_batch_size", "4", "--logging_steps", "1", "--save_strategy", "no",
                      "--report_to", "none", "--learning_rate", "1e-3")
    state = json.loads((out / "trainer_state.json").read_text())
    # 24 examples, 4 per process: 3 steps only if each of the 2 processes took half of every global batch.
    assert state["global_step"] == 3
    assert [e["step"] for e in state["log_history"] if "loss" in e] == [1, 2, 3]
    assert "no GPU found" not in result.stderr  # --use_cpu was given
    AutoModelForCausalLM.from_pretrained(out)
    assert AutoTokenizer.from_pretrained(out).pad_token == "[PAD]"


def test_the_2023_readme_command_runs_as_pasted(tiny_model_dir, repo_dir, tmp_path):
    """The original README's torchrun command, paths and sizes aside (its bf16, FSDP and TF32 flags included)."""
    data = write_json(tmp_path / "alpaca_data.json", make_examples(32))
    out = tmp_path / "readme"
    result = torchrun(
        repo_dir, "--model_name_or_path", str(tiny_model_dir), "--data_path", data, "--bf16", "True",
        "--output_dir", str(out), "--num_train_epochs", "1", "--per_device_train_batch_size", "4",
        "--per_device_eval_batch_size", "4", "--gradient_accumulation_steps", "2", "--evaluation_strategy", "no",
        "--save_strategy", "steps", "--save_steps", "2000", "--save_total_limit", "1", "--learning_rate", "2e-5",
        "--weight_decay", "0.", "--warmup_ratio", "0.03", "--lr_scheduler_type", "cosine", "--logging_steps", "1",
        "--fsdp", "full_shard auto_wrap", "--fsdp_transformer_layer_cls_to_wrap", "LlamaDecoderLayer",
        "--tf32", "True", "--report_to", "none")
    log = result.stderr
    for flag in ("--evaluation_strategy", "--warmup_ratio", "--fsdp \"full_shard auto_wrap\"",
                 "--fsdp_transformer_layer_cls_to_wrap", "--tf32 True dropped", "no GPU found"):
        assert log.count(f"legacy flag: {flag}") == 1, flag  # one notice, from rank 0 only
    assert log.count("--fsdp was given, but FSDP is not in use") == 1  # never a silent substitute
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 2  # 32 examples / (4 per process x 2 processes x 2 accumulation steps)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.get_input_embeddings().weight.shape[0] == len(AutoTokenizer.from_pretrained(out))


@pytest.mark.parametrize("mistake", ["missing field", "flag typo"])
def test_a_user_mistake_under_torchrun_is_one_sentence_from_rank_0(tiny_model_dir, repo_dir, tmp_path, mistake):
    records = make_examples(4)
    del records[2]["output"]
    data = write_json(tmp_path / "d.json", records if mistake == "missing field" else make_examples(4))
    extra = ["--num_train_epoks", "1"] if mistake == "flag typo" else []
    result = torchrun(repo_dir, "--model_name_or_path", str(tiny_model_dir), "--data_path", data, "--output_dir",
                      str(tmp_path / "out"), "--use_cpu", "True", "--report_to", "none", *extra, check=False)
    sentence = {"missing field": f"error: {data}, record 2: field 'output' is missing.",
                "flag typo": "error: unknown flag --num_train_epoks (did you mean --num_train_epochs?); "
                             "`python train.py --help` lists the flags."}[mistake]
    log = result.stdout + result.stderr
    assert result.returncode != 0 and log.count(sentence) == 1, log[-4000:]  # rank 0 speaks, rank 1 does not
    assert sum(line.startswith("error: ") for line in log.splitlines()) == 1
    assert 'train.py", line' not in log  # no traceback of ours (torchrun still lists the failed ranks)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- FSDP2 saving

def _fsdp2_save_worker(rank: int, world_size: int, port: int, model_dir: str, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world_size))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        from torch.distributed.fsdp import fully_shard
        from torch.distributed.tensor import DTensor, Shard
        from transformers import Trainer

        from alpaca.train.sft import (
            ModelArguments,
            TrainingArguments,
            gather_full_state_dict,
            load_model_and_tokenizer,
            safe_save_model_for_hf_trainer,
        )

        args = TrainingArguments(output_dir=out_dir, use_cpu=True, report_to="none", model_max_length=128)
        model, tokenizer = load_model_and_tokenizer(ModelArguments(model_name_or_path=model_dir), args)
        reference = copy.deepcopy(model)  # the same weights, unsharded
        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(model)
        params = dict(model.named_parameters())
        assert all(isinstance(p, DTensor) and p.placements == (Shard(0),) for p in params.values())
        local, full = sum(p.to_local().numel() for p in params.values()), sum(p.numel() for p in params.values())
        assert local <= full // world_size + 64 * len(params), (local, full)  # each rank holds only its shard

        # One SGD step on the same batch in every rank: FSDP averages identical gradients, so the sharded model
        # must end where the unsharded reference does.
        batch = tokenizer(["### Instruction:\nName a colour.\n\n### Response: red</s>", "Write a poem."],
                          return_tensors="pt", padding=True)
        for m in (model, reference):
            optimizer = torch.optim.SGD(m.parameters(), lr=1.0)
            m(**batch, labels=batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)).loss.backward()
            optimizer.step()

        gathered = gather_full_state_dict(model)
        assert (len(gathered) > 0) == (rank == 0)  # one full copy, on rank 0, in CPU memory
        assert all(t.device.type == "cpu" and not isinstance(t, DTensor) for t in gathered.values())
        trainer = Trainer(model=model, args=args, processing_class=tokenizer)
        safe_save_model_for_hf_trainer(trainer, out_dir)
        if rank == 0:
            saved = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32).state_dict()
            expected = reference.state_dict()
            assert saved.keys() == expected.keys()
            for name, tensor in expected.items():
                torch.testing.assert_close(saved[name], tensor, rtol=0, atol=1e-6, msg=name)
            raw = AutoModelForCausalLM.from_pretrained(model_dir).state_dict()
            name = "model.layers.0.self_attn.q_proj.weight"
            assert not torch.allclose(saved[name], raw[name])  # the step changed the weights that were saved
            assert AutoTokenizer.from_pretrained(out_dir).pad_token == "[PAD]"
            with open(os.path.join(out_dir, "fsdp_test_ok"), "w") as f:
                f.write("ok")
    finally:
        torch.distributed.destroy_process_group()


def test_fsdp2_sharded_model_saves_an_ordinary_full_checkpoint(tiny_model_dir, tmp_path):
    out = tmp_path / "fsdp2"
    torch.multiprocessing.spawn(_fsdp2_save_worker, args=(2, free_port(), str(tiny_model_dir), str(out)), nprocs=2)
    assert (out / "fsdp_test_ok").is_file() and (out / "model.safetensors").is_file()


# ----------------------------------------------------------------------------- DeepSpeed

@pytest.mark.slow
def test_deepspeed_zero3_offload_runs_on_cpu(tiny_model_dir, repo_dir, tmp_path):
    """ZeRO-3 with optimizer and parameter offload, one CPU process, with the 2023 README's DeepSpeed flags
    (--bf16 True --tf32 True). The first run compiles DeepSpeed's CPU Adam op (~2 minutes on 2 cores); later
    runs take ~15 s."""
    pytest.importorskip("deepspeed")
    data = write_json(tmp_path / "d.json", make_examples(24))
    out = tmp_path / "ds"
    env = dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    result = run([sys.executable, "train.py", "--model_name_or_path", str(tiny_model_dir), "--data_path", data,
                  "--output_dir", str(out), "--max_steps", "3", "--per_device_train_batch_size", "4",
                  "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none", "--learning_rate", "1e-3",
                  "--log_level", "info", "--deepspeed", "configs/default_offload_opt_param.json", "--bf16", "True",
                  "--tf32", "True"],
                 repo_dir, env=env, timeout=900)
    assert "Adam Optimizer #0 is created" in result.stdout + result.stderr  # DeepSpeed's CPU (offload) Adam
    state = json.loads((out / "trainer_state.json").read_text())
    assert [e["step"] for e in state["log_history"] if "loss" in e] == [1, 2, 3]
    saved = AutoModelForCausalLM.from_pretrained(out).state_dict()  # gathered from ZeRO-3 shards on save
    raw = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    name = "model.layers.0.mlp.up_proj.weight"
    assert saved[name].shape == raw[name].shape and not torch.allclose(saved[name].float(), raw[name])


def test_the_2023_deepspeed_command_runs_in_two_cpu_processes(tiny_model_dir, repo_dir, tmp_path):
    """The 2023 README's DeepSpeed command (ZeRO-3, optimizer and parameters offloaded; --bf16 True --tf32 True)
    under torchrun --nproc_per_node=2 on a machine without a GPU. DeepSpeed used to count a world of 1 there and
    fail: `train_batch_size 64 != 4 * 8 * 1`. The first run also compiles DeepSpeed's CPU ops (minutes)."""
    pytest.importorskip("deepspeed")
    if torch.cuda.is_available():
        pytest.skip("the CPU path: on a GPU machine accelerate hands DeepSpeed the process group itself")
    out = tmp_path / "ds2"
    result = torchrun(repo_dir, "--model_name_or_path", str(tiny_model_dir), "--data_path",
                      write_json(tmp_path / "d.json", make_examples(32)), "--output_dir", str(out),
                      "--bf16", "True", "--tf32", "True", "--num_train_epochs", "1", "--per_device_train_batch_size",
                      "4", "--gradient_accumulation_steps", "2", "--learning_rate", "1e-3", "--logging_steps", "1",
                      "--save_strategy", "no", "--report_to", "none", "--log_level", "info",
                      "--deepspeed", "configs/default_offload_opt_param.json")
    assert "Adam Optimizer #0 is created" in result.stdout + result.stderr  # DeepSpeed's CPU (offload) Adam
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 2  # 32 examples / (4 per process x 2 processes x 2 accumulation steps)
    assert [e["step"] for e in state["log_history"] if "loss" in e] == [1, 2]
    saved = AutoModelForCausalLM.from_pretrained(out).state_dict()  # gathered from the ZeRO-3 shards on save
    raw = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    name = "model.layers.0.mlp.up_proj.weight"
    assert saved[name].shape == raw[name].shape and not torch.allclose(saved[name].float(), raw[name])
