"""Throughput and MFU (throughput.py): the counts are checked against batches computed by hand, in one process and
across two data-parallel processes (this file is also the worker script torchrun starts for that test)."""

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest
import torch

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "scripts"), str(REPO / "bench")]

from alpaca.train import sft as train  # noqa: E402
from alpaca.train import throughput  # noqa: E402

# 16 examples of these lengths, read in order (sequential sampler), 2 per micro-batch, 2 micro-batches per step:
# micro-batches [3,5] [2,2] [4,4] [1,6] [3,5] [2,2] [4,4] [1,6].
LENGTHS = [3, 5, 2, 2, 4, 4, 1, 6] * 2
# One process: step 1 = [3,5]+[2,2]: 12 real tokens, 10+4 = 14 processed (padded to each micro-batch's longest),
# squared lengths 9+25+4+4 = 42; step 2 = [4,4]+[1,6]: 15 real, 8+12 = 20 processed, 16+16+1+36 = 69; steps 3, 4
# repeat them. Whole run: 54 real, 68 processed, 222.
ONE_PROCESS_STEPS = [(12, 14, 42), (15, 20, 69), (12, 14, 42), (15, 20, 69)]
# Two processes: each optimizer step takes 2 micro-batches on each process, so one step covers four micro-batches:
# 27 real, 34 processed, 111; two steps.
TWO_PROCESS_STEPS = [(27, 34, 111), (27, 34, 111)]
TOTALS = (54, 68, 222)


def test_batch_token_counts_padded_batch():
    input_ids = torch.tensor([[7, 8, 9, 0, 0], [7, 8, 9, 10, 11]])
    attention_mask = input_ids.ne(0)
    counts = throughput.batch_token_counts(dict(input_ids=input_ids, attention_mask=attention_mask))
    assert counts.tolist() == [8, 10, 3 ** 2 + 5 ** 2]


def test_batch_token_counts_padding_free_batch():
    """A flattened batch has no attention mask: every token is real, sequences restart at position 0."""
    input_ids = torch.arange(1, 10).unsqueeze(0)
    position_ids = torch.tensor([[0, 1, 2, 0, 1, 2, 3, 4, 0]])
    counts = throughput.batch_token_counts(dict(input_ids=input_ids, position_ids=position_ids))
    assert counts.tolist() == [9, 9, 3 ** 2 + 5 ** 2 + 1 ** 2]


def test_model_flops_is_6n_plus_the_attention_term():
    # all weights train: 6N per token; 2 sequences of 3 and 5 tokens, 2 layers, d_attn 64
    assert throughput.model_flops(8, 34, n_params=1000, n_trainable=1000, n_layers=2, d_attn=64) == \
        6 * 1000 * 8 + 12 * 2 * 64 * 34
    # frozen base (LoRA): no weight gradient for the frozen weights, 4N + 2N_trainable
    assert throughput.model_flops(8, 0, n_params=1000, n_trainable=10, n_layers=2, d_attn=64) == (4000 + 20) * 8


def test_matmul_parameters_leave_out_the_input_embedding_lookup(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    embedding = model.get_input_embeddings().weight
    everything = sum(p.numel() for p in model.parameters())
    assert model.get_output_embeddings().weight is not embedding  # LLaMA: untied
    assert throughput.matmul_parameter_counts(model) == (everything - embedding.numel(),) * 2
    model.model.layers[0].requires_grad_(False)
    frozen = sum(p.numel() for p in model.model.layers[0].parameters())
    assert throughput.matmul_parameter_counts(model) == (everything - embedding.numel(),
                                                         everything - embedding.numel() - frozen)
    model.config.tie_word_embeddings = True
    model.tie_weights()  # tied: the one matrix is the output layer's matmul, counted once
    assert throughput.matmul_parameter_counts(model)[0] == sum(p.numel() for p in model.parameters())
    assert throughput.attention_width(model.config) == (2, 64)


@pytest.mark.parametrize("name, peak", [("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA H100 80GB HBM3", 989.0),
                                        ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H200", 989.0), ("NVIDIA L4", 121.0),
                                        ("NVIDIA L40S", 362.0), ("NVIDIA A10G", 125.0),
                                        ("NVIDIA GeForce RTX 4090", 165.2), ("NVIDIA GeForce GTX 1080", None)])
def test_peak_is_looked_up_by_device_name(monkeypatch, name, peak):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert throughput.peak_tflops_for_device("cuda:0") == peak


def test_cpu_has_no_peak_so_no_mfu():
    assert throughput.peak_tflops_for_device("cpu") is None


# ----------------------------------------------------------------------------- through the Trainer

class LiteralDataset(torch.utils.data.Dataset):
    """Examples with the given token counts (ids well inside the vocabulary, never the pad id)."""

    def __init__(self, lengths: list[int]):
        generator = torch.Generator().manual_seed(0)
        self.input_ids = [torch.randint(10, 400, (n,), generator=generator) for n in lengths]

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i) -> dict:
        return dict(input_ids=self.input_ids[i], labels=self.input_ids[i].clone())


def train_on_literal_batches(model_dir: str, output_dir: str, padding_free: bool = False,
                             peak_tflops: float = 0.001) -> tuple[list[dict], tuple[int, int, int, int]]:
    """Train on LENGTHS (batch 2, accumulation 2, sequential order, a log per step); (log_history, model shape)."""
    from transformers import DataCollatorWithFlattening

    args = train.TrainingArguments(output_dir=output_dir, use_cpu=True, per_device_train_batch_size=2,
                                   gradient_accumulation_steps=2, num_train_epochs=1, logging_steps=1,
                                   train_sampling_strategy="sequential", save_strategy="no", report_to="none",
                                   learning_rate=1e-4, disable_tqdm=True)
    model, tokenizer = train.load_model_and_tokenizer(train.ModelArguments(model_name_or_path=model_dir), args)
    collator = DataCollatorWithFlattening() if padding_free else train.DataCollatorForSupervisedDataset(tokenizer)
    trainer = train.SupervisedTrainer(model=model, args=args, train_dataset=LiteralDataset(LENGTHS),
                                      data_collator=collator)
    callback = throughput.add_throughput_callback(trainer, peak_tflops)
    trainer.train()
    return trainer.state.log_history, callback.model_shape


def check_log(log_history: list[dict], steps: list[tuple[int, int, int]], model_shape, world_size: int,
              peak_tflops: float, padding_free: bool = False) -> None:
    """Each step's real-token share and MFU (relative to its tokens/s) match the hand-computed counts."""
    step_logs = [entry for entry in log_history if "loss" in entry]
    assert len(step_logs) == len(steps)
    for entry, (real, processed, squares) in zip(step_logs, steps, strict=True):
        processed = real if padding_free else processed
        assert entry["real_token_share"] == pytest.approx(real / processed, rel=1e-3)
        assert entry["processed_tokens_per_second"] / entry["real_tokens_per_second"] == \
            pytest.approx(processed / real, rel=1e-3)
        flops = throughput.model_flops(real, squares, *model_shape)
        assert entry["mfu"] / entry["real_tokens_per_second"] == \
            pytest.approx(flops / real / world_size / (peak_tflops * 1e12), rel=2e-3)
    final = log_history[-1]
    assert final["train_real_tokens"] == TOTALS[0]
    assert final["train_processed_tokens"] == (TOTALS[0] if padding_free else TOTALS[1])


@pytest.mark.slow
@pytest.mark.parametrize("padding_free", [False, True])
def test_trainer_log_counts_every_micro_batch(tiny_model_dir, tmp_path, padding_free):
    log_history, shape = train_on_literal_batches(str(tiny_model_dir), str(tmp_path), padding_free=padding_free)
    check_log(log_history, ONE_PROCESS_STEPS, shape, world_size=1, peak_tflops=0.001, padding_free=padding_free)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_sum_their_counts(tiny_model_dir, tmp_path):
    """torchrun, 2 processes over gloo: the counts of both processes are all-reduced into one log."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                             f"--master_port={port}", __file__, str(tiny_model_dir), str(tmp_path)],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    written = json.loads((tmp_path / "log.json").read_text())
    check_log(written["log_history"], TWO_PROCESS_STEPS, written["model_shape"], world_size=2, peak_tflops=0.001)


@pytest.mark.slow
def test_train_py_logs_throughput_and_no_mfu_on_cpu(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    train.train(["--model_name_or_path", str(tiny_model_dir), "--data_path", str(REPO / "data/demo_alpaca.json"),
                 "--output_dir", str(out), "--use_cpu", "True", "--max_steps", "2", "--logging_steps", "1",
                 "--per_device_train_batch_size", "2", "--model_max_length", "128", "--save_strategy", "no",
                 "--report_to", "none"])
    log_history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert all(entry["real_tokens_per_second"] > 0 and 0 < entry["real_token_share"] <= 1
               for entry in log_history[:2])
    assert log_history[-1]["train_real_tokens"] > 0
    assert not any("mfu" in key for entry in log_history for key in entry)  # peak unknown on a CPU


# ----------------------------------------------------------------------------- bench/bench_gpu.py

def test_bench_gpu_parameter_arithmetic_matches_the_built_models():
    import bench_gpu
    from transformers import LlamaConfig, LlamaForCausalLM

    configs = [bench_gpu.bench_config(smoke=True), bench_gpu.bench_config(), bench_gpu.llama7b_config(),
               LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=100, num_hidden_layers=3,
                           num_attention_heads=8, num_key_value_heads=2, attention_bias=True, mlp_bias=True,
                           tie_word_embeddings=True)]
    for config in configs:
        with torch.device("meta"):
            model = LlamaForCausalLM(config)
        counts = bench_gpu.llama_parameter_count(config)
        assert counts["total"] == sum(p.numel() for p in model.parameters())
        assert counts["matmul"] == throughput.matmul_parameter_counts(model)[0]
    assert 0.9e9 < bench_gpu.llama_parameter_count(bench_gpu.bench_config())["total"] < 1.1e9  # "about 1B"
    # LLaMA-7B's published count, 6,738,415,616, plus the [PAD] row train.py adds to both embedding matrices
    assert bench_gpu.llama_parameter_count(bench_gpu.llama7b_config())["total"] == 6_738_415_616 + 2 * 4096


def test_bench_gpu_data_has_alpacas_token_count():
    import bench_gpu

    lengths = bench_gpu.alpaca_like_lengths(bench_gpu.ALPACA_EXAMPLES)
    assert abs(sum(n for _, n in lengths) / bench_gpu.ALPACA_TOKENS_PER_EPOCH - 1) < 0.1
    assert all(0 < prompt < total <= 512 for prompt, total in lengths)
    dataset = bench_gpu.SyntheticAlpaca(lengths[:50], vocab_size=32000)
    assert [len(ids) for ids in dataset.input_ids] == [n for _, n in lengths[:50]]
    assert all(int((label == train.IGNORE_INDEX).sum()) == prompt
               for label, (prompt, _) in zip(dataset.labels, lengths[:50], strict=True))


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_bench_gpu_without_cuda_says_so_in_one_sentence():
    result = subprocess.run([sys.executable, str(REPO / "bench" / "bench_gpu.py")], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: bench_gpu.py needs a CUDA GPU") and "--smoke" in lines[0]


@pytest.mark.slow
def test_bench_gpu_smoke_runs_every_mode_and_projects():
    result = subprocess.run([sys.executable, str(REPO / "bench" / "bench_gpu.py"), "--smoke", "--peak_tflops", "0.5",
                             "--seconds_per_mode", "8"], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    rows = {mode: re.search(rf"^    {re.escape(mode)} \((\w+)\)\s+([\d,]+)\s+([\d,]+)\s+([\d.]+)\s+([\d.]+)%", out,
                            flags=re.M) for mode in ("random batches", "group_by_length", "padding_free")}
    assert all(rows.values()), out
    assert rows["padding_free"][4] == "1.000"  # no padding at all
    assert float(rows["random batches"][4]) < 1.0
    assert len(re.findall(r"4 GPUs:\s+[\d.]+ h\s+8 GPUs:\s+[\d.]+ h", out)) == 3, out


if __name__ == "__main__":  # the worker of test_two_processes_sum_their_counts, started by torchrun
    model_dir, output_dir = sys.argv[1:3]
    history, model_shape = train_on_literal_batches(model_dir, output_dir)
    if int(os.environ["RANK"]) == 0:
        pathlib.Path(output_dir, "log.json").write_text(json.dumps(dict(log_history=history,
                                                                        model_shape=list(model_shape))))
